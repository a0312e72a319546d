"""Choose the attention kernel: flash-attn when it imports, else PyTorch SDPA."""
from __future__ import annotations

import importlib.util
import logging

import torch

logger = logging.getLogger(__name__)

VALID = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def flash_attn_available() -> bool:
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("flash_attn")  # an ABI mismatch shows up only at import
    except Exception as e:  # pragma: no cover - depends on the installed wheel
        logger.warning("flash_attn is installed but does not import (%s); using sdpa.", e)
        return False
    return True


def pick_attn_implementation(requested: str | None = None) -> str:
    """`requested` wins when given (validated); 'flash_attention_2' falls back to sdpa when unusable."""
    if requested is not None and requested not in VALID:
        raise ValueError(f"Unknown attn_implementation {requested!r}; choose one of {VALID}")
    if requested in (None, "flash_attention_2"):
        if flash_attn_available():
            return "flash_attention_2"
        if requested == "flash_attention_2" and torch.cuda.is_available():
            logger.warning("flash_attention_2 requested but flash-attn is not usable here; falling back to sdpa.")
        return "sdpa"
    return requested
