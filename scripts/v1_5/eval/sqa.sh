#!/usr/bin/env bash
# ScienceQA (test, IMG subset reported): generate (model_vqa_science --single-pred-prompt) -> score.
#
# Usage: bash scripts/v1_5/eval/sqa.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_science.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/scienceqa/llava_test_CQM-A.json, images <EVAL_DIR>/scienceqa/images/test/
#   gold       <EVAL_DIR>/scienceqa/{problems,pid_splits}.json
#   answers    <EVAL_DIR>/scienceqa/answers/<NAME>.jsonl (+ <NAME>_output.jsonl, <NAME>_result.json)
#   score      <EVAL_DIR>/scienceqa/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

DIR="$EVAL_DIR/scienceqa"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_science \
    --question-file "$DIR/llava_test_CQM-A.json" \
    --image-folder "$DIR/images/test" \
    --answers-file "$DIR/answers/$NAME.jsonl" \
    --single-pred-prompt

reset_score_file
"$PYTHON" -m llava.eval.eval_science_qa \
    --base-dir "$DIR" \
    --result-file "$DIR/answers/$NAME.jsonl" \
    --output-file "$DIR/answers/${NAME}_output.jsonl" \
    --output-result "$DIR/answers/${NAME}_result.json" \
    --score-file "$SCORE_FILE"

report_score_file
