"""CDPruner: instruction-conditioned diversity via a determinantal point process (DPP).

Reference: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs", NeurIPS 2025 (arXiv 2506.10967). Greedy MAP inference after Chen, Zhang and Zhou,
"Fast Greedy MAP Inference for Determinantal Point Process to Improve Recommendation Diversity",
NeurIPS 2018. See spec ``vtp_methods.md`` section 5.

Kernel, per image::

    S_ij = cos(x_i, x_j)                 (fp32, L2-normalised features)
    L_ij = r_i * S_ij * r_j              (r = per-token relevance, >= 0)

Greedy MAP: start with ``d2_i = L_ii = r_i**2`` and repeat k times: pick ``j = argmax d2`` over the
tokens not chosen yet (ties -> lowest index), compute the new incremental-Cholesky row
``e_i = (L_ji - sum_u C_uj C_ui) / sqrt(d2_j)``, store it, and update ``d2_i -= e_i**2``. ``d2_i`` is
the Schur complement ``det L_{S+i} / det L_S``, so each step adds the token that most increases
``log det L_S``. Step 0 therefore picks the most relevant token, and step 1 picks
``argmax_j r_j**2 * (1 - S_{j,s0}**2)``.

Rank deficiency: when k exceeds the numerical rank of L (duplicate tokens, few distinct directions,
zero relevance) the best ``d2`` reaches about 0 and a plain implementation divides by ~0 and
produces NaN or repeated picks. Here a token stays a DPP candidate only while ``d2_i > eps * L_ii``
(more than a fraction ``eps`` of its direction is new; since ``d2_i = r_i**2 * g_i`` with ``g_i`` the
unconditional residual, this does not depend on its relevance). Once an image has no candidate left,
it stops the DPP updates and fills its remaining slots with the unchosen tokens of highest relevance
(ties -> lowest index). Indices are always distinct, and nothing is divided by ~0.

Signals (others are ignored):

* ``relevance`` (B, N): per-token relevance, used as ``r`` directly (should be >= 0; larger = more
  relevant).
* ``text_embeds`` (B, T, D) or (T, D): text-token embeddings in the same space as the features (for
  example the LLM input embeddings of the instruction tokens, when the features are the projected
  visual tokens), with optional ``text_mask`` (B, T) or (T,) marking the valid text tokens. ``r`` is
  computed by :func:`compute_relevance`.
* neither: unconditional DPP, ``r = 1`` for every token (pure diversity on the cosine kernel).

``relevance`` wins when both are given. Options (keyword arguments, not signals): ``relevance_sign``
(for ``text_embeds`` only), ``theta`` (relevance/diversity trade-off, off by default), ``eps``.
"""
from __future__ import annotations

import torch

from . import common
from .common import (check_features, check_token_signal, l2_normalize, row_gather, serial_on_cpu,
                     sort_indices)

__all__ = ["select", "compute_relevance", "greedy_map", "DEFAULT_EPS"]

#: Relative gain threshold: token i is a DPP candidate while ``d2_i > eps * L_ii``.
DEFAULT_EPS = 1e-5


@torch.no_grad()
def compute_relevance(features: torch.Tensor, text_embeds: torch.Tensor,
                      text_mask: torch.Tensor | None = None, sign: float = 1.0) -> torch.Tensor:
    """Per-token relevance of visual tokens to the instruction, (B, N) fp32 in about [0, 1].

    Formula, per image b::

        s_bi = sign * mean_{t valid} cos(x_bi, e_bt)
        r_bi = (s_bi - min_i s_bi + 1e-6) / max(max_i s_bi - min_i s_bi, 1e-6)

    i.e. the mean cosine similarity between token i and the instruction's text tokens, min-max
    normalised over the tokens of *that image* (the reference normalises over the whole batch, which
    couples the samples of a training batch; per image is the documented deviation). The 1e-6 keeps
    the least relevant token slightly above 0, and the clamp avoids 0/0 when all scores are equal
    (then every token gets relevance 1).

    ``sign``: +1 (default) treats similarity to the text as relevance. The CDPruner reference code
    uses -1 in the CLIP joint space (the most text-similar token gets r ~ 0, see its issues #14/#19/
    #22); pass ``sign=-1`` (``relevance_sign=-1`` to :func:`select`) for that behaviour.

    Args:
        features: (B, N, D).
        text_embeds: (B, T, D), or (T, D) shared by all images; same width D as ``features``.
        text_mask: optional (B, T) or (T,) bool/0-1 mask of valid text tokens (padding = 0). An image
            without any valid text token gets constant relevance 1.
        sign: +1 or -1.
    """
    if features.dim() != 3:
        raise ValueError(f"compute_relevance: features must be (B, N, D), got {tuple(features.shape)}")
    return _relevance(l2_normalize(features), text_embeds, text_mask, sign)


