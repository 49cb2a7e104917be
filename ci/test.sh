#!/usr/bin/env bash
# THE test command of the template (README.md and .ci/run call it): lint the template's
# tests, then bake every supported combination and run the baked projects' own checks.
# Needs only python3 on a fresh machine; builds its own virtualenv in .venv-ci/.
# Extra arguments go to pytest, e.g. `bash ci/test.sh -k hooks -n 0`.
set -o errexit -o pipefail -o nounset

cd "$(dirname "${BASH_SOURCE[0]}")/.."
unset VIRTUAL_ENV PYTHONHOME PYTHONPATH UV_PROJECT_ENVIRONMENT

# The machine's interpreter (not a venv's, not a pyenv shim): every virtualenv here and in
# the baked projects is built from it, because uv may not download interpreters.
python3_cmd="${PYTHON:-$(command -v python3)}"
base_python="$("$python3_cmd" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
export UV_PYTHON="$base_python"
export UV_PYTHON_DOWNLOADS=never
# uv ships its own root certificates; trust the machine's bundle as pip does.
if [ -z "${SSL_CERT_FILE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

# System packages and services for later test tiers go in ci/provision.sh.
if [ -f ci/provision.sh ]; then
  bash ci/provision.sh
fi

venv="$PWD/.venv-ci"
started=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
  "$base_python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'uv>=0.8'
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --requirement ci/requirements.txt
# The baked projects' Makefiles call uv; the tests call cookiecutter from the same venv.
export PATH="$venv/bin:$PATH"
echo "ci/test.sh: tools ready in $((SECONDS - started)) s ($(uv --version), $("$venv/bin/python" --version))"

ruff check tests
ruff format --check tests

# helm for the chart tests of every bake with use_helm=yes (root or CI only, as below).
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  bash ci/helm.sh
fi

# The Docker engine and Compose v2 (pass 1 checks every bake's compose file; pass 2 runs
# the container tier). As root or under CI only: elsewhere those tests skip and say why.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
  bash ci/docker-engine.sh
fi

# Pass 1: bakes, lint and unit tiers, two at a time. Pass 2: the baked projects' real-process
# tiers (Redis, Sentinel, databases, workers) and the container tier (docker compose on a
# Docker engine that tests/compose.py starts), one at a time so timing bounds stay honest.
# Tests marked `slow` (long repetitions, e.g. 20 failovers in a row) run in neither pass.
rm -rf .ci-logs
first=0
python -m pytest tests --durations=15 -m "not stack" -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@" || first=$?
second=0
python -m pytest tests --durations=15 -m "stack and not slow" -p no:xdist "$@" || second=$?
# The container tier's figures, and its compose logs when something failed.
if [ -f .ci-logs/container-tier.json ]; then
  echo "ci/test.sh: container tier figures:"
  cat .ci-logs/container-tier.json
fi
if [ "$second" -ne 0 ] && [ "$second" -ne 5 ]; then
  for log in .ci-logs/*.log; do
    [ -f "$log" ] || continue
    echo "ci/test.sh: last 300 lines of $log"
    tail -n 300 "$log"
  done
fi
# Exit code 5 is "no test collected": fine for one pass (a -k selection), not for both.
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
  echo "ci/test.sh: FAILED: pytest collected no tests (exit code 5)" >&2
  exit 1
fi
for status in "$first" "$second"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    exit "$status"
  fi
done
