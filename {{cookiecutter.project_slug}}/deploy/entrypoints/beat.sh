#!/usr/bin/env bash
# The single Celery beat scheduler.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch beat "$@"
