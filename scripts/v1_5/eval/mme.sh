#!/usr/bin/env bash
# MME: generate (model_vqa_loader) -> convert + score (Perception / Cognition totals).
#
# Usage: bash scripts/v1_5/eval/mme.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/MME/llava_mme.jsonl, images + ground truth <EVAL_DIR>/MME/MME_Benchmark_release_version/
#   answers    <EVAL_DIR>/MME/answers/<NAME>.jsonl
#   tool input <EVAL_DIR>/MME/eval_tool/answers/<NAME>/<subtask>.txt (the official calculation.py's format)
#   score      <EVAL_DIR>/MME/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

DIR="$EVAL_DIR/MME"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_loader \
    --question-file "$DIR/llava_mme.jsonl" \
    --image-folder "$DIR/MME_Benchmark_release_version" \
    --answers-file "$DIR/answers/$NAME.jsonl"

reset_score_file
"$PYTHON" -m llava.eval.eval_mme \
    --answers-file "$DIR/answers/$NAME.jsonl" \
    --question-file "$DIR/llava_mme.jsonl" \
    --data-path "$DIR/MME_Benchmark_release_version" \
    --results-dir "$DIR/eval_tool/answers/$NAME" \
    --score-file "$SCORE_FILE"

report_score_file
