#!/usr/bin/env bash
# The HTTP producer: gunicorn with uvicorn workers.
# Every deployment and the test harness start this process kind through this script.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch api "$@"
