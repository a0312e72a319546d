#!/usr/bin/env bash
# SEED-Bench: generate (model_vqa_loader, chunked) -> merge -> accuracy (image / video) + upload file.
#
# Usage: bash scripts/v1_5/eval/seed.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   Options, environment (MODEL_PATH, EVAL_DIR, PRUNED, CHUNKS, SCORE_FILE, ...) and NAME are common to the
#   eval scripts: see _common.sh (--help prints it below). GENERATOR_ARGS go to llava.eval.model_vqa_loader.
#
# Files (NAME: the run's name, see _common.sh):
#   questions  <EVAL_DIR>/seed_bench/llava-seed-bench.jsonl; images under <EVAL_DIR>/seed_bench/
#              (SEED-Bench-image/, SEED-Bench-video-image/ from extract_video_frames.py)
#   gold       <EVAL_DIR>/seed_bench/SEED-Bench.json
#   answers    <EVAL_DIR>/seed_bench/answers/<NAME>/{<CHUNKS>_<i>,merge}.jsonl
#   upload     <EVAL_DIR>/seed_bench/answers_upload/<NAME>.jsonl
#   score      <EVAL_DIR>/seed_bench/scores/<NAME>.score.json (SCORE_FILE)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
eval_setup "$@"

DIR="$EVAL_DIR/seed_bench"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_chunked llava.eval.model_vqa_loader "$DIR/answers/$NAME" \
    --question-file "$DIR/llava-seed-bench.jsonl" \
    --image-folder "$DIR"

mkdir -p "$DIR/answers_upload"
reset_score_file
"$PYTHON" scripts/convert_seed_for_submission.py \
    --annotation-file "$DIR/SEED-Bench.json" \
    --result-file "$DIR/answers/$NAME/merge.jsonl" \
    --result-upload-file "$DIR/answers_upload/$NAME.jsonl" \
    --score-file "$SCORE_FILE"

report_score_file