def _relevance(unit: torch.Tensor, text_embeds, text_mask, sign) -> torch.Tensor:
    """:func:`compute_relevance` on already L2-normalised fp32 features ``unit`` (B, N, D)."""
    B, N, D = unit.shape
    device = unit.device
    if not isinstance(text_embeds, torch.Tensor):
        raise TypeError("compute_relevance: text_embeds must be a torch.Tensor")
    if text_embeds.dim() == 2:
        text_embeds = text_embeds.unsqueeze(0).expand(B, -1, -1)
    if text_embeds.dim() != 3 or text_embeds.shape[0] != B or text_embeds.shape[2] != D:
        raise ValueError(f"compute_relevance: text_embeds must be (B, T, D) = ({B}, T, {D}) or (T, {D}), "
                         f"got {tuple(text_embeds.shape)}")
    if sign not in (1, -1):
        raise ValueError(f"compute_relevance: sign must be +1 or -1, got {sign!r}")
    T = text_embeds.shape[1]
    if common.CHECK_FINITE and not common.all_finite(text_embeds):
        raise ValueError("compute_relevance: text_embeds contain NaN or Inf values")
    text = l2_normalize(text_embeds.to(device))                     # (B, T, D) fp32
    if text_mask is None:
        weights = torch.full((B, T), 1.0 / max(T, 1), device=device)
    else:
        if not isinstance(text_mask, torch.Tensor):
            text_mask = torch.as_tensor(text_mask)
        if text_mask.dim() == 1:
            text_mask = text_mask.unsqueeze(0).expand(B, -1)
        if tuple(text_mask.shape) != (B, T):
            raise ValueError(f"compute_relevance: text_mask must be (B, T) = ({B}, {T}) or ({T},), "
                             f"got {tuple(text_mask.shape)}")
        weights = (text_mask.to(device) != 0).float()
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    # mean_t cos(x_i, e_t) = <x_hat_i, sum_t w_t e_hat_t>: one (B, N, D) x (B, D) contraction.
    pooled = torch.bmm(weights.unsqueeze(1), text)                   # (B, 1, D)
    scores = torch.bmm(unit, pooled.transpose(1, 2)).squeeze(2)      # (B, N)
    scores = scores * float(sign)
    lo = scores.amin(dim=1, keepdim=True)
    hi = scores.amax(dim=1, keepdim=True)
    return (scores - lo + 1e-6) / (hi - lo).clamp_min(1e-6)


