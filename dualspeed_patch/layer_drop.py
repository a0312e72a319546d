"""DUET-VLM stage B: text-guided dropping of visual tokens between decoder layers, as tensor operations.

What the staged decoder loop (`decoder_loop.py`) calls at a stage boundary:

    scores = text_to_visual_scores(next_layer, hidden, position_embeddings, plan.cur)   # [B, L], no grad
    keep = keep_mask(scores, plan.cur, n_keep)                                           # [B, L] bool
    hidden, ... = compact(keep, side, hidden, ...)                                       # shorter batch

and at the end `expand(...)` maps the final hidden states back to the input length. Every function works on
the whole batch (no per-sample loop); a sample's counts come from its own visual tokens, so a batch may mix
images of different sizes, several images, or none.

Choices (docs/duet.md says why):
* Queries: the text positions after the sample's first visual token whose label is IGNORE (in training the
  instruction and template, never an answer token; at inference, where no label is given, every prompt token
  after the image). A sample without one (caption data) falls back to its other IGNORE-labelled text (BOS,
  system prompt); without that too, to its last visual token. Never an empty mean.
* Scores: fp32 from the projections on: softmax(q K^T / sqrt(d)) over every key the query may attend to (causal
  and padding mask), averaged over heads and queries; GQA key heads are repeated.
* Positions: the kept tokens keep the position ids they entered the decoder with (no renumbering), so decoding
  continues at the same positions in every layer.
* Output: the last hidden state is re-expanded to the input length, a dropped position taking the state of
  the nearest kept token on its left. Dropped positions are visual (IGNORE-labelled), so the loss equals the
  loss of the sliced sequence: a text token whose predecessor was dropped is predicted, in both, by the kept
  token before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

IGNORE_INDEX = -100
# DUET-VLM's LLaVA schedule for a 32-layer LLM: drop after layers 16 and 24, keeping 0.5 and 0.0 of N0.
DEFAULT_FRACTIONS = (0.5, 0.75)
DEFAULT_RATIOS = (0.5, 0.0)


@dataclass(frozen=True)
class LayerDropSpec:
    """The schedule: after `layers[s]` decoder layers, floor(N0 * ratios[s]) visual tokens of a sample stay
    alive (N0: its visual tokens entering the decoder). layers None: DUET's default scaled to the depth."""
    layers: Optional[Tuple[int, ...]] = None
    ratios: Tuple[float, ...] = DEFAULT_RATIOS

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        check_schedule(self.layers, self.ratios)

    def resolve(self, depth: int) -> Tuple[int, ...]:
        """The drop layers for a decoder of `depth` layers, checked against it."""
        if self.layers is None:
            layers = tuple(max(1, round(f * depth)) for f in DEFAULT_FRACTIONS[:len(self.ratios)])
            if len(self.ratios) != len(DEFAULT_FRACTIONS) or len(set(layers)) != len(layers) or layers[-1] >= depth:
                raise ValueError(f"DUET stage B: no default drop layers for {len(self.ratios)} ratios on a "
                                 f"{depth}-layer LLM (the default is {len(DEFAULT_FRACTIONS)} drops at "
                                 f"{DEFAULT_FRACTIONS} of the depth); give --duet_stage_b_layers")
            return layers
        if self.layers[-1] >= depth:
            raise ValueError(f"--duet_stage_b_layers {','.join(map(str, self.layers))}: layer {self.layers[-1]} is "
                             f"beyond this LLM's {depth} decoder layers (a drop after layer l needs 1 <= l < {depth})")
        return self.layers


def check_schedule(layers, ratios) -> None:
    """Layers strictly increasing and >= 1; ratios in [0, 1], finite, not increasing; one ratio per layer."""
    if not ratios:
        raise ValueError("--duet_stage_b_ratios: give at least one keep ratio")
    for r in ratios:
        if not (math.isfinite(r) and 0.0 <= r <= 1.0):
            raise ValueError(f"--duet_stage_b_ratios: every ratio must be in [0, 1], got {list(ratios)}")
    if any(b > a for a, b in zip(ratios, ratios[1:])):
        raise ValueError(f"--duet_stage_b_ratios must not increase (a later stage keeps at most what the one "
                         f"before kept), got {list(ratios)}")
    if layers is None:
        return
    if len(layers) != len(ratios):
        raise ValueError(f"--duet_stage_b_layers {list(layers)} and --duet_stage_b_ratios {list(ratios)} must have "
                         "the same length (one keep ratio per drop)")
    if any(isinstance(x, bool) or not isinstance(x, int) for x in layers):
        raise ValueError(f"--duet_stage_b_layers must be integers, got {list(layers)}")
    if layers[0] < 1 or any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"--duet_stage_b_layers must be strictly increasing and >= 1, got {list(layers)}")


