#!/usr/bin/env bash
# Set up everything (Debian packages, torch, ubmd with extras and test tools) and run the checks:
#   bash tests/run.sh            # lint + the whole test suite
#   bash tests/run.sh -k store   # extra arguments go to pytest
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
bash workflows/install.sh --dev --system
PY=${PYTHON:-python3}
"$PY" -m ruff check .
"$PY" -m ruff format --check .
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
status=0
"$PY" -m pytest -q --durations=25 "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "tests/run.sh: pytest collected no tests — that is a failure" >&2
  exit 1
fi
exit "$status"
