#!/usr/bin/env bash
# Flower, the task dashboard, behind basic auth.
# Every deployment and the test harness start this process kind through this script.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch flower "$@"
