#!/usr/bin/env bash
# System packages for the baked projects' integration tier: Redis + Sentinel, MariaDB and
# PostgreSQL, run by the tests as private processes on free ports (never as system services);
# promtool / amtool (packages prometheus, prometheus-alertmanager), which the unit tier
# uses to check the monitoring configuration offline; and wrk, the HTTP load generator of
# the baked projects' benchmarks (`make bench-smoke`).
# Idempotent: installs only what is missing, then makes sure none of these packages'
# services keeps running on its default port, and prints the versions.
# Runs as root on Debian bookworm (CI=true); elsewhere it installs through sudo if it can.
set -o errexit -o pipefail -o nounset

export DEBIAN_FRONTEND=noninteractive

log() { echo "ci/provision.sh: $*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo --non-interactive "$@"
  else
    log "not root and no sudo: cannot run '$*'" >&2
    return 1
  fi
}

postgres_bin() {
  # The newest installed cluster binaries (Debian keeps them out of PATH).
  local dir
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1 \
  || ! command -v mariadb >/dev/null 2>&1; then
  missing+=(mariadb-server mariadb-client)
fi
if ! postgres_bin >/dev/null || ! command -v psql >/dev/null 2>&1 \
  || ! id -u postgres >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ "${#missing[@]}" -gt 0 ]; then
  # Package scripts must not start services: the tests run their own instances.
  created_policy=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# Installed by ci/provision.sh for the duration of the install.\nexit 101\n' \
      | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 0755 /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  cleanup_policy() {
    if [ "$created_policy" = yes ]; then
      as_root rm -f /usr/sbin/policy-rc.d
    fi
  }
  trap cleanup_policy EXIT
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  cleanup_policy
  trap - EXIT
else
  log "redis-server, redis-sentinel, mariadb-server, postgresql, prometheus," \
    "prometheus-alertmanager and wrk already installed"
fi

# Stop (and on systemd, disable) the packages' own services if anything started them.
for service in redis-server redis-sentinel mariadb mysql postgresql prometheus \
  prometheus-alertmanager; do
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet "$service" 2>/dev/null \
      || systemctl is-enabled --quiet "$service" 2>/dev/null; then
      log "stopping and disabling the system service $service"
      as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  elif [ -x "/etc/init.d/$service" ]; then
    if as_root service "$service" status >/dev/null 2>&1; then
      log "stopping the system service $service"
      as_root service "$service" stop >/dev/null 2>&1 || true
    fi
  fi
done

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for port in 6379 26379 3306 5432 9090 9093; do
  if port_open "$port"; then
    log "WARNING: something still listens on 127.0.0.1:$port (not started by this script);" \
      "the tests use free ports and do not need it" >&2
  fi
done

pg_dir="$(postgres_bin)"
log "$(redis-server --version)"
log "redis-sentinel: $(redis-sentinel --version 2>/dev/null | head -n 1)"
log "$(mariadbd --version)"
log "$("$pg_dir/postgres" --version) ($pg_dir)"
log "$(promtool --version 2>&1 | head -n 1)"
log "$(amtool --version 2>&1 | head -n 1)"
log "$(wrk --version 2>&1 | head -n 1)"
