"""Uniform baseline: evenly spaced tokens in raster order (centred strides).

``idx_i = floor((2i + 1) * N / (2k))`` for ``i = 0 .. k-1``: strictly increasing and distinct for
``k <= N``, the same for every image. Examples: N=10, k=3 -> [1, 5, 8]; N=576, k=4 ->
[72, 216, 360, 504]. See spec ``vtp_methods.md`` section 3a. Signals: none (ignored).
"""
from __future__ import annotations

import torch

from .common import check_features

__all__ = ["select", "positions"]


def positions(num_tokens: int, k: int, device=None) -> torch.Tensor:
    """The k centred-stride positions in ``[0, num_tokens)``, (k,) int64 (exact integer arithmetic)."""
    i = torch.arange(k, dtype=torch.long, device=device)
    return torch.div((2 * i + 1) * num_tokens, 2 * k, rounding_mode="floor")


@torch.no_grad()
def select(features: torch.Tensor, k: int, **signals) -> torch.Tensor:
    """Indices (B, k), the same centred strides for every image (already ascending)."""
    B, N, _, k = check_features(features, k, "uniform")
    return positions(N, k, features.device).unsqueeze(0).expand(B, k).contiguous()
