#!/usr/bin/env bash
# The HTTP producer: gunicorn with uvicorn workers.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch api "$@"
