#!/usr/bin/env bash
# Start the app on the embedded models:  bash scripts/start.sh [--share] [--port 7860] [--server-name 0.0.0.0]
# Builds or reuses the venv for requirements.txt (.ci/venv.sh; several minutes the first time), then
# runs `python app.py` with your arguments. Open http://127.0.0.1:7860 in a browser.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source .ci/venv.sh >/dev/null
exec "$UNLEARNING_PYTHON" app.py "$@"