@torch.no_grad()
def greedy_map(kernel: torch.Tensor, k: int, fallback: torch.Tensor | None = None,
               eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Greedy MAP of a batch of DPP kernels, rank-deficiency safe; returns picks in selection order.

    A token is a DPP candidate while its gain is above ``eps`` times its own diagonal,
    ``d2_i > eps * L_ii`` (for ``L = diag(r) S diag(r)`` that is: more than a fraction ``eps`` of its
    direction lies outside the span of the chosen tokens, whatever its relevance). Tokens that fail
    this are numerically in the span, and their gain is rounding noise. When an image has no
    candidate left, its remaining slots are filled from ``fallback``.

    Args:
        kernel: (B, N, N) symmetric PSD kernels (fp32).
        k: picks per kernel, ``1 <= k <= N``.
        fallback: (B, N) order used to fill the slots left once an image has no DPP candidate
            (highest first, ties -> lowest index); default: lowest index first.
        eps: relative gain threshold.

    Returns: (B, k) int64, distinct per row, in the order chosen (not sorted).
    """
    with serial_on_cpu(kernel.device):
        return _greedy_map(kernel, k, fallback, eps)


def _greedy_map(kernel, k, fallback, eps):
    B, N, _ = kernel.shape
    diag = kernel.diagonal(dim1=1, dim2=2)
    gain = diag.clone()                                             # d2, (B, N)
    floor = diag.clamp_min(0.0) * eps                               # (B, N)
    tiny = torch.finfo(torch.float32).tiny
    fill = (torch.zeros(B, N, device=kernel.device) if fallback is None
            else fallback.to(device=kernel.device, dtype=torch.float32).clone())
    chol = kernel.new_zeros(B, k, N)                                # rows of the incremental Cholesky
    active = torch.ones(B, dtype=torch.bool, device=kernel.device)
    neg_inf = float("-inf")
    picks = []
    for t in range(k):
        score = torch.where(gain > floor, gain, neg_inf)            # chosen tokens hold -inf already
        best, j = score.max(dim=1)
        active &= best > neg_inf
        j = torch.where(active, j, fill.argmax(dim=1))
        picks.append(j)
        j_col = j.unsqueeze(1)
        row = row_gather(kernel, j)                                 # L_{j, :}
        if t:
            prev = chol[:, :t]                                      # (B, t, N)
            cj = prev.gather(2, j.view(B, 1, 1).expand(B, t, 1))    # (B, t, 1)
            row = row - torch.bmm(cj.transpose(1, 2), prev).squeeze(1)
        dj = gain.gather(1, j_col).clamp_min_(tiny)
        e = row * (dj.rsqrt() * active.unsqueeze(1))                # 0 once an image has no candidate
        chol[:, t] = e
        gain.sub_(e.square())
        gain.scatter_(1, j_col, neg_inf)
        fill.scatter_(1, j_col, neg_inf)
    return torch.stack(picks, dim=1)


@torch.no_grad()
def select(features: torch.Tensor, k: int, *, relevance: torch.Tensor | None = None,
           text_embeds: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
           relevance_sign: float = 1.0, theta: float | None = None, eps: float = DEFAULT_EPS,
           **signals) -> torch.Tensor:
    """Indices (B, k) chosen by the conditional DPP, sorted ascending.

    Args:
        features: (B, N, D) token features; the similarity kernel is their cosine Gram in fp32.
        k: tokens to keep, ``1 <= k <= N``.
        relevance: optional (B, N) precomputed relevance (>= 0).
        text_embeds, text_mask: optional instruction embeddings (see :func:`compute_relevance`);
            used only when ``relevance`` is None.
        relevance_sign: +1 or -1, passed to :func:`compute_relevance`.
        theta: optional trade-off in (0, 1): ``r`` is replaced by ``exp(alpha * r)`` with
            ``alpha = theta / (2 * (1 - theta))``, which makes ``log det L_S`` equal to
            ``theta / (1 - theta) * sum_S r + log det S_S``. None (default) = ``r`` used linearly,
            as in the reference code.
        eps: relative threshold on the DPP gain (see :func:`greedy_map`); when no token of an image
            passes it, the image fills its remaining slots by descending relevance.
        **signals: ignored.

    With neither ``relevance`` nor ``text_embeds`` this is the unconditional DPP (``r = 1``).
    """
    B, N, _, k = check_features(features, k, "cdpruner")
    device = features.device
    unit, norm = l2_normalize(features, return_norm=True)           # fp32
    if relevance is not None:
        r = check_token_signal(relevance, "relevance", B, N, device, "cdpruner")
        # L_ii = r_i**2 would rank a negative relevance like a positive one: refuse it.
        if common.CHECK_FINITE and bool((r < 0).any()):
            raise ValueError("cdpruner: signal 'relevance' must be >= 0 (larger = more relevant); "
                             "shift or min-max normalise it first")
    elif text_embeds is not None:
        r = _relevance(unit, text_embeds, text_mask, relevance_sign)
    else:
        r = torch.ones(B, N, device=device)
    if theta is not None:
        theta = float(theta)
        if not 0.0 < theta < 1.0:
            raise ValueError(f"cdpruner: theta must be in (0, 1) or None, got {theta}")
        r = torch.exp(r * (theta / (2.0 * (1.0 - theta))))
    nonzero = norm.squeeze(2) >= common.NORM_EPS
    weighted = unit.mul_(r.unsqueeze(2))                            # r_i * x_hat_i
    kernel = torch.bmm(weighted, weighted.transpose(1, 2))          # L = diag(r) S diag(r)
    # S_ii is 1 up to rounding; make it exact so equal relevances tie exactly (-> lowest index).
    kernel.diagonal(dim1=1, dim2=2).copy_(r.square() * nonzero)
    return sort_indices(greedy_map(kernel, k, fallback=r, eps=eps))
