#!/usr/bin/env bash
# TextVQA val: generate (model_vqa_loader) -> VQA soft accuracy.
#
# Usage: bash scripts/v1_5/eval/textvqa.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/textvqa/llava_textvqa_val_v051_ocr.jsonl, images <EVAL_DIR>/textvqa/train_images/
#   gold       <EVAL_DIR>/textvqa/TextVQA_0.5.1_val.json
#   answers    <EVAL_DIR>/textvqa/answers/<NAME>.jsonl
#   score      <EVAL_DIR>/textvqa/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

DIR="$EVAL_DIR/textvqa"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_loader \
    --question-file "$DIR/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$DIR/train_images" \
    --answers-file "$DIR/answers/$NAME.jsonl"

reset_score_file
"$PYTHON" -m llava.eval.eval_textvqa \
    --annotation-file "$DIR/TextVQA_0.5.1_val.json" \
    --result-file "$DIR/answers/$NAME.jsonl" \
    --score-file "$SCORE_FILE"

report_score_file
