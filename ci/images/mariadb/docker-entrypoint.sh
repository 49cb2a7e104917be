#!/bin/bash
# Same contract as the official image's entrypoint (the parts compose files rely on).
set -o errexit -o pipefail -o nounset
socket=/run/mysqld/mysqld.sock
if [ "$1" = mariadbd ] && [ ! -d /var/lib/mysql/mysql ]; then
  # Like the official image: MARIADB_PASSWORD_FILE names a file holding the password.
  if [ -n "${MARIADB_PASSWORD_FILE:-}" ]; then
    MARIADB_PASSWORD="$(cat "$MARIADB_PASSWORD_FILE")"
  fi
  if [ -n "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ] && [ -z "${MARIADB_ROOT_PASSWORD:-}" ]; then
    MARIADB_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64)"
    echo "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
  fi
  : "${MARIADB_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD must be set}"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
  mariadbd --user=mysql --skip-networking --socket="$socket" &
  for _ in $(seq 1 60); do
    mariadb-admin --socket="$socket" ping >/dev/null 2>&1 && break
    sleep 1
  done
  health_password="$(head -c 18 /dev/urandom | base64)"
  mariadb --socket="$socket" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE:-app}\`;
CREATE USER IF NOT EXISTS '${MARIADB_USER:-app}'@'%' IDENTIFIED BY '${MARIADB_PASSWORD:-}';
GRANT ALL ON \`${MARIADB_DATABASE:-app}\`.* TO '${MARIADB_USER:-app}'@'%';
CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY '${health_password}';
CREATE USER 'root'@'%' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
FLUSH PRIVILEGES;
SQL
  printf '[mariadb-client]\nuser=healthcheck\npassword=%s\nsocket=%s\n' "$health_password" "$socket" \
    >/var/lib/mysql/.my-healthcheck.cnf
  chown mysql:mysql /var/lib/mysql/.my-healthcheck.cnf
  chmod 600 /var/lib/mysql/.my-healthcheck.cnf
  mariadb-admin --socket="$socket" -uroot -p"$MARIADB_ROOT_PASSWORD" shutdown
  wait
  echo "MariaDB init process done. Ready for start up."
fi
if [ "$1" = mariadbd ]; then
  set -- "$@" --user=mysql
fi
exec "$@"
