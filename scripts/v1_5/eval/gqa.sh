#!/usr/bin/env bash
# GQA testdev-balanced: generate (model_vqa_loader, chunked) -> merge -> convert -> local accuracy.
#
# Usage: bash scripts/v1_5/eval/gqa.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, CHUNKS, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/gqa/llava_gqa_testdev_balanced.jsonl, images <EVAL_DIR>/gqa/data/images/
#   gold       <EVAL_DIR>/gqa/data/testdev_balanced_questions.json
#   answers    <EVAL_DIR>/gqa/answers/llava_gqa_testdev_balanced/<NAME>/{<CHUNKS>_<i>,merge}.jsonl
#   predictions <EVAL_DIR>/gqa/answers/llava_gqa_testdev_balanced/<NAME>/testdev_balanced_predictions.json,
#              copied to <EVAL_DIR>/gqa/data/testdev_balanced_predictions.json (upstream's place, where the
#              official `cd data && python eval/eval.py --tier testdev_balanced` reads it; last run wins)
#   score      <EVAL_DIR>/gqa/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

SPLIT="llava_gqa_testdev_balanced"
DIR="$EVAL_DIR/gqa"
GQADIR="$DIR/data"
ANSWERS="$DIR/answers/$SPLIT/$NAME"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_chunked llava.eval.model_vqa_loader "$ANSWERS" \
    --question-file "$DIR/$SPLIT.jsonl" \
    --image-folder "$GQADIR/images"

"$PYTHON" scripts/convert_gqa_for_eval.py --src "$ANSWERS/merge.jsonl" --dst "$ANSWERS/testdev_balanced_predictions.json"
cp "$ANSWERS/testdev_balanced_predictions.json" "$GQADIR/testdev_balanced_predictions.json"
reset_score_file
"$PYTHON" -m llava.eval.eval_gqa --tier testdev_balanced \
    --questions "$GQADIR/testdev_balanced_questions.json" \
    --predictions "$ANSWERS/testdev_balanced_predictions.json" \
    --score-file "$SCORE_FILE"

report_score_file
