#!/usr/bin/env bash
# Makes sure the local services the test suite may use answer on loopback, and starts
# them if they do not: PostgreSQL (5432), Redis (6379), NATS with JetStream (4222).
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port name
  for _ in $(seq 1 50); do answers "$1" && { echo "    $2 answers on $1"; return 0; }; sleep 0.2; done
  echo "    $2 did not come up on $1" >&2; return 1
}

if ! answers 5432; then
  echo "==> starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for 5432 PostgreSQL || true
fi

if ! answers 6379; then
  echo "==> starting Redis"
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  wait_for 6379 Redis || true
fi

if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "==> installing nats-server (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server) \
    >/dev/null 2>&1 || echo "    could not install nats-server" >&2
fi
if ! command -v nft >/dev/null; then
  echo "==> installing nftables (the outbound-only node test firewalls its namespace)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables) \
    >/dev/null 2>&1 || echo "    could not install nftables" >&2
fi
if ! answers 4222; then
  echo "==> starting NATS"
  NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
  mkdir -p /var/lib/nats-server 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec "$NATS_BIN" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  wait_for 4222 NATS || true
fi
exit 0
