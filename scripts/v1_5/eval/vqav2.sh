#!/usr/bin/env bash
# VQAv2 test-dev: generate (model_vqa_loader, chunked) -> merge -> convert for the EvalAI server.
#
# Usage: bash scripts/v1_5/eval/vqav2.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, CHUNKS, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl, images <EVAL_DIR>/vqav2/test2015/
#              <EVAL_DIR>/vqav2/llava_vqav2_mscoco_test2015.jsonl (all test ids, for the upload file)
#   answers    <EVAL_DIR>/vqav2/answers/llava_vqav2_mscoco_test-dev2015/<NAME>/{<CHUNKS>_<i>,merge}.jsonl
#   upload     <EVAL_DIR>/vqav2/answers_upload/llava_vqav2_mscoco_test-dev2015/<NAME>.json (submit to EvalAI)
#   score      <EVAL_DIR>/vqav2/scores/<NAME>.score.json (SCORE_FILE), only with VQAV2_ANNOTATION
#   VQAV2_SPLIT [llava_vqav2_mscoco_test-dev2015]: question file <EVAL_DIR>/vqav2/<VQAV2_SPLIT>.jsonl
#   VQAV2_IMAGES [<EVAL_DIR>/vqav2/test2015]: its image folder
#   VQAV2_ANNOTATION [none]: VQA annotations JSON with answers for the split's questions (e.g. a val split);
#              only then is a local VQA accuracy computed and the score file written (official: false).
#              Test-dev answers are not public: the number is EvalAI's, and no score file is written.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

SPLIT="${VQAV2_SPLIT:-llava_vqav2_mscoco_test-dev2015}"
VQAV2_ANNOTATION="$(from_caller "${VQAV2_ANNOTATION:-}")"
DIR="$EVAL_DIR/vqav2"
VQAV2_IMAGES="$(from_caller "${VQAV2_IMAGES:-$DIR/test2015}")"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_chunked llava.eval.model_vqa_loader "$DIR/answers/$SPLIT/$NAME" \
    --question-file "$DIR/$SPLIT.jsonl" \
    --image-folder "$VQAV2_IMAGES"

mkdir -p "$DIR/answers_upload/$SPLIT"
reset_score_file
CONVERT_ARGS=()
[ -z "$VQAV2_ANNOTATION" ] || CONVERT_ARGS+=(--annotation-file "$VQAV2_ANNOTATION")
# test splits: the upload covers every test2015 id (the converter's default); other splits: their own questions
case "$SPLIT" in *test*) ;; *) CONVERT_ARGS+=(--question-file "$DIR/$SPLIT.jsonl") ;; esac
"$PYTHON" scripts/convert_vqav2_for_submission.py --dir "$DIR" --split "$SPLIT" --ckpt "$NAME" \
    ${CONVERT_ARGS[@]+"${CONVERT_ARGS[@]}"} --score-file "$SCORE_FILE"
if [ ! -f "$SCORE_FILE" ]; then
    echo "[eval] VQAv2 $SPLIT has no public answers: no local score; submit $DIR/answers_upload/$SPLIT/$NAME.json to EvalAI" >&2
    exit 0
fi

report_score_file
