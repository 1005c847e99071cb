#!/usr/bin/env bash
# The project's test command:  bash tests/run.sh [pytest arguments]
# Builds or reuses the venv for requirements.txt (.ci/venv.sh; ~10 min the first time), then runs
# pytest from the repository root. Extra arguments go to pytest (e.g. tests/test_config.py, -k name).
# Exits with pytest's status; "no tests collected" (5) is reported and is a failure too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source .ci/venv.sh >/dev/null
echo "tests/run.sh: $("$UNLEARNING_PYTHON" --version) from $UNLEARNING_VENV" >&2

status=0
PYTHONUNBUFFERED=1 "$UNLEARNING_PYTHON" -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "tests/run.sh: pytest collected no tests; that is a failure" >&2
fi
exit "$status"
