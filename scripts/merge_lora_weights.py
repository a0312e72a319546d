"""Merge a LLaVA LoRA checkpoint into its base model and save a standalone LLaVA checkpoint.

Example:
    python scripts/merge_lora_weights.py \
        --model-path ./checkpoints/llava-v1.5-13b-lora \
        --model-base lmsys/vicuna-13b-v1.5 \
        --save-model-path ./checkpoints/llava-v1.5-13b-merged

The LoRA folder must hold adapter_config.json / adapter_model.safetensors, config.json and
non_lora_trainables.bin (the projector); intermediate checkpoint-N folders written by LLaVATrainer have them
too. Loading and merging go through llava.model.builder.load_pretrained_model; without --model-base the base
recorded in the adapter's adapter_config.json is used when that folder exists.

DualSpeed's files beside the adapter (mode_isolator.bin, dualspeed_config.json) are copied into the merged
folder, so pruned inference with the isolator (`python -m dualspeed_patch.run --pruned ...`) finds them there.
"""
from __future__ import annotations

import argparse
import os
import shutil

# Files a DualSpeed run writes beside the adapter that the merged model still needs: the isolator is
# loaded from <model-path>/mode_isolator.bin by pruned inference; the config records how it was trained.
CARRIED_FILES = ("mode_isolator.bin", "dualspeed_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Merge LLaVA LoRA weights into the base LLM and save the result.")
    parser.add_argument("--model-path", type=str, required=True,
                        help="LoRA checkpoint folder (output_dir of finetune_lora.sh or a checkpoint-N folder).")
    parser.add_argument("--model-base", type=str, default=None,
                        help="Base LLM the LoRA run started from, e.g. lmsys/vicuna-13b-v1.5 (default: the "
                             "base_model_name_or_path of adapter_config.json, when that folder exists).")
    parser.add_argument("--save-model-path", type=str, required=True,
                        help="Where to write the merged model and tokenizer.")
    return parser


def merge_lora(args: argparse.Namespace) -> None:
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    if not os.path.isfile(os.path.join(args.model_path, "adapter_config.json")):
        raise SystemExit(f"{args.model_path} has no adapter_config.json: not a LoRA checkpoint")
    model_name = get_model_name_from_path(args.model_path)

    tokenizer, model, _image_processor, _context_len = load_pretrained_model(
        args.model_path, args.model_base, model_name, device_map="cpu")
    os.makedirs(args.save_model_path, exist_ok=True)
    model.save_pretrained(args.save_model_path)
    tokenizer.save_pretrained(args.save_model_path)
    print(f"merged model saved to {args.save_model_path}")
    for name in copy_carried_files(args.model_path, args.save_model_path):
        print(f"copied {name} from {args.model_path} to {args.save_model_path}")


def copy_carried_files(src: str, dst: str) -> list:
    """Copy the CARRIED_FILES present in `src` into `dst`; returns the names copied."""
    copied = []
    for name in CARRIED_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def main(argv=None) -> None:
    merge_lora(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
