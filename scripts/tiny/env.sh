# Source this file to point the training/eval scripts at the tiny offline assets:
#
#     python scripts/build_tiny_assets.py        # builds ./playground/tiny (instant if already built)
#     source scripts/tiny/env.sh                 # or: TINY_ROOT=/some/dir source scripts/tiny/env.sh
#
# The scripts read these variables in place of the hub names / playground/data paths.

export TINY_ROOT="${TINY_ROOT:-./playground/tiny}"

export MODEL_NAME_OR_PATH="${TINY_ROOT}/models/vicuna-tiny"
export VISION_TOWER="${TINY_ROOT}/models/clip-vit-tiny-patch14-336"
export PRETRAIN_DATA_PATH="${TINY_ROOT}/data/LLaVA-Pretrain/blip_laion_cc_sbu_tiny.json"
export PRETRAIN_IMAGE_FOLDER="${TINY_ROOT}/data/LLaVA-Pretrain/images"
export DATA_PATH="${TINY_ROOT}/data/llava_v1_5_mix_tiny.json"
export IMAGE_FOLDER="${TINY_ROOT}/data"

# Everything is local: never try the hub.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
