#!/usr/bin/env bash
# One-shot: bring the ledger database schema to the current revision.
# Every deployment and the test harness run this before the app processes start.
set -o errexit -o pipefail -o nounset
exec python -m {{ cookiecutter.package_name }}.ledger.migrate upgrade "${1:-head}"
