#!/usr/bin/env bash
# Train recipes at full scale: LLaVA-1.5-7B projector pretraining on LLaVA-Pretrain-558K, then LoRA SFT on
# llava_v1_5_mix665k, through scripts/v1_5/pretrain.sh and finetune_lora.sh with the deepspeed launcher.
#
# Usage: bash scripts/dualspeed/full_scale/train.sh RECIPE [RECIPE...]      (recipes: see common.sh)
#   DRY_RUN=1 bash scripts/dualspeed/full_scale/train.sh dualspeed            # print the commands only
#
# A pretraining run shared by several recipes is trained once (skipped when its mm_projector.bin exists);
# a LoRA checkpoint is skipped when its adapter exists. Each stage's wall clock and the Trainer's
# train_runtime go to $RESULTS/times/<ckpt>.<stage>.json. Environment: see common.sh.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
[ $# -ge 1 ] || { sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/$(basename "$0")"; exit 2; }
case "$1" in -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/$(basename "$0")"; sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/common.sh"; exit 0 ;; esac

# write_time NAME STAGE OUTPUT_DIR SECONDS: the stage's wall clock + train_runtime from trainer_state.json.
write_time() {
    [ "$DRY_RUN" = 1 ] && return 0
    mkdir -p "$RESULTS/times"
    python - "$RESULTS/times/$1.$2.json" "$3" "$4" <<'EOF'
import json, os, sys
path, out_dir, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
rec = {"output_dir": out_dir, "wall_s": wall}
try:
    with open(os.path.join(out_dir, "trainer_state.json")) as f:
        for e in json.load(f)["log_history"]:
            if "train_runtime" in e:
                rec["train_runtime_s"] = e["train_runtime"]
except (OSError, ValueError, KeyError):
    pass
with open(path, "w") as f:
    json.dump(rec, f, indent=1)
EOF
}

train_one() {
    local name="$1" seed="$2" pre_dir lora t0
    recipe "$name"
    pre_dir="$(pretrain_dir "$name" "$seed")"
    lora="$(lora_dir "$name" "$seed")"
    if [ -f "$pre_dir/mm_projector.bin" ]; then
        echo "[full_scale] $name s$seed: pretraining $pre_dir exists, reused" >&2
    else
        t0=$SECONDS
        # shellcheck disable=SC2086
        run MODEL_NAME_OR_PATH="$MODEL_NAME_OR_PATH" VISION_TOWER="$VISION_TOWER" \
            PRETRAIN_DATA_PATH="$PRETRAIN_DATA_PATH" PRETRAIN_IMAGE_FOLDER="$PRETRAIN_IMAGE_FOLDER" \
            OUTPUT_DIR="$pre_dir" LAUNCHER="$LAUNCHER" DEEPSPEED_CONFIG="$PRETRAIN_DEEPSPEED" REPORT_TO="${REPORT_TO:-none}" \
            DUALSPEED="$PRE_DS" -- bash scripts/v1_5/pretrain.sh --seed "$seed" ${PRE_FLAGS[@]+"${PRE_FLAGS[@]}"} $PRETRAIN_ARGS
        write_time "pretrain-${PRE_TAG}-s$seed" pretrain "$pre_dir" "$((SECONDS - t0))"
    fi
    if [ -f "$lora/adapter_model.safetensors" ] || [ -f "$lora/adapter_model.bin" ]; then
        echo "[full_scale] $name s$seed: $lora exists, skipped" >&2
    else
        t0=$SECONDS
        # shellcheck disable=SC2086
        run MODEL_NAME_OR_PATH="$MODEL_NAME_OR_PATH" VISION_TOWER="$VISION_TOWER" DATA_PATH="$DATA_PATH" \
            IMAGE_FOLDER="$IMAGE_FOLDER" PRETRAIN_MM_MLP_ADAPTER="$pre_dir/mm_projector.bin" OUTPUT_DIR="$lora" \
            LAUNCHER="$LAUNCHER" DEEPSPEED_CONFIG="$SFT_DEEPSPEED" REPORT_TO="${REPORT_TO:-none}" DUALSPEED="$SFT_DS" \
            -- bash scripts/v1_5/finetune_lora.sh --seed "$seed" ${SFT_FLAGS[@]+"${SFT_FLAGS[@]}"} $SFT_ARGS
        write_time "$(ckpt_name "$name" "$seed")" sft "$lora" "$((SECONDS - t0))"
    fi
    # the recipe's pretraining time, also under the recipe's own name (shared runs are counted per recipe)
    if [ "$DRY_RUN" != 1 ] && [ -f "$RESULTS/times/pretrain-${PRE_TAG}-s$seed.pretrain.json" ]; then
        cp "$RESULTS/times/pretrain-${PRE_TAG}-s$seed.pretrain.json" "$RESULTS/times/$(ckpt_name "$name" "$seed").pretrain.json"
    fi
}

for name in "$@"; do
    for seed in $SEEDS; do
        train_one "$name" "$seed"
    done
done
