#!/usr/bin/env bash
# MMBench-CN dev: generate (model_vqa_mmbench --single-pred-prompt --lang cn) -> convert to the OpenCompass upload .xlsx.
#
# Usage: bash scripts/v1_5/eval/mmbench_cn.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_mmbench.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/mmbench_cn/mmbench_dev_cn_20231003.tsv (images inline, base64)
#   answers    <EVAL_DIR>/mmbench_cn/answers/mmbench_dev_cn_20231003/<NAME>.jsonl
#   upload     <EVAL_DIR>/mmbench_cn/answers_upload/mmbench_dev_cn_20231003/<NAME>.xlsx (submit to OpenCompass)
#   score      <EVAL_DIR>/mmbench_cn/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

SPLIT="mmbench_dev_cn_20231003"
DIR="$EVAL_DIR/mmbench_cn"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_mmbench \
    --question-file "$DIR/$SPLIT.tsv" \
    --answers-file "$DIR/answers/$SPLIT/$NAME.jsonl" \
    --single-pred-prompt \
    --lang cn

mkdir -p "$DIR/answers_upload/$SPLIT"
reset_score_file
"$PYTHON" scripts/convert_mmbench_for_submission.py \
    --annotation-file "$DIR/$SPLIT.tsv" \
    --result-dir "$DIR/answers/$SPLIT" \
    --upload-dir "$DIR/answers_upload/$SPLIT" \
    --experiment "$NAME" \
    --score-file "$SCORE_FILE"

report_score_file
