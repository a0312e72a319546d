"""The mode isolator: `l` learnable vectors of the LLM width put in front of every pruned image span, so the
model can tell a pruned (fast) sequence from a full (slow / inference) one.

Stored as `mode_isolator.bin` = {"weight": [l, hidden]} (the reference's layout), next to mm_projector.bin.
It lives at `model.get_model().mode_isolator`, beside `mm_projector`, and is read by calling the module, so
ZeRO-3 gathers its partitioned parameter like any other."""
from __future__ import annotations

import logging
import math
import os
import pickle
import re

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)
FILENAME = "mode_isolator.bin"


class ModeIsolator(nn.Module):
    def __init__(self, length: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(length, hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # the scale of the reference's nn.Linear(hidden, l) weight
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self):
        return self.weight


def unwrap(model):
    """The LLaVA model under DeepSpeed/DDP wrappers (PEFT forwards attribute access by itself)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _inner(model):
    """The LlavaMetaModel (which owns mm_projector) of a causal LM, or the model itself if it is one."""
    model = unwrap(model)
    return model.get_model() if hasattr(model, "get_model") else model


def get(model):
    return getattr(_inner(model), "mode_isolator", None)


def _is_partitioned(module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def attach(model, length: int) -> ModeIsolator:
    """Create the isolator on the model (idempotent), on the embeddings' device and dtype, trainable."""
    inner = _inner(model)
    iso = getattr(inner, "mode_isolator", None)
    hidden = inner.config.hidden_size
    if iso is not None:
        if tuple(iso.weight.shape) != (length, hidden) and not _is_partitioned(iso):
            raise ValueError(f"the model already has a mode isolator of shape {tuple(iso.weight.shape)}, "
                             f"not ({length}, {hidden})")
    else:
        ref = inner.get_input_embeddings().weight
        iso = ModeIsolator(length, hidden).to(device=ref.device, dtype=ref.dtype)
        inner.mode_isolator = iso
    iso.weight.requires_grad_(True)
    return iso


def load(model, path: str, strict_shape: bool = True) -> bool:
    """Load `path` (a mode_isolator.bin) into the model's isolator, creating it if needed. False if absent."""
    if not os.path.isfile(path):
        return False
    state = read_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("weight"), torch.Tensor):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a mode isolator file (a {{'weight': tensor}} dict; found {found})")
    weight = state["weight"]
    iso = attach(model, weight.shape[0])
    if _is_partitioned(iso):
        import deepspeed

        with deepspeed.zero.GatheredParameters([iso.weight], modifier_rank=0):
            iso.weight.data.copy_(weight.to(iso.weight.dtype))
    else:
        if strict_shape and iso.weight.shape != weight.shape:
            raise ValueError(f"{path}: isolator shape {tuple(weight.shape)} != model's {tuple(iso.weight.shape)}")
        with torch.no_grad():
            iso.weight.copy_(weight.to(device=iso.weight.device, dtype=iso.weight.dtype))
    logger.info("Loaded mode isolator %s from %s", tuple(weight.shape), path)
    return True


def read_file(path: str):
    """torch.load restricted to tensors and plain containers: a checkpoint folder may come from elsewhere, and
    unpickling arbitrary objects would run whatever code the file names. The refusal names the file (torch's
    own message does not, and suggests weights_only=False, which is exactly what must not be done here)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"Refusing to load {path}: it holds a Python object other than tensors "
                                     f"({unpickling_culprit(e)}), and unpickling it could run code. A "
                                     f"{FILENAME} holds only {{'weight': tensor}}.") from e


def unpickling_culprit(error: Exception) -> str:
    """The global torch's weights-only unpickler refused, e.g. 'builtins.exec', from its long message."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f"it references {found.group(1)}" if found else str(error).splitlines()[0]


def state_dict(model) -> dict:
    """{"weight": cpu tensor}, gathered when ZeRO-3 partitions it (collective: call on every rank)."""
    iso = get(model)
    if iso is None:
        return {}
    if _is_partitioned(iso):
        import deepspeed

        with deepspeed.zero.GatheredParameters([iso.weight]):
            return {"weight": iso.weight.detach().cpu().clone()}
    return {"weight": iso.weight.detach().cpu().clone()}


def save(model, output_dir: str, is_main_process: bool = True) -> str | None:
    state = state_dict(model)  # every rank takes part in the gather
    if not state or not is_main_process:
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILENAME)
    torch.save(state, path)
    return path


def sibling_path(projector_path: str) -> str:
    """`.../llava-pretrain/mm_projector.bin` -> `.../llava-pretrain/mode_isolator.bin` (only the file name
    changes: the reference's str.replace rewrote every 'mm_projector' in the path)."""
    return os.path.join(os.path.dirname(projector_path), FILENAME)
