#!/usr/bin/env bash
# The real browser of the console's tests (tests/console/test_console_browser.py): Debian's chromium, driven by
# the pinned Python playwright package through executable_path. Never `playwright install` (it downloads a
# browser build of its own). Used by `make test`.
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  [ "$(id -u)" = 0 ] || SUDO=sudo
  ${SUDO:-} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq chromium
fi
echo "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
