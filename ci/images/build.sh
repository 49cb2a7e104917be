#!/usr/bin/env bash
# Local stand-ins for the official images the generated compose file and Dockerfile name
# (no image registry is reachable from CI). Grafana has no Debian package: the container
# tier starts the monitoring profile without it. Each honours the contract the project relies
# on (commands, paths, environment variables, healthcheck tools), built from Debian
# packages on a debootstrap root file system or from the PyPI package of the same program.
# Prints `NAME=image` lines for the image variables of the generated project on stdout.
# Idempotent: an image built from the same directory content is kept (REBUILD=1 rebuilds);
# a changed Dockerfile or script rebuilds its image, even on a machine that kept the old one.
set -o errexit -o pipefail -o nounset

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "ci/images/build.sh: $*" >&2; }

suite=bookworm
base="standin/debian:$suite"
python_image="standin/python:3.11-slim-$suite"

have() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
  have "$base" && return 0
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  # The machine's own Debian mirror; nothing here names a host.
  local mirror rootfs
  mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)"
  rootfs="$(mktemp -d)"
  log "debootstrap $suite from the machine's mirror into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; return 1; }
  # Containers reach package indexes only through the machine's certificate authorities.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  docker tag "$base" "$python_image"
}

# A digest of a build directory's files, names included.
context_digest() {
  (cd "$here/$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

build_image() {  # build_image TAG DIRECTORY
  local digest
  digest="$(context_digest "$2")"
  if have "$1" && [ "$(docker image inspect --format '{{ index .Config.Labels "standin.context" }}' "$1")" = "$digest" ]; then
    return 0
  fi
  log "building $1"
  docker build --quiet --build-arg "BASE=$base" --label "standin.context=$digest" --tag "$1" "$here/$2" >/dev/null
}

started=$SECONDS
build_base
build_image standin/redis:7.2-$suite redis
build_image standin/postgres:15-$suite postgres
build_image standin/mariadb:10.11-$suite mariadb
build_image standin/celery-exporter:0.11.2 celery-exporter
build_image standin/redis-exporter:1.45-$suite redis-exporter
build_image standin/prometheus:2-$suite prometheus
build_image standin/alertmanager:0-$suite alertmanager
log "stand-in images ready in $((SECONDS - started)) s"

cat <<VARS
PYTHON_IMAGE=$python_image
REDIS_IMAGE=standin/redis:7.2-$suite
POSTGRES_IMAGE=standin/postgres:15-$suite
MARIADB_IMAGE=standin/mariadb:10.11-$suite
CELERY_EXPORTER_IMAGE=standin/celery-exporter:0.11.2
REDIS_EXPORTER_IMAGE=standin/redis-exporter:1.45-$suite
PROMETHEUS_IMAGE=standin/prometheus:2-$suite
ALERTMANAGER_IMAGE=standin/alertmanager:0-$suite
VARS
