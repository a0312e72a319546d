"""DUET-VLM stage A (V2V merge): keep the dominant visual tokens, merge part of the rest into a few contextual
tokens, drop the remainder. Spec: ``regate_duet.md`` section 2.2 (stage A).

On the selected CLIP layer (the one whose output LLaVA reads, ``mm_vision_select_layer``), per image of
``N`` patches and a budget ``k = k1 + k2``:

1. score each patch by the [CLS] attention of that layer (heads averaged: the ranking is the heads' sum's);
2. dominant: the [CLS] token plus the ``k1 - 1`` best patches (``k1`` counts the CLS token);
3. of the remaining patches, pre-select the ``min(w * k2, |R|)`` best in descending score, take every
   ``|P| // k2``-th of them as anchors (the best peripheral tokens) and the others as members;
4. assign each member to the anchor whose head-mean key (L2-normalised) is most similar; a contextual token is
   ``H_anchor + mean(H_members)`` (the anchor alone when none joined it); the rest of the patches are dropped;
5. the output, in CLIP space, is ``[CLS, dominant patches in raster order, contextual tokens]``, which goes
   through the projector here (with its gradient), so the merge happens where DUET merges: before the projector.

The budget ``k`` comes from ``--pruning_ratio`` like every other plug-in, or from the counts ``dominant`` +
``contextual`` (``--duet_dominant``, ``--duet_contextual``). ``k2`` is DUET's 7 of 307 share of ``k`` (rounded; 7
at k = 307, 1 at k = 57) unless ``contextual`` is given; ``cluster_width`` ``w`` is 4 (``--duet_cluster_width``).

Signals: ``vision_layer`` (the selected layer's [CLS] attention, head-mean keys and output hidden states,
captured by hooks on that layer during the fork's own vision pass: the tower keeps its SDPA/flash kernels) and
``projector`` (the fork's ``mm_projector``). The post-projector ``features`` are used for their shape only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import MissingSignalError, check_features

__all__ = ["merge", "budget", "split_budget", "VisionLayer", "SIGNALS", "OPTIONS", "CONTEXTUAL_SHARE",
           "CLUSTER_WIDTH"]

SIGNALS = ("vision_layer", "projector")
OPTIONS = ("dominant", "contextual", "cluster_width")  # --duet_dominant, --duet_contextual, --duet_cluster_width
CONTEXTUAL_SHARE = 7 / 307  # DUET-LLaVA's default 300 dominant (CLS included) + 7 contextual
CLUSTER_WIDTH = 4


@dataclass
class VisionLayer:
    """The selected CLIP layer, per image span: what stage A reads."""
    cls_attention: torch.Tensor  # (B, N) CLS -> patch attention, heads averaged
    keys: torch.Tensor           # (B, N, dh) patch keys, heads averaged
    hidden: torch.Tensor         # (B, 1 + N, Dv) the layer's output, CLS first (what the projector reads)


def budget(n: int, pruning_ratio: float, dominant: int | None = None, contextual: int | None = None,
           **_) -> int:
    """Tokens kept of a span of n: from the ratio like every plug-in, or the counts dominant + contextual
    (contextual: DUET's share of the dominant count when not given)."""
    if dominant is None:
        from . import budget as ratio_budget

        return ratio_budget(n, pruning_ratio)
    k = dominant + (round(dominant * CONTEXTUAL_SHARE / (1 - CONTEXTUAL_SHARE)) if contextual is None
                    else contextual)
    if k > n:
        raise ValueError(f"duet: a budget of {dominant} dominant + {k - dominant} contextual tokens is larger than "
                         f"this image span of {n} tokens")
    return k


def split_budget(k: int, contextual: int | None = None, dominant: int | None = None) -> tuple[int, int]:
    """(k1 dominant including CLS, k2 contextual) for a budget of k tokens."""
    if k < 1:
        raise ValueError(f"duet: the budget must keep at least the CLS token, got k={k}")
    if dominant is not None:
        k2 = k - dominant
    else:
        k2 = round(k * CONTEXTUAL_SHARE) if contextual is None else int(contextual)
    if not 0 <= k2 < k:
        raise ValueError(f"duet: {k2} contextual tokens do not fit a budget of {k} (the CLS token is always kept)")
    return k - k2, k2


def _check(features, k, vision_layer, projector):
    B, N, _, k = check_features(features, k, "duet")
    if vision_layer is None or projector is None:
        raise MissingSignalError("duet needs the signals 'vision_layer' (the selected CLIP layer's CLS attention, "
                                 "keys and output) and 'projector' (mm_projector); run it through the merge "
                                 "wrapper, which computes them from hooks on the vision tower")
    v = vision_layer
    if (tuple(v.cls_attention.shape) != (B, N) or v.keys.shape[:2] != (B, N) or v.hidden.shape[:2] != (B, N + 1)):
        raise ValueError(f"duet: vision_layer shapes cls_attention {tuple(v.cls_attention.shape)}, keys "
                         f"{tuple(v.keys.shape)}, hidden {tuple(v.hidden.shape)} do not match {B} spans of {N} "
                         "patches (+ CLS)")
    return B, N, k


def merge(features: torch.Tensor, k: int, *, vision_layer: VisionLayer | None = None, projector=None,
          dominant: int | None = None, contextual: int | None = None, cluster_width: int = CLUSTER_WIDTH,
          **signals) -> torch.Tensor:
    """(B, k, D) tokens: ``projector([CLS, dominant in raster order, contextual])`` (see the module docstring)."""
    B, N, k = _check(features, k, vision_layer, projector)
    if cluster_width < 1:
        raise ValueError(f"duet: cluster_width must be >= 1, got {cluster_width}")
    k1, k2 = split_budget(k, contextual, dominant)
    hidden = vision_layer.hidden
    with torch.no_grad():
        # Stable descending order: ties go to the lower index, so reruns keep the same tokens.
        order = torch.sort(vision_layer.cls_attention.float(), dim=1, descending=True, stable=True).indices
        dominant = order[:, :k1 - 1].sort(dim=1).values + 1  # hidden rows (row 0 is CLS)
    cls = torch.zeros((B, 1), dtype=torch.long, device=hidden.device)
    keep = torch.cat([cls, dominant.to(hidden.device)], dim=1)
    tokens = hidden.gather(1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    if k2:
        tokens = torch.cat([tokens, _contextual(hidden, vision_layer.keys, order[:, k1 - 1:], k2, cluster_width)],
                           dim=1)
    out = projector(tokens.to(_dtype_of(projector, hidden)))
    if tuple(out.shape) != (B, k, features.shape[-1]):
        raise ValueError(f"duet: the projector turned {tuple(tokens.shape)} into {tuple(out.shape)}, not "
                         f"{(B, k, features.shape[-1])} (a projector that changes the token count cannot be used)")
    return out


def _contextual(hidden, keys, remaining, k2, width):
    """(B, k2, Dv): anchor + mean of the members assigned to it, by cosine similarity of head-mean keys."""
    pool = min(width * k2, remaining.shape[1])
    step = pool // k2  # >= 1: the budget never exceeds N, so at least k2 + 1 patches remain
    with torch.no_grad():
        chosen = remaining[:, :pool]
        is_anchor = torch.zeros(pool, dtype=torch.bool, device=chosen.device)
        is_anchor[torch.arange(k2, device=chosen.device) * step] = True
        anchors, members = chosen[:, is_anchor], chosen[:, ~is_anchor]                 # (B, k2), (B, M)
        unit = F.normalize(keys.float(), dim=-1)
        take = lambda idx: unit.gather(1, idx.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # noqa: E731
        similarity = take(members) @ take(anchors).transpose(1, 2)                     # (B, M, k2)
        assign = F.one_hot(similarity.argmax(-1), k2).to(hidden.dtype)                 # (B, M, k2)
    rows = lambda idx: hidden.gather(1, (idx + 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # noqa: E731
    member_sum = assign.transpose(1, 2) @ rows(members)                                # (B, k2, Dv)
    count = assign.sum(1).clamp(min=1).unsqueeze(-1)
    return rows(anchors) + member_sum / count


def _dtype_of(module, fallback):
    param = next(iter(module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    return param.dtype if param is not None else fallback.dtype
