#!/usr/bin/env bash
# The tiny offline pipeline, end to end on CPU in a few minutes:
#   set up .venv -> build tiny assets -> pretrain + LoRA SFT (baseline and DualSpeed) with the upstream
#   scripts -> answer a question with full and with pruned inference.
# Outputs land in ./checkpoints/tiny-*. Set REUSE=1 to keep existing checkpoints.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"

python scripts/build_tiny_assets.py
# shellcheck disable=SC1091
source scripts/tiny/env.sh
export LAUNCHER=python DEEPSPEED_CONFIG="" REPORT_TO=none
COMMON=(--bf16 False --dataloader_num_workers 0 --per_device_train_batch_size 8 --model_max_length 1024
        --logging_steps 2 --save_strategy no)

run() {  # run NAME SCRIPT [VAR=VALUE...]   (extra training flags in EXTRA_FLAGS)
    local name=$1 script=$2; shift 2
    local out="./checkpoints/tiny-$name"
    if [ "${REUSE:-0}" = 1 ] && [ -f "$out/config.json" ]; then echo "== $name: reusing $out"; return; fi
    echo "== $name ($script)"
    env OUTPUT_DIR="$out" "$@" bash "scripts/v1_5/$script" "${COMMON[@]}" ${EXTRA_FLAGS:-}
}

run pretrain pretrain.sh
EXTRA_FLAGS="--num_train_epochs 2" run lora finetune_lora.sh PRETRAIN_MM_MLP_ADAPTER=./checkpoints/tiny-pretrain/mm_projector.bin
run pretrain-dualspeed pretrain.sh DUALSPEED=1
EXTRA_FLAGS="--num_train_epochs 2 --slow_mode_ratio 0.25" run lora-dualspeed finetune_lora.sh DUALSPEED=1 \
    PRETRAIN_MM_MLP_ADAPTER=./checkpoints/tiny-pretrain-dualspeed/mm_projector.bin

IMAGE=$(python - <<'PY'
import json, os
root = os.environ["IMAGE_FOLDER"]
rec = next(r for r in json.load(open(os.environ["DATA_PATH"])) if "image" in r)
print(os.path.join(root, rec["image"]))
PY
)
ASK=(--image-file "$IMAGE" --query "What color is the shape?" --temperature 0 --max_new_tokens 8 --device cpu
     --conv-mode vicuna_v1 --model-base "$MODEL_NAME_OR_PATH")
echo "== baseline LoRA, full inference:";  python -m llava.eval.run_llava --model-path ./checkpoints/tiny-lora "${ASK[@]}"
echo "== DualSpeed LoRA, full inference:"; python -m llava.eval.run_llava --model-path ./checkpoints/tiny-lora-dualspeed "${ASK[@]}"
echo "== DualSpeed LoRA, pruned inference (divprune, p=0.9, isolator):"
python -m dualspeed_patch.run --pruned llava.eval.run_llava --model-path ./checkpoints/tiny-lora-dualspeed "${ASK[@]}"
echo "Done. Checkpoints: ./checkpoints/tiny-{pretrain,lora,pretrain-dualspeed,lora-dualspeed}"
