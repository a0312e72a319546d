#!/usr/bin/env bash
# The main job on a fresh clone, offline on 2 CPU cores: set up .venv, build the toy task and the toy models
# once (cached under results/.cache), then run the paper's Table 2 (baseline / NaivePrune / DualSpeed, normal
# and pruned inference) and the training-speed comparison through the real training and eval scripts.
# Tables (Markdown + CSV), plots (PNG) and summary.md land in results/quick/.
# Arguments go to dualspeed_lab.reproduce, e.g. `--preset full`, `--seeds 0 1 2`, `--dry-run`, `--help`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRAS="${EXTRAS:-test}" bash scripts/setup_env.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
exec python -m dualspeed_lab.reproduce "$@"
