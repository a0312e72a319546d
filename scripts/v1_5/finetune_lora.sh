#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (r=128, alpha=256) on the LLM; projector trained in full at 2e-5.
#
# Environment variables (defaults in brackets):
#   MODEL_NAME_OR_PATH       [lmsys/vicuna-13b-v1.5]
#   VISION_TOWER             [openai/clip-vit-large-patch14-336]
#   DATA_PATH                [./playground/data/llava_v1_5_mix665k.json]
#   IMAGE_FOLDER             [./playground/data]
#   PRETRAIN_MM_MLP_ADAPTER  [./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin]
#   OUTPUT_DIR               [./checkpoints/llava-v1.5-13b-lora]
#   DEEPSPEED_CONFIG         [./scripts/zero3.json]  set it empty to train without DeepSpeed
#   LAUNCHER                 [deepspeed]  e.g. "deepspeed --num_gpus 2" or "python"
#   TRAIN_ENTRY              [llava/train/train_mem.py]
#   REPORT_TO                [wandb]
# DualSpeed: DUALSPEED=1 or a --dualspeed flag switches it on (scripts/dualspeed/switch.sh).
# Extra arguments are appended last and override the flags below, e.g. `--per_device_train_batch_size 8`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-lmsys/vicuna-13b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-13b-lora}"
DEEPSPEED_CONFIG_SET_BY_USER="${DEEPSPEED_CONFIG+1}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG-./scripts/zero3.json}"
LAUNCHER="${LAUNCHER:-deepspeed}"
TRAIN_ENTRY="${TRAIN_ENTRY:-llava/train/train_mem.py}"
REPORT_TO="${REPORT_TO:-wandb}"

read -r -a LAUNCH_CMD <<< "${LAUNCHER}"

# shellcheck source=../dualspeed/switch.sh
. ./scripts/dualspeed/switch.sh
dualspeed_switch "$@"

"${LAUNCH_CMD[@]}" "${TRAIN_ENTRY}" "${DUALSPEED_ARGS[@]}" \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed "${DEEPSPEED_CONFIG}" \
    --model_name_or_path "${MODEL_NAME_OR_PATH}" \
    --version v1 \
    --data_path "${DATA_PATH}" \
    --image_folder "${IMAGE_FOLDER}" \
    --vision_tower "${VISION_TOWER}" \
    --pretrain_mm_mlp_adapter "${PRETRAIN_MM_MLP_ADAPTER}" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "${OUTPUT_DIR}" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO}" \
    "$@"