def parse_list(flag: str, text, cast):
    """'16,24' (or '16;24', for lmms-eval's comma-separated model_args) -> (16, 24); None stays None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        text = ",".join(map(str, text))
    try:
        return tuple(cast(x) for x in str(text).replace(" ", "").replace(";", ",").split(",") if x != "")
    except ValueError:
        raise ValueError(f"--{flag} must be a comma-separated list, got {text!r}") from None


@dataclass
class Tokens:
    """Per-position facts of the current (possibly compacted) sequence, [B, L] each."""
    valid: torch.Tensor     # bool: a real token (not padding)
    visual: torch.Tensor    # bool: a visual token that stage B may drop
    query: torch.Tensor     # bool: a query row that scores the visual tokens
    origin: torch.Tensor    # long: the position in the decoder's input

    def gather(self, index: torch.Tensor, new_valid: torch.Tensor) -> "Tokens":
        take = lambda x: x.gather(1, index) & new_valid if x.dtype == torch.bool else x.gather(1, index)
        return Tokens(new_valid, take(self.visual), take(self.query), take(self.origin))


@dataclass
class LayerDropPlan:
    """What the merge hands to the decoder for one forward: the schedule and where the tokens are."""
    spec: LayerDropSpec
    tokens: Tokens
    embeds: torch.Tensor                       # the embeddings the plan is for (the merge's output)
    side: str = "right"
    n0: Optional[torch.Tensor] = None          # [B] visual tokens per sample at the decoder's input
    counts: Dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> visual tokens alive after it
    depth: Optional[int] = None                # the decoder's depth, once the plan has run

    def layer_mean(self) -> Optional[torch.Tensor]:
        """Visual tokens of the batch averaged over the decoder's layers (DUET's "avg tokens"), on the device;
        None before the decoder ran the plan."""
        if self.depth is None:
            return None
        bounds = [0] + sorted(self.counts) + [self.depth]
        alive = [self.n0.sum()] + [self.counts[b].sum() for b in sorted(self.counts)]
        total = sum(n * (end - start) for n, start, end in zip(alive, bounds, bounds[1:]))
        return total.float() / self.depth

    def matches(self, embeds: torch.Tensor) -> bool:
        """The same tensor, or (generate() clones the prompt's embeddings) an equal one."""
        if embeds.shape != self.embeds.shape:
            return False
        if embeds.data_ptr() == self.embeds.data_ptr() and embeds.stride() == self.embeds.stride():
            return True
        return bool(torch.equal(embeds, self.embeds.to(embeds.dtype)))


def build_plan(spec: LayerDropSpec, embeds, labels, valid, visual, side: str) -> LayerDropPlan:
    """The plan for a merged batch: `visual` marks the (reduced) image tokens, `labels` the answer tokens."""
    valid, visual = valid.bool(), visual.bool() & valid.bool()
    text = valid & ~visual
    if labels is None:
        prompt = text
    else:
        prompt = text & (labels == IGNORE_INDEX)
    after_image = visual.long().cumsum(1) > 0
    query = prompt & after_image
    # Fallbacks, per sample: other prompt text, else the last visual token (never an empty set).
    none = ~query.any(1, keepdim=True)
    query = torch.where(none, prompt, query)
    none = ~query.any(1, keepdim=True)
    last_visual = _last_true(visual)
    query = torch.where(none, last_visual, query)
    L = embeds.shape[1]
    origin = torch.arange(L, device=embeds.device).unsqueeze(0).expand(embeds.shape[0], L)
    tokens = Tokens(valid, visual, query, origin)
    return LayerDropPlan(spec, tokens, embeds.detach(), side, n0=visual.sum(1))


def _last_true(mask: torch.Tensor) -> torch.Tensor:
    L = mask.shape[1]
    idx = torch.arange(L, device=mask.device).expand_as(mask)
    last = torch.where(mask, idx, torch.full_like(idx, -1)).amax(1, keepdim=True)
    return (idx == last) & mask


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x, cos, sin):
    """x [B, L, H, d]; cos/sin [B or 1, L, d] (transformers' rotary output)."""
    return x * cos.unsqueeze(2) + _rotate_half(x) * sin.unsqueeze(2)


