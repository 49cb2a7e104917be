#!/bin/bash
# The two checks of the official image's healthcheck.sh that compose files use.
set -o errexit -o pipefail -o nounset
client=(mariadb --defaults-extra-file=/var/lib/mysql/.my-healthcheck.cnf --skip-column-names -B)
for check in "$@"; do
  case "$check" in
    --connect) "${client[@]}" -e 'SELECT 1' >/dev/null ;;
    --innodb_initialized)
      [ "$("${client[@]}" -e "SELECT 1 FROM information_schema.ENGINES WHERE engine = 'InnoDB' AND support IN ('YES', 'DEFAULT')")" = 1 ] ;;
    *) echo "healthcheck.sh: unsupported check $check" >&2; exit 2 ;;
  esac
done
