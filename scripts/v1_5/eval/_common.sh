# shellcheck shell=bash
# Options common to the LLaVA-1.5 eval scripts of scripts/v1_5/eval (from their shared _common.sh):
#   --pruned               pruned inference: the generator runs through
#                          `python -m dualspeed_patch.run --pruned ...` (same as PRUNED=1)
#   --vtp_method M         pruning method (VTP_METHOD)
#   --pruning_ratio P      fraction of the visual tokens dropped (PRUNING_RATIO)
#   --no_isolator          prune without the mode isolator (ISOLATOR=0)
#   --ckpt NAME            answers name (CKPT)
#   --model-path P, --model-base B   same as the positional arguments
#   -h, --help             print this help
#   GENERATOR_ARGS, after --, are appended to the generator's command line (the module the header names).
#
# Environment (defaults in brackets):
#   MODEL_PATH [liuhaotian/llava-v1.5-13b]  MODEL_BASE [none]  CKPT [basename of MODEL_PATH]
#   EVAL_DIR [./playground/data/eval]  DEVICE [cuda; the generator falls back to cpu]  CONV_MODE [vicuna_v1]
#   MAX_NEW_TOKENS [the generator's default: 128 for model_vqa_loader, 1024 for model_vqa_science and
#              model_vqa_mmbench]  PYTHON [python]
#   NUM_WORKERS [4]: DataLoader workers of model_vqa_loader
#   PRUNED [0]  VTP_METHOD [divprune]  PRUNING_RATIO [0.9]  ISOLATOR [1]  (1: with mode_isolator.bin)
#   Chunked scripts (vqav2, gqa, seed) only:
#     CUDA_VISIBLE_DEVICES: a GPU list; one chunk per GPU, run in parallel, then merged (1 chunk without)
#     CHUNKS [number of GPUs listed, else 1]: number of chunks (cycling over the GPUs; on CPU: processes)
#   SCORE_FILE [<EVAL_DIR>/<benchmark folder>/scores/<NAME>.score.json] (a relative one: from the calling
#              directory)
#   Decoding is greedy (--temperature 0). A relative MODEL_PATH/MODEL_BASE/EVAL_DIR is taken from the
#   calling directory when it exists there, else from the repository root (where the defaults live).
#
# NAME, the name of a run's answers and score files: CKPT for full inference,
#   CKPT_pruned-<method>-r<ratio>[-noiso] for a pruned one, so full and pruned runs never overwrite each other.
#   `python -m llava.eval.summarize --eval-dir <EVAL_DIR> --runs NAME ...` tabulates runs by NAME.

# Sourced (not run) by each benchmark script, right after `set -euo pipefail`:
#   # shellcheck source-path=SCRIPTDIR source=_common.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
#   eval_setup "$@"          # options/environment -> variables (above), cd to the repository root
#   run_generator MODULE ARGS...           # one generator process
#   run_chunked MODULE ANSWER_DIR ARGS...  # CHUNKS of them in parallel, then ANSWER_DIR/merge.jsonl
#   reset_score_file; <scorer> --score-file "$SCORE_FILE"; report_score_file
# The script's --help prints its own header (its lines 2 up to the first empty line), then the block above.

EVAL_SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)/$(basename "${BASH_SOURCE[1]}")"
EVAL_COMMON_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

# usage: the benchmark script's header, then the common options and environment.
usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$EVAL_SCRIPT_PATH"
    echo
    sed -n '2,/^$/s/^# \{0,1\}//p' "$EVAL_COMMON_PATH"
}

# from_caller PATH: a relative path given by the caller is taken from the caller's directory when it exists
# there (defaults stay relative to the repository root, as upstream's scripts run from it).
from_caller() {
    case "$1" in
        /*|"") printf '%s' "$1" ;;
        *) if [ -e "$CALLER_PWD/$1" ]; then printf '%s' "$CALLER_PWD/$1"; else printf '%s' "$1"; fi ;;
    esac
}

# eval_setup "$@": parse the script's arguments and the environment (see above) into MODEL_PATH, MODEL_BASE,
# EVAL_DIR, CKPT, DEVICE, CONV_MODE, MAX_NEW_TOKENS, NUM_WORKERS, PYTHON, SCORE_FILE (made absolute when set),
# PRUNED, VTP_METHOD, PRUNING_RATIO, ISOLATOR, GEN_EXTRA, NAME, GPULIST and CHUNKS; cd to the repository root
# and put it on PYTHONPATH. Exits 0 after --help, non-zero on a bad option, argument or value.
eval_setup() {
    CALLER_PWD="$PWD"
    cd "$(dirname "$EVAL_SCRIPT_PATH")/../../.." || exit 1
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

    PRUNED="${PRUNED:-0}"; VTP_METHOD="${VTP_METHOD:-divprune}"; PRUNING_RATIO="${PRUNING_RATIO:-0.9}"
    ISOLATOR="${ISOLATOR:-1}"; CKPT="${CKPT:-}"; GEN_EXTRA=(); local -a positional=()
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
            *) positional+=("$1") ;;
        esac
        shift
    done
    [ "${#positional[@]}" -le 2 ] || { echo "$(basename "$0"): too many arguments (see --help)" >&2; exit 2; }
    [ "${#positional[@]}" -lt 1 ] || MODEL_PATH="${positional[0]}"
    [ "${#positional[@]}" -lt 2 ] || MODEL_BASE="${positional[1]}"
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
}

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

# run_chunked MODULE ANSWER_DIR ARGS...: CHUNKS generator processes in parallel (chunk i on GPU i of
# CUDA_VISIBLE_DEVICES, cycling), each writing ANSWER_DIR/<CHUNKS>_<i>.jsonl. Waits on every chunk; when any
# failed, exits 1 without merging; else concatenates the chunks, in order, into ANSWER_DIR/merge.jsonl.
run_chunked() {
    local module="$1" dir="$2"; shift 2
    mkdir -p "$dir"
    rm -f "$dir/merge.jsonl"
    trap 'kill $(jobs -p) 2>/dev/null; exit 130' INT TERM
    local -a pids=()
    local idx
    for idx in $(seq 0 $((CHUNKS - 1))); do
        (
            if [ "${#GPULIST[@]}" -gt 0 ]; then export CUDA_VISIBLE_DEVICES="${GPULIST[$((idx % ${#GPULIST[@]}))]}"; fi
            run_generator "$module" "$@" --answers-file "$dir/${CHUNKS}_${idx}.jsonl" \
                --num-chunks "$CHUNKS" --chunk-idx "$idx"
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

# reset_score_file: create SCORE_FILE's folder and remove a stale SCORE_FILE before scoring, so that a scorer
# that writes none is noticed by report_score_file.
reset_score_file() {
    mkdir -p "$(dirname "$SCORE_FILE")"
    rm -f "$SCORE_FILE"
}

# report_score_file: fail when the scorer wrote no SCORE_FILE, else print where it is.
report_score_file() {
    [ -f "$SCORE_FILE" ] || { echo "[eval] the scorer wrote no score file $SCORE_FILE" >&2; exit 1; }
    echo "[eval] score: $SCORE_FILE" >&2
}
