#!/usr/bin/env bash
# Evaluate trained recipes on the paper's nine benchmarks (scripts/v1_5/eval/<benchmark>.sh), in normal
# inference and in pruned inference (EVAL_VTP, EVAL_P; with the mode isolator when the checkpoint has one,
# and without).
#
# Usage: bash scripts/dualspeed/full_scale/eval.sh [--modes "normal iso noiso"] RECIPE [RECIPE...]
#   DRY_RUN=1 bash scripts/dualspeed/full_scale/eval.sh dualspeed        # print the commands only
#   EVAL_VTP=cdpruner bash scripts/dualspeed/full_scale/eval.sh --modes noiso baseline   # Table 1's column
#
# Score files land where the eval scripts put them, <EVAL_DIR>/<benchmark>/scores/<NAME>.score.json, with
# NAME = <ckpt> (normal) or <ckpt>_pruned-<EVAL_VTP>-r<EVAL_P>[-noiso]; `python -m llava.eval.summarize
# --eval-dir EVAL_DIR --runs LABEL=NAME ...` tabulates them (table.sh does). A benchmark whose score file
# exists is skipped (FORCE=1 reruns it). Runs on the GPUs in CUDA_VISIBLE_DEVICES (chunked benchmarks use
# them all). Environment: see common.sh.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
MODES="normal iso noiso"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/$(basename "$0")"; sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/common.sh"; exit 0 ;;
        --modes) MODES="${2:?--modes needs a value}"; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || die "name at least one recipe (see --help)"

# score_dir BENCH: the folder under EVAL_DIR where scripts/v1_5/eval/BENCH.sh writes its score files.
score_dir() {
    case "$1" in
        mme) echo "$EVAL_DIR/MME/scores" ;;
        sqa) echo "$EVAL_DIR/scienceqa/scores" ;;
        seed) echo "$EVAL_DIR/seed_bench/scores" ;;
        *) echo "$EVAL_DIR/$1/scores" ;;
    esac
}

eval_one() {  # eval_one RECIPE SEED MODE
    local name="$1" seed="$2" mode="$3" lora ckpt label
    recipe "$name"
    lora="$(lora_dir "$name" "$seed")"
    ckpt="$(ckpt_name "$name" "$seed")"
    local -a envs=(MODEL_PATH="$lora" MODEL_BASE="$MODEL_NAME_OR_PATH" CKPT="$ckpt" EVAL_DIR="$EVAL_DIR")
    case "$mode" in
        normal) label="$ckpt" ;;
        iso)
            if [ "$HAS_ISO" != 1 ]; then
                echo "[full_scale] $name: no mode isolator in this recipe, 'iso' skipped" >&2
                return 0
            fi
            envs+=(PRUNED=1 VTP_METHOD="$EVAL_VTP" PRUNING_RATIO="$EVAL_P" ISOLATOR=1)
            label="${ckpt}_pruned-${EVAL_VTP}-r${EVAL_P}" ;;
        noiso)
            envs+=(PRUNED=1 VTP_METHOD="$EVAL_VTP" PRUNING_RATIO="$EVAL_P" ISOLATOR=0)
            label="${ckpt}_pruned-${EVAL_VTP}-r${EVAL_P}-noiso" ;;
        *) die "unknown mode '$mode' (normal iso noiso)" ;;
    esac
    for bench in $BENCHMARKS; do
        [ -f "scripts/v1_5/eval/$bench.sh" ] || die "scripts/v1_5/eval/$bench.sh not found"
        if [ "${FORCE:-0}" != 1 ] && [ -f "$(score_dir "$bench")/$label.score.json" ]; then
            echo "[full_scale] $bench $label: scored, skipped" >&2
            continue
        fi
        run "${envs[@]}" -- bash "scripts/v1_5/eval/$bench.sh"
    done
}

for name in "$@"; do
    for seed in $SEEDS; do
        for mode in $MODES; do
            eval_one "$name" "$seed" "$mode"
        done
    done
done
