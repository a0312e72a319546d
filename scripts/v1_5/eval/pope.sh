#!/usr/bin/env bash
# POPE (COCO; adversarial, popular, random): generate (model_vqa_loader) -> per-split metrics, mean F1.
#
# Usage: bash scripts/v1_5/eval/pope.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/pope/llava_pope_test.jsonl, images <EVAL_DIR>/pope/val2014/
#   gold       <EVAL_DIR>/pope/coco/coco_pope_{adversarial,popular,random}.json
#   answers    <EVAL_DIR>/pope/answers/<NAME>.jsonl (in question order: the scorer pairs labels by position)
#   score      <EVAL_DIR>/pope/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

DIR="$EVAL_DIR/pope"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_loader \
    --question-file "$DIR/llava_pope_test.jsonl" \
    --image-folder "$DIR/val2014" \
    --answers-file "$DIR/answers/$NAME.jsonl"

reset_score_file
"$PYTHON" -m llava.eval.eval_pope \
    --annotation-dir "$DIR/coco" \
    --question-file "$DIR/llava_pope_test.jsonl" \
    --result-file "$DIR/answers/$NAME.jsonl" \
    --score-file "$SCORE_FILE"

report_score_file
