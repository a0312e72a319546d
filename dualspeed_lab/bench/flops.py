#!/usr/bin/env python
"""A FLOP model of one LLaVA training micro-batch, for the DualSpeed speed-up ceilings.

It counts the matrix-multiply FLOPs (2 per multiply-accumulate) of one micro-batch of B samples, each
with T text tokens and one (or more) images, for the baseline and for DualSpeed's two modes, following
the method of ``/work/shared/specs/speed_limits.md`` (section 2). Pure Python, no torch needed (except
in :func:`from_model`, which only reads attributes off a model).

What is counted (per sample; a micro-batch is B times this, all samples assumed of equal length):

* **ViT** (frozen, forward only, run under ``no_grad``): per 336px crop, all ``layers`` blocks (HF
  ``CLIPVisionModel`` runs them all although LLaVA reads ``hidden_states[-2]``): linears
  ``2 * tokens * (4 w^2 + 2 w ff)``, bidirectional attention ``4 * tokens^2 * w`` per block, patch
  embedding ``2 * patches * (3 * patch^2) * w``. ``tokens`` includes CLS.
* **Projector** (``mlp2x_gelu``: in -> D -> D), on every patch token of every crop (pruning happens
  after it). Forward ``2 * sum(in*out)``; backward: weight grads of every linear, input grad of every
  linear but the first (its input, the frozen ViT output, needs none).
* **LLM** on a sequence of ``S = T + V`` tokens (V = visual tokens the LLM sees: all of them for the
  baseline and the slow-mode student; ``k + isolator`` in fast mode and for the slow-mode teacher):
  linears ``2 * S * L * (q + k + v + o + gate + up + down)`` (GQA shrinks k and v), causal attention
  ``causal * 4 * S^2 * (heads * head_dim) * L`` with ``causal = 0.5`` when the kernel skips the masked
  upper triangle (FlashAttention-2, SDPA's flash / memory-efficient kernels) and 1.0 for eager,
  and ``lm_head`` ``2 * S * D * vocab`` (logits at every position, as HF computes them).
* **Training multipliers** (forward = 1x):

  ========== ======================== =============================== ==================
  stage      linears                  attention                       lm_head
  ========== ======================== =============================== ==================
  pretrain   1 + ckpt + 1 (dX only)   1 + ckpt + attn_bwd             1 + 1 (dX)
  sft_lora   1 + ckpt + 1 (dX only)   1 + ckpt + attn_bwd             1 + 1 (dX)
             + LoRA adapters: ``2 * lora_params`` per token x (1 + ckpt + 2)
  sft_full   1 + ckpt + 2 (dX + dW)   1 + ckpt + attn_bwd             1 + 2 (dX + dW)
  no-grad    1                        1                               1
  ========== ======================== =============================== ==================

  ``ckpt`` = 1 with gradient checkpointing (the decoder forward is recomputed in the backward), else 0;
  ``attn_bwd`` = 2.5 for flash-type kernels (5 matmuls incl. the recomputed scores vs 2 forward),
  2.0 for eager (4 matmuls). In ``pretrain`` the LLM is frozen but the gradient must still reach the
  projector through every layer, so the backward computes activation gradients only.
* **DivPrune** on the projected features of each image span (this code base prunes one span per image:
  576 tokens for LLaVA-1.5, the whole merged anyres span for NeXT): normalisation ``3 N d``, the full
  cosine Gram ``2 N^2 d``, the nearest-neighbour ``max`` ``N^2``, and ``k - 1`` greedy steps of ~``3 N``
  (argmin, row gather, running max). FLOPs are tiny; the real cost of the greedy is latency.
* **Slow mode** = the baseline student step (full sequence, fwd + bwd incl. ViT + projector) + the pruner
  (it builds the teacher's pruned sequence) + a no-grad teacher forward of the LLM on the pruned
  sequence (it reuses the student's projected features: no second ViT pass) + the KL term
  (~20 FLOPs per vocab entry per answer token: two log-softmaxes, the KL and its backward).

Functions: :func:`step_flops` (one micro-batch, by component), :func:`ceilings` (baseline/fast and
baseline/slow FLOP ratios), :func:`from_model` (shapes of a live ``LlavaLlamaForCausalLM``). Presets:
:data:`LLAVA15_7B`, :data:`LLAVA_NEXT_7B`, :data:`TINY`.

    python -m dualspeed_lab.bench.flops      # the sanity check against speed_limits.md and a few tables
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

__all__ = ["LLMShape", "ViTShape", "Shapes", "LLAVA15_7B", "LLAVA_NEXT_7B", "TINY", "PRESETS", "STAGES",
           "vit_forward_flops", "projector_flops", "llm_flops", "pruner_flops", "kept_tokens", "step_flops",
           "ceilings", "from_model", "anyres_square_tokens"]

STAGES = ("pretrain", "sft_full", "sft_lora")


# ------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class LLMShape:
    hidden: int
    layers: int
    ff: int
    vocab: int
    heads: int
    kv_heads: Optional[int] = None       # None = MHA (kv_heads = heads)
    head_dim: Optional[int] = None       # None = hidden // heads

    def __post_init__(self):
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> Tuple[Tuple[int, int], ...]:
        """(in, out) of the 7 linears of one decoder layer: q, k, v, o, gate, up, down."""
        D, F = self.hidden, self.ff
        return ((D, self.q_dim), (D, self.kv_dim), (D, self.kv_dim), (self.q_dim, D), (D, F), (D, F), (F, D))

    def layer_params(self) -> int:
        return sum(i * o for i, o in self.linear_dims())

    def lora_layer_params(self, rank: int) -> int:
        """A rank-r LoRA on all 7 linears (LLaVA's finetune_lora.sh targets every linear of the layers)."""
        return sum(rank * (i + o) for i, o in self.linear_dims())


@dataclass(frozen=True)
class ViTShape:
    width: int
    layers: int
    ff: int
    tokens: int = 577                     # incl. CLS: (336 / 14)^2 + 1
    patch: int = 14
    channels: int = 3

    @property
    def patches(self) -> int:
        return self.tokens - 1


@dataclass(frozen=True)
class Shapes:
    """Everything the FLOP model needs about one LLaVA model."""
    name: str
    llm: LLMShape
    vit: ViTShape
    projector: Tuple[Tuple[int, int], ...]  # (in, out) of each projector linear, in order
    visual_tokens: int                      # N: visual tokens per image in the LLM sequence (baseline)
    crops_per_image: int = 1                # 336px crops through the ViT per image
    note: str = ""

    @property
    def projector_tokens(self) -> int:
        """Tokens per image through the projector: every patch token of every crop."""
        return self.crops_per_image * self.vit.patches


def anyres_square_tokens(patches_per_side: int = 24, grid: int = 2, unpad: bool = True) -> Tuple[int, int]:
    """(visual tokens, crops) of a square image under LLaVA-NeXT anyres with a ``grid x grid`` crop grid.

    Base image (s^2) + the merged grid ((g s)^2) + one newline per grid row when unpadded (a square image
    loses nothing to unpadding). 672x672 (grid 2): 576 + 48 * 49 = 2928 tokens from 5 crops."""
    s, g = patches_per_side, grid
    side = g * s
    return s * s + side * (side + (1 if unpad else 0)), 1 + g * g


VICUNA_7B = LLMShape(hidden=4096, layers=32, ff=11008, vocab=32000, heads=32, kv_heads=32)
CLIP_L14_336 = ViTShape(width=1024, layers=24, ff=4096, tokens=577, patch=14)
MLP2X_7B = ((1024, 4096), (4096, 4096))

LLAVA15_7B = Shapes("llava15-7b", VICUNA_7B, CLIP_L14_336, MLP2X_7B, visual_tokens=576, crops_per_image=1,
                    note="LLaVA-1.5-7B: Vicuna-7B + CLIP ViT-L/14-336 + mlp2x_gelu, 576 visual tokens")

_NEXT_TOKENS, _NEXT_CROPS = anyres_square_tokens(24, 2, unpad=True)
LLAVA_NEXT_7B = Shapes(
    "llava-next-7b", VICUNA_7B, CLIP_L14_336, MLP2X_7B, visual_tokens=_NEXT_TOKENS, crops_per_image=_NEXT_CROPS,
    note=("LLaVA-NeXT-7B anyres, one typical 672x672 image: 2x2 grid -> 5 crops through the ViT "
          "(2880 projected tokens), base 576 + 48x48 grid with 48 newline tokens = 2928 LLM tokens. "
          "Non-square images lose rows/columns to unpadding (e.g. 640x480 -> 2340); speed_limits.md "
          "uses a data mean of ~2.0-2.2K. The 2928 figure is the square-image maximum for grid 2x2."))

# The shapes of `bench_step.py --preset tiny` (hidden 64, 2 layers; the tiny CLIP of dualspeed_lab/tiny/vision.py).
TINY = Shapes("tiny", LLMShape(hidden=64, layers=2, ff=128, vocab=128, heads=4, kv_heads=2),
              ViTShape(width=64, layers=3, ff=128, tokens=577, patch=14), ((64, 64), (64, 64)),
              visual_tokens=576, crops_per_image=1, note="tiny test shapes")

PRESETS = {"llava15-7b": LLAVA15_7B, "llava-next-7b": LLAVA_NEXT_7B, "tiny": TINY}


# ----------------------------------------------------------------------------------- building blocks
def vit_forward_flops(vit: ViTShape) -> float:
    """Forward FLOPs of the vision tower on one crop (frozen, no backward)."""
    w, n = vit.width, vit.tokens
    linears = 2.0 * n * vit.layers * (4 * w * w + 2 * w * vit.ff)
    attention = 4.0 * n * n * w * vit.layers                       # QK^T and AV, no causal mask
    patch_embed = 2.0 * vit.patches * (vit.channels * vit.patch * vit.patch) * w
    return linears + attention + patch_embed


def projector_flops(projector: Sequence[Tuple[int, int]], tokens: float, grad: bool = True) -> Tuple[float, float]:
    """(forward, backward) FLOPs of the projector on `tokens` tokens. Backward: dW of every linear and
    dX of all but the first (whose input comes from the frozen ViT)."""
    fwd = 2.0 * tokens * sum(i * o for i, o in projector)
    if not grad:
        return fwd, 0.0
    dw = 2.0 * tokens * sum(i * o for i, o in projector)
    dx = 2.0 * tokens * sum(i * o for i, o in projector[1:])
    return fwd, dw + dx


def _attn_kernel(attn: str) -> Tuple[float, float]:
    """(causal factor, backward multiplier) of an attention kernel name."""
    if attn in ("flash", "flash_attention_2", "sdpa", "flash_attention_3"):
        return 0.5, 2.5
    if attn == "eager":
        return 1.0, 2.0
    raise ValueError(f"unknown attention kernel {attn!r}: use 'flash' (also sdpa / flash_attention_2) or 'eager'")


def llm_flops(llm: LLMShape, S: float, mode: str, ckpt: bool = True, lora_rank: int = 128,
              attn: str = "flash") -> dict:
    """FLOPs of ONE sequence of S tokens through the LLM (decoder layers + lm_head), by component.

    mode: 'forward' (no grad), 'pretrain' (frozen LLM, activation grads only), 'sft_lora', 'sft_full'."""
    if mode not in ("forward",) + STAGES:
        raise ValueError(f"unknown mode {mode!r}")
    causal, attn_bwd = _attn_kernel(attn)
    lin = 2.0 * S * llm.layers * llm.layer_params()
    att = causal * 4.0 * S * S * llm.q_dim * llm.layers
    head = 2.0 * S * llm.hidden * llm.vocab
    lora = 2.0 * S * llm.layers * llm.lora_layer_params(lora_rank) if mode == "sft_lora" else 0.0
    if mode == "forward":
        return dict(llm_linear=lin, llm_attn=att, lm_head=head, lora=lora)
    rec = 1.0 if ckpt else 0.0
    weight_grads = 1.0 if mode == "sft_full" else 0.0
    return dict(llm_linear=lin * (1 + rec + 1 + weight_grads),
                llm_attn=att * (1 + rec + attn_bwd),
                lm_head=head * (1 + 1 + weight_grads),
                lora=lora * (1 + rec + 2))


def kept_tokens(N: int, p: float) -> int:
    """Tokens DivPrune keeps: floor((1 - p) * N), at least 1 (as dualspeed_patch.pruners.budget)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {p}")
    return max(1, min(N, math.floor((1.0 - p) * N + 1e-6)))


def pruner_flops(N: int, k: int, d: int, method: str = "divprune", shapes: Optional["Shapes"] = None,
                 call_only: bool = False) -> float:
    """FLOPs of pruning ONE image span of N tokens of width d down to k tokens (duet needs `shapes`).

    duet's work is in two places: the hook on the ViT layer (its CLS row and keys, during the vision pass) and
    the plug-in call (merge, projector forward on k tokens; the projector's backward on them in training).
    call_only=True counts the plug-in call's forward alone (what a timed call of the function runs)."""
    method = method.lower()
    if method == "duet":
        if shapes is None:
            raise ValueError("pruner_flops('duet') needs shapes= (ViT width and projector)")
        dv, k2 = shapes.vit.width, max(1, round(k * 7 / 307))
        members = 3 * k2                                   # cluster width 4: 4 * k2 pre-selected, k2 anchors
        hook = 2.0 * (N + 1) * dv * dv + 2.0 * dv * dv + 2.0 * (N + 1) * dv + 5.0 * (N + 1) * dv
        merge = 4.0 * members * k2 * dv
        fwd, bwd = projector_flops(shapes.projector, k, grad=True)
        return merge + fwd if call_only else hook + merge + fwd + bwd
    if method == "divprune":
        return 3.0 * N * d + 2.0 * N * N * d + 1.0 * N * N + 3.0 * N * (k - 1)
    if method == "cdpruner":      # Gram + relevance-weighted kernel + greedy MAP (k steps of O(N * step))
        return 3.0 * N * d + 2.0 * N * N * d + 2.0 * N * N + 2.0 * N * k * k
    if method == "fastervlm":     # top-k of a [CLS]-attention vector
        return 2.0 * N
    if method in ("random", "uniform"):
        return 0.0
    raise ValueError(f"no FLOP model for pruner {method!r}")


# -------------------------------------------------------------------------------------------- a step
def step_flops(shapes: Shapes, T: float, V: float, stage: str, batch: int = 1, images_per_sample: int = 1,
               ckpt: bool = True, lora_rank: int = 128, attn: str = "flash", grad: bool = True,
               vision: bool = True) -> dict:
    """FLOPs of one micro-batch of `batch` samples, each T text + V visual LLM tokens (S = T + V), by component.

    stage: 'pretrain' | 'sft_full' | 'sft_lora' (ignored when grad=False). grad=False: a no-grad forward
    (inference, slow-mode teacher). vision=False: leave out ViT + projector (the teacher reuses the
    student's projected features). ViT and projector always run on every crop of every image,
    whatever V is (pruning happens after the projector). Returns a dict with 'total'."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    S = float(T) + float(V)
    out = {"vit": 0.0, "projector": 0.0}
    if vision:
        crops = images_per_sample * shapes.crops_per_image
        out["vit"] = crops * vit_forward_flops(shapes.vit)
        f, b = projector_flops(shapes.projector, images_per_sample * shapes.projector_tokens, grad=grad)
        out["projector"] = f + b
    out.update(llm_flops(shapes.llm, S, stage if grad else "forward", ckpt, lora_rank, attn))
    out = {key: batch * val for key, val in out.items()}
    out["total"] = sum(out.values())
    return out


def ceilings(shapes: Shapes, T: float, N: Optional[int] = None, p: float = 0.9, isolator_len: int = 4,
             stage: str = "pretrain", batch: int = 1, images_per_sample: int = 1, ckpt: bool = True,
             lora_rank: int = 128, attn: str = "flash", method: str = "divprune",
             answer_tokens: Optional[float] = None) -> dict:
    """FLOP ceilings of DualSpeed's two modes against the baseline step, for one micro-batch.

    N: visual tokens per image (default: shapes.visual_tokens); the pruner keeps k = kept_tokens(N, p)
    per image and the isolator adds `isolator_len` more. Returns FLOPs (totals and components) and
    the ratios ``fast_speedup`` = baseline / fast and ``slow_speedup`` = baseline / slow (< 1: a slow
    step costs more than a baseline step), plus ``slow_vs_full_plus_teacher`` = slow / (baseline +
    teacher forward)."""
    N = shapes.visual_tokens if N is None else int(N)
    k = kept_tokens(N, p)
    vis_fast = images_per_sample * (k + isolator_len)
    vis_full = images_per_sample * N
    common = dict(stage=stage, batch=batch, images_per_sample=images_per_sample, ckpt=ckpt,
                  lora_rank=lora_rank, attn=attn)
    base = step_flops(shapes, T, vis_full, **common)
    fast = step_flops(shapes, T, vis_fast, **common)
    prune = batch * images_per_sample * pruner_flops(N, k, shapes.llm.hidden, method, shapes)
    fast["pruner"] = prune
    fast["total"] += prune
    teacher = step_flops(shapes, T, vis_fast, grad=False, vision=False, **common)
    answer = T / 2.0 if answer_tokens is None else answer_tokens
    kl = batch * 20.0 * answer * shapes.llm.vocab
    slow_total = base["total"] + prune + teacher["total"] + kl
    return dict(
        shapes=shapes.name, stage=stage, T=T, N=N, k=k, p=p, isolator_len=isolator_len, batch=batch,
        baseline=base, fast=fast, teacher=teacher,
        slow=dict(student=base["total"], pruner=prune, teacher=teacher["total"], kl=kl, total=slow_total),
        baseline_flops=base["total"], fast_flops=fast["total"], slow_flops=slow_total,
        teacher_flops=teacher["total"],
        fast_speedup=base["total"] / fast["total"],
        slow_speedup=base["total"] / slow_total,
        slow_vs_full_plus_teacher=slow_total / (base["total"] + teacher["total"]),
        pruner_share_of_fast=prune / fast["total"],
    )


# ----------------------------------------------------------------------------------- a live model
def from_model(model, visual_tokens: Optional[int] = None, crops_per_image: Optional[int] = None,
               name: str = "model") -> Shapes:
    """The Shapes of a live LlavaLlamaForCausalLM (LLM config, vision tower config, projector linears).

    visual_tokens / crops_per_image default to the tower's patch count and 1 crop for a flat merge, and
    to a square 672x672 image (2x2 grid) for an anyres ('spatial*') merge."""
    import torch.nn as nn

    while isinstance(getattr(model, "module", None), nn.Module):   # DDP / DeepSpeed wrappers
        model = model.module
    cfg = model.config
    heads = cfg.num_attention_heads
    llm = LLMShape(hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, ff=cfg.intermediate_size,
                   vocab=cfg.vocab_size, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    tower = model.get_vision_tower()
    if tower is None:
        raise ValueError("the model has no vision tower")
    vcfg = tower.config
    side = vcfg.image_size // vcfg.patch_size
    vit = ViTShape(width=vcfg.hidden_size, layers=vcfg.num_hidden_layers, ff=vcfg.intermediate_size,
                   tokens=side * side + 1, patch=vcfg.patch_size, channels=getattr(vcfg, "num_channels", 3))
    inner = model.get_model()
    projector = tuple((m.in_features, m.out_features) for m in inner.mm_projector.modules()
                      if isinstance(m, nn.Linear))
    merge = getattr(cfg, "mm_patch_merge_type", "flat") or "flat"
    per_crop = side * side + (1 if getattr(cfg, "mm_vision_select_feature", "patch") == "cls_patch" else 0)
    if merge.startswith("spatial"):
        default_tokens, default_crops = anyres_square_tokens(side, 2, unpad="unpad" in merge)
    else:
        default_tokens, default_crops = per_crop, 1
    return Shapes(name, llm, vit, projector,
                  visual_tokens=default_tokens if visual_tokens is None else int(visual_tokens),
                  crops_per_image=default_crops if crops_per_image is None else int(crops_per_image),
                  note=f"read from {type(model).__name__}")


def with_layers(shapes: Shapes, llm_layers: Optional[int] = None, vit_layers: Optional[int] = None) -> Shapes:
    """A copy with the LLM and/or ViT depth overridden (benchmarks at 7B width and reduced depth)."""
    llm = shapes.llm if llm_layers is None else replace(shapes.llm, layers=llm_layers)
    vit = shapes.vit if vit_layers is None else replace(shapes.vit, layers=vit_layers)
    return replace(shapes, llm=llm, vit=vit)


# ----------------------------------------------------------------------------------------- report
def _fmt_breakdown(c: dict) -> str:
    b, f = c["baseline"], c["fast"]
    keys = ["vit", "projector", "llm_linear", "llm_attn", "lm_head", "lora"]
    parts = [f"{key} {b[key] / 1e12:.3f}/{f[key] / 1e12:.3f}" for key in keys if b[key] or f[key]]
    return "  ".join(parts) + f"  pruner -/{f['pruner'] / 1e12:.4f}"


def main() -> None:
    print("FLOP model of one training micro-batch (TFLOPs per sample unless stated); "
          "ckpt = gradient checkpointing, FA2-style causal attention.\n")
    c = ceilings(LLAVA15_7B, T=15, p=0.9, isolator_len=4, stage="pretrain")
    print("== Sanity check: LLaVA-1.5-7B pretrain, p=0.9, T=15 text tokens (caption + plain template), "
          "4 isolator tokens ==")
    print(f"  baseline {c['baseline_flops'] / 1e12:.2f} TF   fast {c['fast_flops'] / 1e12:.2f} TF   "
          f"k={c['k']}   baseline/fast = {c['fast_speedup']:.2f}x   "
          f"(speed_limits.md: 6.99x averaged over the 558K caption lengths)")
    print(f"  components baseline/fast (TF): {_fmt_breakdown(c)}")
    nock = ceilings(LLAVA15_7B, T=15, p=0.9, stage="pretrain", ckpt=False)
    print(f"  without gradient checkpointing: {nock['fast_speedup']:.2f}x (speed_limits.md: 6.64x)\n")

    print("== baseline/fast and baseline/slow FLOP ratios at T text tokens, isolator 4, ckpt on ==")
    print(f"{'model':<14} {'stage':<9} {'T':>5} {'N':>5} " + " ".join(f"{'p=' + str(p):>13}"
                                                                  for p in (0.5, 0.75, 0.9, 0.95)))
    for shapes in (LLAVA15_7B, LLAVA_NEXT_7B):
        for stage, T in (("pretrain", 15), ("sft_lora", 385), ("sft_full", 385)):
            cells = []
            for p in (0.5, 0.75, 0.9, 0.95):
                r = ceilings(shapes, T=T, p=p, stage=stage)
                cells.append(f"{r['fast_speedup']:5.2f}/{r['slow_speedup']:4.2f}")
            print(f"{shapes.name:<14} {stage:<9} {T:>5} {shapes.visual_tokens:>5} " +
                  " ".join(f"{x:>13}" for x in cells))
    print("  (cells: fast speed-up / slow speed-up; slow < 1 means a slow step costs more than a baseline step)\n")

    print("== Bench shapes: LLaVA-1.5-7B width at reduced depth (what bench_step.py runs on a CPU) ==")
    for layers, vit_layers in ((1, 2), (2, 2), (32, 24)):
        s = with_layers(LLAVA15_7B, layers, vit_layers)
        for stage in ("pretrain", "sft_full"):
            r = ceilings(s, T=128, p=0.9, stage=stage, batch=2, ckpt=False)
            print(f"  layers={layers:<2} vit_layers={vit_layers:<2} {stage:<9} T=128 B=2 no-ckpt: "
                  f"fast {r['fast_speedup']:.2f}x  slow {r['slow_speedup']:.2f}x  "
                  f"slow/(full+teacher) {r['slow_vs_full_plus_teacher']:.3f}  "
                  f"pruner {100 * r['pruner_share_of_fast']:.2f}% of fast FLOPs")
    print(f"\nNeXT preset: {LLAVA_NEXT_7B.note}")


if __name__ == "__main__":
    main()
