#!/usr/bin/env bash
# What `pip install -r requirements.txt` needs to build: mysqlclient (the MySQL driver, a C extension
# with no Linux wheel on PyPI) compiles against libmariadb, found through pkg-config. Installs Debian's
# libmariadb-dev and pkg-config when missing. Used by `make install` (so by `make demo` and `make test`).
set -euo pipefail

if command -v pkg-config >/dev/null && pkg-config --exists libmariadb; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
pkg-config --exists libmariadb
