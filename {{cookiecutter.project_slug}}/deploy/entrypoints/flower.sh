#!/usr/bin/env bash
# Flower, the task dashboard, behind basic auth.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.launch flower "$@"
