#!/usr/bin/env python
"""Build the tiny offline assets: synthetic LLaVA data, a Vicuna-layout tokenizer + tiny Llama, a tiny CLIP tower.

Nothing is downloaded. Everything is derived from `--seed`, so two builds with the same arguments are
byte-identical. A marker file records a finished build; rerunning with the same arguments is instant
unless `--force` is given.

    python -m dualspeed_lab.tiny.build                  # -> ./playground/tiny (= python scripts/build_tiny_assets.py)
    source scripts/tiny/env.sh                          # exports MODEL_NAME_OR_PATH, VISION_TOWER, ...

From Python: `build_all(out_root, seed=0, num_pretrain=64, num_finetune=64)` builds (or reuses) them and returns
their paths; `asset_paths(out_root)` gives the same paths without building anything.

Layout under --out (default ./playground/tiny):

    models/vicuna-tiny/                      LlamaForCausalLM (fp32) + tokenizer   (--model_name_or_path)
    models/clip-vit-tiny-patch14-336/        CLIPVisionModel + preprocessor_config.json   (--vision_tower)
    data/LLaVA-Pretrain/blip_laion_cc_sbu_tiny.json, data/LLaVA-Pretrain/images/   (pretrain)
    data/llava_v1_5_mix_tiny.json, data/{coco,gqa,vg}/...                          (finetune, --image_folder data)
    .tiny_assets_complete.json               marker: the arguments of the finished build
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

MARKER = ".tiny_assets_complete.json"
FORMAT_VERSION = 1
MODEL_DIR = os.path.join("models", "vicuna-tiny")
VISION_DIR = os.path.join("models", "clip-vit-tiny-patch14-336")
DATA_DIR = "data"


def asset_paths(out_root: str) -> dict:
    """The paths `build_all` fills in, without building anything."""
    from dualspeed_lab.tiny.data import FINETUNE_JSON, PRETRAIN_IMAGES, PRETRAIN_JSON

    root = os.path.abspath(out_root)
    data = os.path.join(root, DATA_DIR)
    return {
        "root": root,
        "model": os.path.join(root, MODEL_DIR),
        "vision_tower": os.path.join(root, VISION_DIR),
        "pretrain_data": os.path.join(data, PRETRAIN_JSON),
        "pretrain_images": os.path.join(data, PRETRAIN_IMAGES),
        "finetune_data": os.path.join(data, FINETUNE_JSON),
        "image_folder": data,
    }


def _build_args(seed: int, num_pretrain: int, num_finetune: int) -> dict:
    return {"format_version": FORMAT_VERSION, "seed": seed, "num_pretrain": num_pretrain, "num_finetune": num_finetune}


def is_complete(out_root: str, seed: int = 0, num_pretrain: int = 64, num_finetune: int = 64) -> bool:
    """True when a finished build with exactly these arguments exists under `out_root`."""
    path = os.path.join(out_root, MARKER)
    try:
        with open(path) as f:
            return json.load(f) == _build_args(seed, num_pretrain, num_finetune)
    except (OSError, ValueError):
        return False


def build_all(out_root: str, seed: int = 0, num_pretrain: int = 64, num_finetune: int = 64,
              force: bool = False, verbose: bool = False) -> dict:
    """Build (or reuse) every tiny asset under `out_root`; return the dict of paths.

    Keys: root, model, vision_tower, pretrain_data, pretrain_images, finetune_data, image_folder.
    Files are overwritten in place, never deleted, so a stale build may leave extra unreferenced images.
    """
    paths = asset_paths(out_root)
    if not force and is_complete(paths["root"], seed, num_pretrain, num_finetune):
        if verbose:
            print(f"tiny assets already built in {paths['root']} (use --force to rebuild)")
        return paths

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from dualspeed_lab.tiny.data import build_data
    from dualspeed_lab.tiny.llm import build_llm
    from dualspeed_lab.tiny.tokenizer import train_tokenizer
    from dualspeed_lab.tiny.vision import build_vision_tower

    marker = os.path.join(paths["root"], MARKER)
    os.makedirs(paths["root"], exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)

    def step(name, fn, *args, **kwargs):
        t0 = time.time()
        out = fn(*args, **kwargs)
        if verbose:
            print(f"  {name:<14s} {time.time() - t0:5.1f}s")
        return out

    data = step("data", build_data, paths["image_folder"], seed=seed, num_pretrain=num_pretrain,
                num_finetune=num_finetune)
    step("tokenizer", train_tokenizer, paths["model"], data["texts"])
    step("llm", build_llm, paths["model"], paths["model"], seed=seed)
    step("vision tower", build_vision_tower, paths["vision_tower"], seed=seed)

    with open(marker + ".tmp", "w") as f:
        json.dump(_build_args(seed, num_pretrain, num_finetune), f, indent=2)
    os.replace(marker + ".tmp", marker)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Build tiny offline LLaVA assets (synthetic data, tiny Vicuna-layout LLM + tokenizer, "
                    "tiny CLIP vision tower). No downloads.")
    parser.add_argument("--out", default="./playground/tiny", help="output root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and weights (default: %(default)s)")
    parser.add_argument("--num-pretrain", type=int, default=64, help="caption samples (default: %(default)s)")
    parser.add_argument("--num-finetune", type=int, default=64,
                        help="finetune samples, about 1/8 of them text-only (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    args = parser.parse_args(argv)
    if args.num_pretrain < 1 or args.num_finetune < 1:
        parser.error("--num-pretrain and --num-finetune must be >= 1")

    t0 = time.time()
    paths = build_all(args.out, seed=args.seed, num_pretrain=args.num_pretrain,
                      num_finetune=args.num_finetune, force=args.force, verbose=True)
    print(f"tiny assets ready in {time.time() - t0:.1f}s")
    for key in ("root", "model", "vision_tower", "pretrain_data", "pretrain_images", "finetune_data",
                "image_folder"):
        print(f"  {key:<16s} {paths[key]}")
    print("Point the training scripts at them with:  source scripts/tiny/env.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
