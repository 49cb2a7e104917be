#!/usr/bin/env bash
# A Celery worker for one queue group: worker.sh high|default|low.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch worker "$@"
