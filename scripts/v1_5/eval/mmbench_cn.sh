#!/usr/bin/env bash
# MMBench-CN dev: generate (model_vqa_mmbench --single-pred-prompt --lang cn) -> convert to the OpenCompass upload .xlsx.
#
# Usage: bash scripts/v1_5/eval/mmbench_cn.sh [options] [MODEL_PATH [MODEL_BASE]] [-- GENERATOR_ARGS...]
#   --pruned               pruned inference: the generator runs through
#                          `python -m dualspeed_patch.run --pruned ...` (same as PRUNED=1)
#   --vtp_method M         pruning method (VTP_METHOD)
#   --pruning_ratio P      fraction of the visual tokens dropped (PRUNING_RATIO)
#   --no_isolator          prune without the mode isolator (ISOLATOR=0)
#   --ckpt NAME            answers name (CKPT)
#   --model-path P, --model-base B   same as the positional arguments
#   -h, --help             print this help
#   GENERATOR_ARGS, after --, are appended to the llava.eval.model_vqa_mmbench command line.
#
# Environment (defaults in brackets):
#   MODEL_PATH [liuhaotian/llava-v1.5-13b]  MODEL_BASE [none]  CKPT [basename of MODEL_PATH]
#   EVAL_DIR [./playground/data/eval]  DEVICE [cuda; the generator falls back to cpu]  CONV_MODE [vicuna_v1]
#   MAX_NEW_TOKENS [the generator's default, 1024]  PYTHON [python]
#   PRUNED [0]  VTP_METHOD [divprune]  PRUNING_RATIO [0.9]  ISOLATOR [1]  (1: with mode_isolator.bin)
#   SCORE_FILE [<EVAL_DIR>/mmbench_cn/scores/<NAME>.score.json] (a relative one: from the calling directory)
#   Decoding is greedy (--temperature 0). A relative MODEL_PATH/MODEL_BASE/EVAL_DIR is taken from the
#   calling directory when it exists there, else from the repository root (where the defaults live).
#
# Files (NAME = CKPT for full inference, CKPT_pruned-<method>-r<ratio>[-noiso] for a pruned one):
#   questions  <EVAL_DIR>/mmbench_cn/mmbench_dev_cn_20231003.tsv (images inline, base64)
#   answers    <EVAL_DIR>/mmbench_cn/answers/mmbench_dev_cn_20231003/<NAME>.jsonl
#   upload     <EVAL_DIR>/mmbench_cn/answers_upload/mmbench_dev_cn_20231003/<NAME>.xlsx (submit to OpenCompass)
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

SPLIT="mmbench_dev_cn_20231003"
DIR="$EVAL_DIR/mmbench_cn"
SCORE_FILE="${SCORE_FILE:-$DIR/scores/$NAME.score.json}"

run_generator llava.eval.model_vqa_mmbench \
    --question-file "$DIR/$SPLIT.tsv" \
    --answers-file "$DIR/answers/$SPLIT/$NAME.jsonl" \
    --single-pred-prompt \
    --lang cn

mkdir -p "$DIR/answers_upload/$SPLIT" "$(dirname "$SCORE_FILE")"
rm -f "$SCORE_FILE"
"$PYTHON" scripts/convert_mmbench_for_submission.py \
    --annotation-file "$DIR/$SPLIT.tsv" \
    --result-dir "$DIR/answers/$SPLIT" \
    --upload-dir "$DIR/answers_upload/$SPLIT" \
    --experiment "$NAME" \
    --score-file "$SCORE_FILE"

[ -f "$SCORE_FILE" ] || { echo "[eval] the scorer wrote no score file $SCORE_FILE" >&2; exit 1; }
echo "[eval] score: $SCORE_FILE" >&2
