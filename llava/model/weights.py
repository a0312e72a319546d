"""Safe loading of weight files and loading into modules that ZeRO-3 may have partitioned."""
from __future__ import annotations

import os
import pickle
import re

import torch


def load_weights_file(path: str) -> dict:
    """Load a tensor dict from `.safetensors` or a torch `.bin` (weights only: never unpickles objects)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message names no file and suggests weights_only=False, which must not be done here.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        culprit = f"it references {found.group(1)}" if found else str(e).splitlines()[0]
        raise pickle.UnpicklingError(
            f"Refusing to load {path}: it holds a Python object other than tensors ({culprit}), and unpickling "
            "it could run code. Weight files hold only tensors; convert a file you trust to safetensors.") from e


def _is_partitioned(module: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def load_state_dict_maybe_zero_3(module: torch.nn.Module, state_dict: dict, strict: bool = True, source: str = ""):
    """`module.load_state_dict`, gathering ZeRO-3 partitioned parameters first (a plain load into a
    partitioned parameter fails with a size-[0] mismatch: upstream LLaVA issues #736/#1619)."""
    if _is_partitioned(module):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            return _load(module, state_dict, strict, source)
    return _load(module, state_dict, strict, source)


def _load(module, state_dict, strict, source):
    ref = next(module.parameters(), None)
    if ref is not None:
        state_dict = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in state_dict.items()}
    try:
        return module.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f"Could not load weights from {source or 'state dict'} into {type(module).__name__}: {e}") from e
