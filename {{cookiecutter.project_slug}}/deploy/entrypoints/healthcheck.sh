#!/usr/bin/env bash
# Container probes (healthcheck.py): healthcheck.sh heartbeat PATH --max-age S | http URL.
# Kubernetes exec probes call this script, so they need no package name.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.healthcheck "$@"
