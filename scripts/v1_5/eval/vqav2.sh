#!/usr/bin/env bash
# VQAv2 test-dev: generate (model_vqa_loader, chunked) -> merge -> convert for the EvalAI server.
#
# Usage: bash scripts/v1_5/eval/vqav2.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   --pruned               pruned inference: the generator runs through
#                          `python -m dualspeed_patch.run --pruned ...` (same as PRUNED=1)
#   --vtp_method M         pruning method (VTP_METHOD)
#   --pruning_ratio P      fraction of the visual tokens dropped (PRUNING_RATIO)
#   --no_isolator          prune without the mode isolator (ISOLATOR=0)
#   --ckpt NAME            answers name (CKPT)
#   --model-path P, --model-base B   same as the positional arguments
#   -h, --help             print this help
#   GENERATOR_ARGS, after --, are appended to the llava.eval.model_vqa_loader command line.
#
# Environment (defaults in brackets):
#   MODEL_PATH [liuhaotian/llava-v1.5-13b]  MODEL_BASE [none]  CKPT [basename of MODEL_PATH]
#   EVAL_DIR [./playground/data/eval]  DEVICE [cuda; the generator falls back to cpu]  CONV_MODE [vicuna_v1]
#   MAX_NEW_TOKENS [the generator's default, 128]  PYTHON [python]
#   NUM_WORKERS [4]: DataLoader workers of model_vqa_loader
#   PRUNED [0]  VTP_METHOD [divprune]  PRUNING_RATIO [0.9]  ISOLATOR [1]  (1: with mode_isolator.bin)
#   CUDA_VISIBLE_DEVICES: a GPU list; one chunk per GPU, run in parallel, then merged (1 chunk without)
#   CHUNKS [number of GPUs listed, else 1]: number of chunks (cycling over the GPUs; on CPU: processes)
#   SCORE_FILE [<EVAL_DIR>/vqav2/scores/<NAME>.score.json] (a relative one: from the calling directory)
#   Decoding is greedy (--temperature 0). A relative MODEL_PATH/MODEL_BASE/EVAL_DIR is taken from the
#   calling directory when it exists there, else from the repository root (where the defaults live).
#
# Files (NAME = CKPT for full inference, CKPT_pruned-<method>-r<ratio>[-noiso] for a pruned one):
#   questions  <EVAL_DIR>/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl, images <EVAL_DIR>/vqav2/test2015/
#              <EVAL_DIR>/vqav2/llava_vqav2_mscoco_test2015.jsonl (all test ids, for the upload file)
#   answers    <EVAL_DIR>/vqav2/answers/llava_vqav2_mscoco_test-dev2015/<NAME>/{<CHUNKS>_<i>,merge}.jsonl
#   upload     <EVAL_DIR>/vqav2/answers_upload/llava_vqav2_mscoco_test-dev2015/<NAME>.json (submit to EvalAI)
#   VQAV2_SPLIT [llava_vqav2_mscoco_test-dev2015]: question file <EVAL_DIR>/vqav2/<VQAV2_SPLIT>.jsonl
#   VQAV2_IMAGES [<EVAL_DIR>/vqav2/test2015]: its image folder
#   VQAV2_ANNOTATION [none]: VQA annotations JSON with answers for the split's questions (e.g. a val split);
#              only then is a local VQA accuracy computed and the score file written (official: false).
#              Test-dev answers are not public: the number is EvalAI's, and no score file is written.
set -euo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$SCRIPT_PATH"; }

