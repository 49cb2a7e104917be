#!/usr/bin/env bash
# The ledger database schema: with no argument, bring it to the current revision (one-shot,
# before the app processes start); `migrate.sh wait` blocks until another run has done so
# (init containers of Kubernetes pods).
set -o errexit -o pipefail -o nounset
if [ "$#" -eq 0 ]; then
  set -- upgrade head
fi
exec python -m {{ cookiecutter.package_name }}.ledger.migrate "$@"
