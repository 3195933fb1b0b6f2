#!/usr/bin/env bash
# Reach MariaDB (127.0.0.1:3306, root, empty password), Redis (127.0.0.1:6379) and etcd (cluster mode's
# membership, on a loopback port of its own: 127.0.0.1:23790); start or install them if they are down.
# Used by `make test` and `make bench`.
set -euo pipefail

have_mysql() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 3306)) == 0 else 1)
PY
}
have_redis() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 6379)); s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG")
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
have_etcd() { python3 - "$ETCD_CLIENT" <<'PY'
import json, sys, urllib.request
try:
    ok = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/health", timeout=1)).get("health") == "true"
except (OSError, ValueError):
    ok = False
sys.exit(0 if ok else 1)
PY
}
wait_for() { for _ in $(seq 1 60); do "$1" && return 0; sleep 0.5; done; echo "$1: service did not come up" >&2; return 1; }

if ! have_redis; then
  command -v redis-server >/dev/null || { apt-get update && apt-get install -y redis-server; }
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for have_redis
fi

if ! have_mysql; then
  if [ ! -x /usr/sbin/mariadbd ]; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_for have_mysql
  # A fresh Debian install lets root in only over the socket: allow TCP with an empty password for tests.
  mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket" 2>/dev/null || true
fi
if ! have_etcd; then
  command -v etcd >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server; }
  mkdir -p /var/lib/wallet-etcd /var/log/wallet-etcd
  # Detached (setsid): it outlives this make run, like MariaDB and Redis. A single member, loopback only.
  setsid etcd --name wallet-test --data-dir /var/lib/wallet-etcd \
    --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
    --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
    --initial-cluster "wallet-test=http://$ETCD_PEER" --log-outputs stderr \
    </dev/null >>/var/log/wallet-etcd/etcd.log 2>&1 &
  wait_for have_etcd
fi
echo "services: mariadb, redis and etcd are up"
