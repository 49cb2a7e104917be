#!/usr/bin/env bash
# A Celery worker for one queue group: worker.sh high|default|low.
# Every deployment and the test harness start this process kind through this script.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch worker "$@"