CALLER_PWD="$PWD"
cd "$(dirname "$SCRIPT_PATH")/../../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# A relative path given by the caller is taken from the caller's directory when it exists there
# (defaults stay relative to the repository root, as upstream's scripts run from it).
from_caller() { case "$1" in /*|"") printf '%s' "$1" ;; *) if [ -e "$CALLER_PWD/$1" ]; then printf '%s' "$CALLER_PWD/$1"; else printf '%s' "$1"; fi ;; esac; }

PRUNED="${PRUNED:-0}"; VTP_METHOD="${VTP_METHOD:-divprune}"; PRUNING_RATIO="${PRUNING_RATIO:-0.9}"
ISOLATOR="${ISOLATOR:-1}"; CKPT="${CKPT:-}"; GEN_EXTRA=(); POSITIONAL=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --pruned) PRUNED=1 ;;
        --no_isolator|--no-isolator) ISOLATOR=0 ;;
        --vtp_method|--vtp-method) VTP_METHOD="${2:?$1 needs a value}"; shift ;;
        --vtp_method=*|--vtp-method=*) VTP_METHOD="${1#*=}" ;;
        --pruning_ratio|--pruning-ratio) PRUNING_RATIO="${2:?$1 needs a value}"; shift ;;
        --pruning_ratio=*|--pruning-ratio=*) PRUNING_RATIO="${1#*=}" ;;
        --ckpt) CKPT="${2:?$1 needs a value}"; shift ;;
        --ckpt=*) CKPT="${1#*=}" ;;
        --model-path) MODEL_PATH="${2:?$1 needs a value}"; shift ;;
        --model-path=*) MODEL_PATH="${1#*=}" ;;
        --model-base) MODEL_BASE="${2:?$1 needs a value}"; shift ;;
        --model-base=*) MODEL_BASE="${1#*=}" ;;
        --) shift; GEN_EXTRA=("$@"); break ;;
        -*) echo "$(basename "$0"): unknown option $1 (see --help)" >&2; exit 2 ;;
        *) POSITIONAL+=("$1") ;;
    esac
    shift
done
[ "${#POSITIONAL[@]}" -le 2 ] || { echo "$(basename "$0"): too many arguments (see --help)" >&2; exit 2; }
[ "${#POSITIONAL[@]}" -lt 1 ] || MODEL_PATH="${POSITIONAL[0]}"
[ "${#POSITIONAL[@]}" -lt 2 ] || MODEL_BASE="${POSITIONAL[1]}"
case "$PRUNED" in 0|1) ;; *) echo "PRUNED must be 0 or 1, got '$PRUNED'" >&2; exit 2 ;; esac
case "$ISOLATOR" in 0|1) ;; *) echo "ISOLATOR must be 0 or 1, got '$ISOLATOR'" >&2; exit 2 ;; esac

MODEL_PATH="$(from_caller "${MODEL_PATH:-liuhaotian/llava-v1.5-13b}")"
MODEL_BASE="$(from_caller "${MODEL_BASE:-}")"
EVAL_DIR="$(from_caller "${EVAL_DIR:-./playground/data/eval}")"
CKPT="${CKPT:-$(basename "${MODEL_PATH%/}")}"
DEVICE="${DEVICE:-cuda}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-}"
NUM_WORKERS="${NUM_WORKERS:-}"
PYTHON="${PYTHON:-python}"
case "${SCORE_FILE:-/}" in /*) ;; *) SCORE_FILE="$CALLER_PWD/$SCORE_FILE" ;; esac
# Answers of a pruned run go under their own name, so full and pruned runs never overwrite each other.
if [ "$PRUNED" = 1 ]; then
    NAME="${CKPT}_pruned-${VTP_METHOD}-r${PRUNING_RATIO}"
    [ "$ISOLATOR" = 1 ] || NAME="${NAME}-noiso"
else
    NAME="$CKPT"
fi
IFS=',' read -r -a GPULIST <<< "${CUDA_VISIBLE_DEVICES:-}"
CHUNKS="${CHUNKS:-${#GPULIST[@]}}"
[ "$CHUNKS" -ge 1 ] 2>/dev/null || CHUNKS=1

# run_generator MODULE ARGS...: the generator, directly or through the pruned-inference runner.
run_generator() {
    local module="$1"; shift
    local -a cmd=("$PYTHON" -m)
    if [ "$PRUNED" = 1 ]; then
        cmd+=(dualspeed_patch.run --pruned --vtp_method "$VTP_METHOD" --pruning_ratio "$PRUNING_RATIO")
        [ "$ISOLATOR" = 1 ] || cmd+=(--no_isolator)
    fi
    cmd+=("$module" --model-path "$MODEL_PATH")
    [ -z "$MODEL_BASE" ] || cmd+=(--model-base "$MODEL_BASE")
    cmd+=("$@" --temperature 0 --conv-mode "$CONV_MODE" --device "$DEVICE")
    [ -z "$MAX_NEW_TOKENS" ] || cmd+=(--max_new_tokens "$MAX_NEW_TOKENS")
    if [ "$module" = llava.eval.model_vqa_loader ] && [ -n "$NUM_WORKERS" ]; then
        cmd+=(--num-workers "$NUM_WORKERS")
    fi
    cmd+=(${GEN_EXTRA[@]+"${GEN_EXTRA[@]}"})
    echo "[eval] ${cmd[*]}" >&2
    "${cmd[@]}"
}

# run_chunks ANSWER_DIR MODULE ARGS...: CHUNKS generator processes in parallel (chunk i on GPU i of
# CUDA_VISIBLE_DEVICES, cycling), each writing ANSWER_DIR/<CHUNKS>_<i>.jsonl; then ANSWER_DIR/merge.jsonl.
run_chunks() {
    local dir="$1"; shift
    mkdir -p "$dir"
    rm -f "$dir/merge.jsonl"
    trap 'kill $(jobs -p) 2>/dev/null; exit 130' INT TERM
    local -a pids=()
    local idx
    for idx in $(seq 0 $((CHUNKS - 1))); do
        (
            if [ "${#GPULIST[@]}" -gt 0 ]; then export CUDA_VISIBLE_DEVICES="${GPULIST[$((idx % ${#GPULIST[@]}))]}"; fi
            run_generator "$@" --answers-file "$dir/${CHUNKS}_${idx}.jsonl" --num-chunks "$CHUNKS" --chunk-idx "$idx"
        ) &
        pids+=("$!")
    done
    local failed=0
    for idx in "${!pids[@]}"; do
        wait "${pids[$idx]}" || { echo "[eval] chunk $idx of $CHUNKS failed" >&2; failed=1; }
    done
    trap - INT TERM
    [ "$failed" = 0 ] || exit 1
    : > "$dir/merge.jsonl"
    for idx in $(seq 0 $((CHUNKS - 1))); do
        cat "$dir/${CHUNKS}_${idx}.jsonl" >> "$dir/merge.jsonl"
    done
}

SPLIT="${VQAV2_SPLIT:-llava_vqav2_mscoco_test-dev2015}"
VQAV2_ANNOTATION="$(from_caller "${VQAV2_ANNOTATION:-}")"
DIR="$EVAL_DIR/vqav2"
VQAV2_IMAGES="$(from_caller "${VQAV2_IMAGES:-$DIR/test2015}")"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_chunks "$DIR/answers/$SPLIT/$NAME" llava.eval.model_vqa_loader \
    --question-file "$DIR/$SPLIT.jsonl" \
    --image-folder "$VQAV2_IMAGES"

mkdir -p "$DIR/answers_upload/$SPLIT" "$(dirname "$SCORE_FILE")"
rm -f "$SCORE_FILE"
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

[ -f "$SCORE_FILE" ] || { echo "[eval] the scorer wrote no score file $SCORE_FILE" >&2; exit 1; }
echo "[eval] score: $SCORE_FILE" >&2
