#!/usr/bin/env bash
# Every real-model check on a CUDA GPU in one go (within 10 minutes), one table at the end.
#   bash bench/gpu/run_all.sh [run_all.py options, e.g. --only sd15,sampling --iterations 5]
# Builds the real architectures from assets/architectures with random weights (no download), runs each method in
# its own process with a time limit, and prints seconds per iteration and peak CUDA memory beside the CPU
# rehearsal's projection. See bench/gpu/run_all.py and docs/rehearsal.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source .ci/venv.sh >/dev/null
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$UNLEARNING_PYTHON" bench/gpu/run_all.py "$@"
