"""Extract the multimodal projector weights from a full LLaVA checkpoint into an mm_projector.bin.

Example:
    python scripts/extract_mm_projector.py \
        --model-path ./checkpoints/llava-v1.5-13b --output ./checkpoints/llava-v1.5-13b/mm_projector.bin

Reads safetensors checkpoints (single file or sharded with an index); falls back to pytorch_model*.bin
(loaded with weights_only=True). Keys are kept as they are (e.g. model.mm_projector.0.weight), which is the
layout --pretrain_mm_mlp_adapter expects.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
from typing import Dict, List

import torch

KEYS_TO_MATCH = ("mm_projector",)


def _matches(key: str) -> bool:
    return any(k in key for k in KEYS_TO_MATCH)


def _files_from_index(model_path: str, index_name: str) -> List[str]:
    with open(os.path.join(model_path, index_name)) as f:
        weight_map = json.load(f)["weight_map"]
    return sorted({os.path.join(model_path, fname) for key, fname in weight_map.items() if _matches(key)})


def _load_bin(path: str) -> Dict[str, torch.Tensor]:
    """A pytorch_model*.bin, tensors only: a downloaded checkpoint must not run code when it is read. The
    refusal names the file (torch's own message does not, and suggests weights_only=False)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"Refusing to load {path}: it holds Python objects other than tensors, and "
                                     "unpickling them could run code. Convert the checkpoint to safetensors "
                                     "with a copy of it you trust.") from e


def extract_projector(model_path: str) -> Dict[str, torch.Tensor]:
    weights: Dict[str, torch.Tensor] = {}
    if os.path.isfile(os.path.join(model_path, "model.safetensors.index.json")):
        files = _files_from_index(model_path, "model.safetensors.index.json")
    else:
        files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if files:
        from safetensors import safe_open

        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if _matches(key):
                        weights[key] = f.get_tensor(key)
        return weights

    if os.path.isfile(os.path.join(model_path, "pytorch_model.bin.index.json")):
        files = _files_from_index(model_path, "pytorch_model.bin.index.json")
    else:
        files = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin")))
    for path in files:
        state = _load_bin(path)
        weights.update({k: v for k, v in state.items() if _matches(k)})
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Extract mm_projector weights from a LLaVA checkpoint folder.")
    parser.add_argument("--model-path", type=str, required=True, help="Checkpoint folder (config.json + weights).")
    parser.add_argument("--output", type=str, required=True, help="Output file, e.g. .../mm_projector.bin.")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    weights = extract_projector(args.model_path)
    if not weights:
        raise SystemExit(f"no keys containing {KEYS_TO_MATCH} found in {args.model_path}")
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(weights, args.output)
    print(f"saved {len(weights)} tensors to {args.output}")


if __name__ == "__main__":
    main()
