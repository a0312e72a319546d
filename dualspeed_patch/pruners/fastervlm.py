"""FasterVLM: keep the visual tokens the vision tower's [CLS] token attends to most.

Reference: Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning"
(arXiv 2412.01818). See spec ``vtp_methods.md`` section 6.

Score of patch token i: the post-softmax attention of the CLS query on patch key i in the vision
layer LLaVA reads its features from (``mm_vision_select_layer``, usually -2), averaged over heads.
The kept tokens are the k highest scores (ties -> lowest index, deterministic), returned sorted.

Signals:

* ``cls_attention`` (B, N), required. It can be taken from ``output_attentions=True`` (row 0,
  columns 1:, mean over heads), but that forces eager attention for the whole tower and stores every
  layer's map. :func:`clip_cls_attention` recomputes the same row from the *input* hidden states of
  the one layer, which costs O(N) per image and lets the tower keep SDPA/flash attention.

Other signals are ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import (MissingSignalError, check_features, check_token_signal, serial_on_cpu,
                     sort_indices)

__all__ = ["select", "clip_cls_attention"]

_HOW = ("pass cls_attention=(B, N) CLS->patch attention of the selected vision layer, e.g. "
        "dualspeed_patch.pruners.fastervlm.clip_cls_attention(tower.encoder.layers[L], h_in) with h_in "
        "the input hidden states of that layer (a forward pre-hook), or output_attentions=True of an eager "
        "tower: attentions[L][:, :, 0, 1:].mean(1)")


@torch.no_grad()
def select(features: torch.Tensor, k: int, *, cls_attention: torch.Tensor | None = None,
           **signals) -> torch.Tensor:
    """Indices (B, k) of the k tokens with the highest CLS attention, sorted ascending.

    Args:
        features: (B, N, D); only its shape and device are used.
        k: tokens to keep, ``1 <= k <= N``.
        cls_attention: (B, N) CLS->patch attention (required). Compared in fp32.
        **signals: ignored.
    """
    B, N, _, k = check_features(features, k, "fastervlm")
    if cls_attention is None:
        raise MissingSignalError(f"fastervlm requires the signal 'cls_attention' (B, N): {_HOW}")
    scores = check_token_signal(cls_attention, "cls_attention", B, N, features.device, "fastervlm")
    with serial_on_cpu(scores.device):
        # A stable descending sort gives a deterministic tie order (lowest index first); topk does not.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        return sort_indices(order[:, :k])


def _linear_fp32(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = module.weight.detach().float()
    bias = module.bias.detach().float() if getattr(module, "bias", None) is not None else None
    return F.linear(x, weight, bias)


@torch.no_grad()
def clip_cls_attention(layer: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """CLS-query attention over the patch tokens of one CLIP encoder layer, (B, N) in fp32.

    Equals ``attentions[:, :, 0, 1:].mean(1)`` of that layer in an eager forward, without running
    eager attention: normalise the layer input with ``layer.layer_norm1``, project the CLS position
    with ``self_attn.q_proj`` and every position with ``self_attn.k_proj``, split into heads, take
    ``softmax(q_cls . k / sqrt(head_dim))`` over all 1 + N keys, average over heads and drop the CLS
    column. The projections and the softmax run in fp32 whatever the layer's dtype.

    Args:
        layer: a ``transformers`` ``CLIPEncoderLayer`` (anything with ``layer_norm1`` and
            ``self_attn.{q_proj,k_proj,num_heads,head_dim,scale}`` works).
        hidden_states: (B, 1 + N, Dv) input of that layer (CLS first), e.g. ``hidden_states[L]`` of
            ``output_hidden_states=True`` for ``layers[L]``, or captured by a forward pre-hook.
    """
    return clip_cls_attention_and_keys(layer, hidden_states)[0]


@torch.no_grad()
def clip_cls_attention_and_keys(layer: torch.nn.Module, hidden_states: torch.Tensor):
    """``clip_cls_attention`` and the layer's keys of every position, (B, 1 + N, heads, head_dim), in fp32."""
    if hidden_states.dim() != 3 or hidden_states.shape[1] < 2:
        raise ValueError("clip_cls_attention: hidden_states must be (B, 1 + N, Dv) with the CLS token "
                         f"first and N >= 1, got {tuple(hidden_states.shape)}")
    attn = layer.self_attn
    heads = int(attn.num_heads)
    head_dim = int(getattr(attn, "head_dim", hidden_states.shape[-1] // heads))
    scale = float(getattr(attn, "scale", head_dim ** -0.5))
    norm = layer.layer_norm1
    h = hidden_states.detach()
    if isinstance(norm, torch.nn.LayerNorm):
        z = F.layer_norm(h.float(), norm.normalized_shape,
                         None if norm.weight is None else norm.weight.detach().float(),
                         None if norm.bias is None else norm.bias.detach().float(), norm.eps)
    else:
        z = norm(h).float()
    B, L, _ = z.shape
    q = _linear_fp32(attn.q_proj, z[:, 0]).view(B, heads, head_dim)              # (B, H, dh)
    keys = _linear_fp32(attn.k_proj, z).view(B, L, heads, head_dim)              # (B, 1+N, H, dh)
    logits = torch.einsum("bhd,blhd->bhl", q, keys) * scale                      # (B, H, 1+N)
    probs = torch.softmax(logits, dim=-1)
    return probs.mean(dim=1)[:, 1:], keys
