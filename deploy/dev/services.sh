#!/usr/bin/env bash
# Make sure MariaDB (127.0.0.1:3306, root without password) and Redis (127.0.0.1:6379)
# are installed and running, for the tests. Installs Debian packages where missing.
set -euo pipefail

need_apt=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# deploy/ checks (tests/integration/test_deploy.py): `nginx -t` on the site with a
# self-signed certificate, `systemd-analyze verify` on the units. Nothing is started.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# deploy/prometheus/ rules: `promtool check rules` and `promtool test rules`
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "services: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # nginx's and prometheus's packages would start servers: say no to service starts meanwhile
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! mysqladmin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "services: starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 60); do
    mysqladmin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
mysqladmin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null \
  || { echo "services: MariaDB is not answering on 127.0.0.1:3306" >&2; exit 1; }
# A fresh Debian install lets root in only over the unix socket; the tests connect over TCP
# as root without a password. Add that account for 127.0.0.1 only, and only when missing.
if ! mysql --protocol=tcp -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
  echo "services: allowing root without a password over TCP from 127.0.0.1 (tests)"
  mysql -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 40); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.25
  done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null \
  || { echo "services: Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
echo "services: MariaDB and Redis are up"