@torch.no_grad()
def text_to_visual_scores(layer, hidden: torch.Tensor, position_embeddings, tokens: Tokens) -> torch.Tensor:
    """a_v = mean over query rows and heads of softmax(q K^T / sqrt(d)) at every visual position v, [B, L] fp32
    (0 elsewhere), with `layer`'s own input norm and q/k projections (the layer the survivors go into)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden.detach())
    B, L, _ = x.shape
    head_dim = attn.head_dim
    cos, sin = (t.float() for t in position_embeddings)
    cos, sin = cos.expand(B, -1, -1), sin.expand(B, -1, -1)
    # Query rows only: pad every sample's rows to the largest count.
    n_query = tokens.query.sum(1)
    q_len = int(n_query.max())
    order = torch.argsort((~tokens.query).to(torch.int8), dim=1, stable=True)[:, :q_len]  # query rows first
    q_valid = torch.arange(q_len, device=x.device).unsqueeze(0) < n_query.unsqueeze(1)
    xq = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    q = attn.q_proj(xq).float().view(B, q_len, -1, head_dim)
    k = attn.k_proj(x).float().view(B, L, -1, head_dim)
    take = order.unsqueeze(-1).expand(-1, -1, head_dim)
    q = _rope(q, cos.gather(1, take), sin.gather(1, take))
    k = _rope(k, cos, sin)
    heads, kv_heads = q.shape[2], k.shape[2]
    k = k.repeat_interleave(heads // kv_heads, dim=2)          # GQA: each key head serves its query group
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    # A query sees the real tokens at or before it (positions in the current sequence).
    key_idx = torch.arange(L, device=x.device)
    allowed = (key_idx.view(1, 1, L) <= order.unsqueeze(-1)) & tokens.valid.unsqueeze(1)
    # A filler row (sample with fewer queries) may sit on left padding and see no key: open it (it is zeroed
    # below) so its softmax is not NaN, which 0 * NaN would carry into the scores.
    allowed = allowed | ~q_valid.unsqueeze(-1)
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    probs = logits.softmax(-1).mean(1)                         # [B, Q, L]
    probs = probs * q_valid.unsqueeze(-1)
    scores = probs.sum(1) / n_query.clamp(min=1).unsqueeze(1).float()
    return torch.where(tokens.visual, scores, torch.zeros_like(scores))


def keep_mask(scores: torch.Tensor, tokens: Tokens, n_keep: torch.Tensor) -> torch.Tensor:
    """Every non-visual real token, and the n_keep[b] best-scored visual tokens of sample b (ties: earlier
    position first)."""
    ranked = torch.where(tokens.visual, scores, torch.full_like(scores, float("-inf")))
    order = torch.argsort(-ranked, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    keep_visual = tokens.visual & (rank < n_keep.unsqueeze(1))
    return (tokens.valid & ~tokens.visual) | keep_visual


def compact_index(keep: torch.Tensor, side: str):
    """(index [B, L'], new_valid [B, L']) that gather the kept positions in order and pad on `side`."""
    counts = keep.sum(1)
    new_len = int(counts.max())
    if side == "left":
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, keep.shape[1] - new_len:]
        slot = torch.arange(new_len, device=keep.device).unsqueeze(0)
        new_valid = slot >= (new_len - counts).unsqueeze(1)
    else:
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]
        new_valid = torch.arange(new_len, device=keep.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, new_valid


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, L, ...] -> [B, L', ...] along dim 1."""
    x = x.expand(index.shape[0], *x.shape[1:])
    shape = index.shape + x.shape[2:]
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))


def expand(hidden: torch.Tensor, tokens: Tokens, length: int) -> torch.Tensor:
    """Final hidden states [B, L', D] back to the input length: position p takes the state of the last kept
    position whose origin is <= p (the first kept one for positions before it)."""
    B = hidden.shape[0]
    survived = torch.zeros((B, length), dtype=torch.long, device=hidden.device)
    survived.scatter_add_(1, tokens.origin, tokens.valid.long())  # padding slots add 0
    before = survived.cumsum(1) - 1                            # rank among survivors, per original position
    first = torch.argmax(tokens.valid.long(), dim=1, keepdim=True)  # slot of the first real token
    src = (before.clamp(min=0) + first).clamp(max=hidden.shape[1] - 1)
    return gather_rows(hidden, src)
