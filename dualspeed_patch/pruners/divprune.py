"""DivPrune: keep a maximally diverse subset of visual tokens (greedy max-min diversity).

Reference: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
Models", CVPR 2025 (arXiv 2503.02175); DualSpeed applies it to the ``mm_projector`` output.

Algorithm (the masked running-min form, spec ``vtp_methods.md`` section 4.2), per image:

* cosine distance ``d_ij = 1 - cos(x_i, x_j)`` on the L2-normalised features, in fp32;
* step 0 picks the most isolated token, ``argmax_i min_{j != i} d_ij`` (the diagonal is set to
  +inf so a token is never its own nearest neighbour);
* every later step picks ``argmax_i m_i`` over the tokens not chosen yet, where ``m_i`` is the
  distance from token i to its nearest chosen token, and then lowers ``m`` to
  ``min(m, d[chosen, :])``;
* ties go to the lowest index (``argmax`` returns the first maximum).

Implementation notes. The greedy runs on cosine *similarity* ``c = 1 - d`` (max-min distance is
min-max similarity), which saves two passes over the (B, N, N) matrix and avoids the rounding of
``1 - c``; argmax/argmin both return the first extremum, so ties still go to the lowest index.
Chosen tokens are excluded by a +inf entry in the running max-similarity vector. That needs no extra
kernel: after step 0 the diagonal of ``c`` is overwritten with +inf, so taking the maximum with the
chosen token's own row also writes +inf at the chosen position. Exact duplicate tokens are thus never
returned twice (the original DivPrune code, which relies on a zero self-distance, can do that).

Batching: one ``bmm`` builds all B Gram matrices; the k-1 greedy steps run on (B, N) tensors with
three kernels per step (argmin, row gather, in-place maximum). No per-image Python loop.

Signals: none. Unknown signals are ignored.
"""
from __future__ import annotations

import torch

from .common import check_features, cosine_gram, row_gather, serial_on_cpu, sort_indices

__all__ = ["select", "greedy_max_min"]


@torch.no_grad()
def select(features: torch.Tensor, k: int, **signals) -> torch.Tensor:
    """Indices (B, k) of the k most diverse tokens per image, sorted ascending.

    Args:
        features: (B, N, D) token features (any floating dtype; similarities are computed in fp32).
        k: tokens to keep, ``1 <= k <= N``.
        **signals: ignored (DivPrune needs none).
    """
    _, _, _, k = check_features(features, k, "divprune")
    return sort_indices(greedy_max_min(cosine_gram(features), k))


@torch.no_grad()
def greedy_max_min(sim: torch.Tensor, k: int) -> torch.Tensor:
    """The greedy on a batch of cosine-similarity matrices; picks (B, k) in selection order.

    ``sim`` (B, N, N) fp32 is used as scratch: its diagonal is overwritten (with +inf).
    """
    diag = sim.diagonal(dim1=1, dim2=2)
    diag.fill_(float("-inf"))
    nearest = sim.amax(dim=2)                             # max_{j != i} c_ij = 1 - nearest distance
    diag.fill_(float("inf"))                              # from now on: marks chosen tokens
    with serial_on_cpu(sim.device):
        j = nearest.argmin(dim=1)                         # the most isolated token, (B,)
        picks = [j]
        closest = row_gather(sim, j)                      # new (B, N) tensor; +inf at j
        for _ in range(k - 1):
            j = closest.argmin(dim=1)                     # farthest from the chosen set
            picks.append(j)
            torch.maximum(closest, row_gather(sim, j), out=closest)
        return torch.stack(picks, dim=1)
