#!/usr/bin/env python
"""Offline-pretrained tiny components for the toy task: a CLIP-style vision tower and a Vicuna-style LLM.

The toy task (dualspeed_lab/toy/task.py) is barely learnable by LLaVA when the vision tower is random and the LM
starts from scratch. The real recipe starts from a *pretrained* CLIP and a *trained* Vicuna, so this
script gives the tiny stand-ins an offline "pretraining" of their own, on the toy data only:

1. `<out>/clip-vit-toy-patch14-336/`: a small `transformers.CLIPVisionModel` (336 px, patch 14, so
   24x24 = 576 patch tokens + CLS = 577; width 128, 4 layers, 4 heads, MLP 512) trained with DENSE
   per-patch supervision from each image's `patch_map` (objects.json): for every patch, the owning
   object's colour, shape, glyph (none / letter), size (or "background"), the letter under the patch
   (`glyph_local`) and the patch's offset to its object's centre, read by linear heads from
   `hidden_states[-2]` (the layer LLaVA reads with `mm_vision_select_layer=-2`, patch tokens only); a
   light image-level objective (per-colour / per-shape counts, number of objects, which letters occur)
   reads the mean of the same patch tokens. Only pretrain + train images are used (never val / test);
   per-head patch accuracies on val go to `<out>/build_report.json`.
   What makes the small CPU budget go far (each measured on val, see the report of the task):
   * cell-aligned CROPS: objects never straddle the 84-px cells, so 1-cell (6x6 patches) and 2x2-cell
     crops, drawn with weight 0.25 + objects^2, give whole objects for a fraction of the tokens; a crop's
     patches keep their own position embeddings (`_read_layer(pos_ids=...)`); the last 15 % of the steps
     use full images, as LLaVA does;
   * ATTENTION SUPERVISION (`_segment_loss`): head 0 of layers 2 and 3 learns to attend, from an object
     patch, uniformly over that object's patches: object-level pooling (what shape / glyph / size /
     counting need) that does not leak into other objects of the same colour;
   * a data-aware, ConViT-like init (`init_from_data`): PCA-whitened patch embedding, a 2-D sin/cos
     position code, layers 1-2 starting as shifted-copy attention (a 3x3 neighbourhood);
   * object patches weighted 4x, glyph patches 16x in `glyph_local`.
   The LAST encoder layer is never read by LLaVA, so it is not trained: it is saved as an exact identity
   (zero attention out_proj and MLP fc2), hence `last_hidden_state == hidden_states[-2]` and
   `pooler_output` is the post-LayerNorm CLS of the layer LLaVA reads (nothing in the saved tower is
   random). The heads are dropped; the folder holds the `CLIPVisionModel` and a `CLIPImageProcessorPil`
   config (shortest edge 336, centre crop 336, OpenAI CLIP mean/std, as dualspeed_lab/tiny/vision.py). Toy
   images are 336x336 squares, so LLaVA-1.5's `pad` and the processor's resize/crop are the identity and
   the pixels reduce to `(x / 255 - mean) / std`, which training uses directly (`_pixels`; the build
   checks it against the saved processor: max abs difference 0).

2. `<out>/vicuna-toy/`: a SentencePiece tokenizer trained on the toy text (captions, questions, answers,
   the LLaVA templates; scripts/tiny/tokenizer.train_tokenizer) and a small `LlamaForCausalLM` given a
   TEXT warm-up like a trained base: causal-LM training (every token) on the LLaVA renderings of the
   pretrain captions (`plain`: caption + "\\n", and the caption as a vicuna_v1 answer) and the train QA
   conversations (vicuna_v1, "USER: What color is the square?\\nAnswer the question using a single word
   or phrase. ASSISTANT: Blue</s>..."), tokenised exactly as LLaVA does (`tokenizer_image_token`) with the
   image placeholder dropped. So it knows the vocabulary, the template and the answer format; it cannot
   know the answers (no image), so it learns the answer priors only. Then a SCENE warm-up
   (dualspeed_lab/toy/scene_warmup.py, `--scene-steps`, default 1000, ~7 min on one core): the task's question
   types asked about fresh scenes written as word embeddings (each object = its attribute words' vectors),
   placed where LLaVA puts the image tokens. That is the stand-in for a base LLM that already knows how to
   find an answer in its context: without it the toy LLM needs thousands of SFT steps before it reads the
   image at all. Saved with the tokenizer files (as dualspeed_lab/tiny/llm.py) = the base-LLM folder for
   `--model_name_or_path`.

Determinism: everything derives from `seed` (torch.manual_seed for the inits, torch.Generators for data
order and crops), sentencepiece trains single-threaded, and torch runs with a fixed thread count
(`--threads`, default 1). Two builds on the same machine with the same arguments and thread count give
identical weights; another thread count or CPU (other BLAS / oneDNN kernels) may change float rounding,
so the weights then differ in the last bits (and drift apart over training), not in quality.
Threads: on the shared 2-core machine, 1 thread measured ~3x FASTER per step than 2 when other jobs run
(oversubscribed OpenMP threads wait on each other); use `--threads 2` on an idle machine.

    python -m dualspeed_lab.toy.models --data /tmp/toytask --out /tmp/toymodels            # ~3 min
    python -m dualspeed_lab.toy.models --data /tmp/toytask --out /tmp/toymodels --probe    # + the probe (~2 min)

`--probe` (or `probe_tower`) checks that the frozen tower's patch features carry the answers: a tiny
attention-pooling probe (referents found with SHARED colour / shape embeddings dotted with the projected
patch features -> pooled features, attended position, soft count, best score -> MLP -> answer) is
trained on the train questions and scored per question type on val, next to the image-blind baseline
(dualspeed_lab/toy/blind_baseline.py); written to `<out>/probe_report.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from typing import Dict, List, Optional, Sequence

import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_lab.toy.task import (ANSWERS, CELLS, CHANCE, COLOR_NAMES, GLYPHS, GRID,
                              MAX_OBJECTS, PATCH, QUESTION_TYPES, SHAPE_PLURALS, SHAPES, SIZES)

VISION_DIR = "clip-vit-toy-patch14-336"
LLM_DIR = "vicuna-toy"

# Vision tower: width 128, 4 layers (the 4th is the identity LLaVA never reads), 4 heads.
VISION_CONFIG = dict(
    image_size=336,
    patch_size=14,
    num_channels=3,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    projection_dim=128,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
LLM_CONFIG = dict(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    initializer_range=0.02,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    use_cache=True,
)
DEFAULTS = dict(vision_steps=700, vision_batch=4, vision_lr=3e-3, lm_steps=250, lm_batch=16, lm_lr=3e-3,
                vocab_size=1000, threads=1, scene_steps=1000, scene_lr=1e-3)
# Bumped when the build recipe changes, so that the reproduction driver's model cache is rebuilt.
RECIPE = "toy-models-v2-scene-warmup"


# Per-patch heads: name -> number of classes (0 = background everywhere).
PATCH_HEADS = {"color": 1 + len(COLOR_NAMES), "shape": 1 + len(SHAPES),
               "glyph": 2 + len(GLYPHS),  # 1 = object without a glyph, 2.. = letters
               "size": 1 + len(SIZES)}
COUNT_CLASSES = 4  # image-level counts 0, 1, 2, 3+
GLYPH_COVER_MIN = 0.2  # glyph_local: a patch the glyph box covers at least this much
OBJECT_WEIGHT = 4.0  # per-patch CE weight of object patches (background: 1)
GLYPH_WEIGHT = 16.0  # glyph_local CE weight of the patches a glyph covers

__all__ = ["VISION_CONFIG", "LLM_CONFIG", "DEFAULTS", "PATCH_HEADS", "load_vision_samples", "make_vision_model",
           "VisionHeads", "vision_loss", "pretrain_vision", "patch_accuracy", "save_vision_tower",
           "llm_texts", "build_llm", "build_toy_models", "probe_tower", "main"]


# ----------------------------------------------------------------------------------------------- data
def _load_objects(data_root: str, split: str) -> Dict[str, dict]:
    with open(os.path.join(data_root, split, "objects.json")) as f:
        return json.load(f)


def _labels_for(gt: dict) -> dict:
    """Per-patch targets (576 each) and image-level targets of one image's objects.json entry."""
    import numpy as np

    n = GRID * GRID
    owner = np.array([-1 if ch == "." else int(ch) for row in gt["patch_map"] for ch in row], dtype=np.int64)
    objs = gt["objects"]
    tabs = {
        "color": [1 + COLOR_NAMES.index(o["color"]) for o in objs],
        "shape": [1 + SHAPES.index(o["shape"]) for o in objs],
        "glyph": [2 + GLYPHS.index(o["glyph"]) if o["glyph"] else 1 for o in objs],
        "size": [1 + SIZES.index(o["size"]) for o in objs],
    }
    out = {}
    for name, tab in tabs.items():
        lab = np.zeros(n, dtype=np.int64)
        lab[owner >= 0] = np.array(tab, dtype=np.int64)[owner[owner >= 0]]
        out[name] = lab
    # Letter on patches the glyph (with its halo) covers >= GLYPH_COVER_MIN of, else 0.
    gl = np.zeros((GRID, GRID), dtype=np.int64)
    for o in objs:
        if o.get("glyph_box"):
            x0, y0, x1, y1 = o["glyph_box"]
            for r in range(y0 // PATCH, (y1 - 1) // PATCH + 1):
                for c in range(x0 // PATCH, (x1 - 1) // PATCH + 1):
                    ov = (min(x1, (c + 1) * PATCH) - max(x0, c * PATCH)) * (min(y1, (r + 1) * PATCH) - max(y0, r * PATCH))
                    if ov >= GLYPH_COVER_MIN * PATCH * PATCH:
                        gl[r, c] = 1 + GLYPHS.index(o["glyph"])
    out["glyph_local"] = gl.reshape(-1)
    # Offset (in units of 3 patches) from the patch centre to its object's centre; 0 on background.
    centers = np.array([o["center"] for o in objs], dtype=np.float32)
    pc = (np.arange(GRID, dtype=np.float32) + 0.5) * PATCH
    px, py = np.meshgrid(pc, pc)  # row-major: py is the row
    off = np.zeros((n, 2), dtype=np.float32)
    m = owner >= 0
    off[m, 0] = (centers[owner[m], 0] - px.reshape(-1)[m]) / (3 * PATCH)
    off[m, 1] = (centers[owner[m], 1] - py.reshape(-1)[m]) / (3 * PATCH)
    out["offset"] = off
    # Per-object tables (padded to MAX_OBJECTS with -1) for the image-level targets of any crop.
    pad = [-1] * (MAX_OBJECTS - len(objs))
    out["owner"] = owner
    out["obj_color"] = np.array([COLOR_NAMES.index(o["color"]) for o in objs] + pad, dtype=np.int64)
    out["obj_shape"] = np.array([SHAPES.index(o["shape"]) for o in objs] + pad, dtype=np.int64)
    out["obj_glyph"] = np.array([GLYPHS.index(o["glyph"]) if o["glyph"] else -1 for o in objs] + pad, dtype=np.int64)
    return out


def load_vision_samples(data_root: str, splits: Sequence[str] = ("pretrain", "train")) -> List[dict]:
    """[{image (absolute path), labels}] of the given splits, in a fixed order (split, then objects.json)."""
    samples = []
    for split in splits:
        for rel, gt in _load_objects(data_root, split).items():
            samples.append({"image": os.path.join(data_root, rel), "rel": rel, "labels": _labels_for(gt)})
    return samples


def _clip_mean_std():
    from dualspeed_lab.tiny.vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _decode(paths: Sequence[str]):
    """uint8 tensor (B, 3, 336, 336) of the images (RGB)."""
    import numpy as np
    from PIL import Image

    arrs = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (VISION_CONFIG["image_size"],) * 2:
                raise ValueError(f"{p}: expected a {VISION_CONFIG['image_size']}px square image, got {im.size}")
            arrs.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def _normalize(x):
    """uint8 (B, 3, H, W) -> CLIP-normalised float32, exactly CLIPImageProcessorPil's rescale + normalize."""
    mean, std = _clip_mean_std()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean_t) / std_t


def _pixels(paths: Sequence[str]):
    """Normalised pixel tensors (B, 3, 336, 336): what CLIPImageProcessorPil gives for 336x336 images."""
    return _normalize(_decode(paths))


def _stack_labels(batch: Sequence[dict]) -> dict:
    import numpy as np
    import torch

    keys = batch[0]["labels"].keys()
    return {k: torch.from_numpy(np.stack([s["labels"][k] for s in batch])) for k in keys}


# ------------------------------------------------------------------------------------- vision tower
def make_vision_model(seed: int = 0, **overrides):
    """A freshly initialised `CLIPVisionModel` (fp32, VISION_CONFIG + overrides, weights from `seed`)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**dict(VISION_CONFIG, **overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    _make_last_layer_identity(model)
    return model.to(torch.float32)


POS_DIMS = 32  # channels reserved for the 2-D position code by `init_from_data` (head_dim of one head)
# Per layer: the (row, col) patch offset each attention head looks at, at init (ConViT-style locality).
LOCAL_OFFSETS = (((0, 1), (0, -1), (1, 0), (-1, 0)), ((1, 1), (1, -1), (-1, 1), (-1, -1)))
LOCAL_SHARPNESS = 1.5  # q/k scale of those heads


def _pos_freqs(n: int):
    return math.pi * 2.0 ** (-torch.arange(n, dtype=torch.float64) / 2.0)  # pi, pi/sqrt2, pi/2, ...


def init_from_data(model, samples: Sequence[dict], n_images: int = 64, seed: int = 0, pca: bool = True,
                   position: bool = True, local_attention: bool = True) -> None:
    """Data-aware, ConViT-like init; makes the tiny pretraining budget go much further.

    * patch embedding = PCA whitening of 14x14x3 patches of `n_images` seeded images: the top
      (hidden_size - POS_DIMS) components fill the first channels (bias-free, like CLIP's conv);
    * position embedding = a 2-D sin/cos code of the patch's (row, col) in the last POS_DIMS channels
      (frequencies pi * 2^(-f/2); CLS: zeros);
    * the q/k projections of the first len(LOCAL_OFFSETS) layers read only that code, rotated so head h of
      layer l attends (sharply) to the patch at offset LOCAL_OFFSETS[l][h]: each layer starts as a set of
      shifted copies (a 3x3 'convolution' after two layers); content attention is learnt from there.
    """
    vm = _vm(model)
    d = model.config.hidden_size
    p = model.config.patch_size
    g = model.config.image_size // p
    n_heads = model.config.num_attention_heads
    head_dim = d // n_heads
    pos_dims = POS_DIMS if position else 0
    if pca:
        gen = torch.Generator().manual_seed(seed + 5)
        idx = torch.randperm(len(samples), generator=gen)[:n_images].tolist()
        x = _pixels([samples[i]["image"] for i in idx])  # (n, 3, H, W)
        patches = x.unfold(2, p, p).unfold(3, p, p)  # n, 3, g, g, p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * p * p).double()
        cov = torch.cov((patches - patches.mean(0)).T)
        evals, evecs = torch.linalg.eigh(cov)
        k = min(d - pos_dims, 3 * p * p)
        order = evals.argsort(descending=True)[:k]
        w = evecs[:, order].T / torch.sqrt(evals[order].clamp(min=0) + 1e-2)[:, None]
        sign = torch.sign(w.gather(1, w.abs().argmax(1, keepdim=True)))  # deterministic sign
        w = torch.cat([(w * sign).float(), torch.zeros(d - k, 3 * p * p)])
        with torch.no_grad():
            vm.embeddings.patch_embedding.weight.copy_(w.view(d, 3, p, p))
    if not position:
        return
    nf = pos_dims // 4
    freqs = _pos_freqs(nf)
    rows, cols = torch.meshgrid(torch.arange(g, dtype=torch.float64), torch.arange(g, dtype=torch.float64),
                                indexing="ij")
    code = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        ang = coord[:, None] * freqs[None]
        code += [torch.sin(ang), torch.cos(ang)]
    code = torch.cat(code, -1).float()  # (576, POS_DIMS): [row sin, row cos, col sin, col cos]
    with torch.no_grad():
        vm.embeddings.position_embedding.weight.zero_()
        vm.embeddings.position_embedding.weight[1:, d - pos_dims:].copy_(code)
    if not local_attention or head_dim != pos_dims:
        return
    for layer, offsets in zip(vm.encoder.layers[:-1], LOCAL_OFFSETS):
        att = layer.self_attn
        with torch.no_grad():
            for lin in (att.q_proj, att.k_proj):
                lin.weight.zero_()
                lin.bias.zero_()
            for h, (dr, dc) in enumerate(offsets[:n_heads]):
                rows_q = slice(h * head_dim, (h + 1) * head_dim)
                att.k_proj.weight[rows_q, d - pos_dims:] = LOCAL_SHARPNESS * torch.eye(pos_dims)
                # q = code(position + offset): rotate each (sin, cos) pair by freq * offset.
                rot = torch.zeros(pos_dims, pos_dims, dtype=torch.float64)
                for axis, delta in ((0, dr), (1, dc)):
                    base = axis * 2 * nf
                    for f in range(nf):
                        c, s_ = math.cos(freqs[f] * delta), math.sin(freqs[f] * delta)
                        i_sin, i_cos = base + f, base + nf + f
                        rot[i_sin, i_sin], rot[i_sin, i_cos] = c, s_
                        rot[i_cos, i_cos], rot[i_cos, i_sin] = c, -s_
                att.q_proj.weight[rows_q, d - pos_dims:] = LOCAL_SHARPNESS * rot.float()


def _make_last_layer_identity(model) -> None:
    """Zero the last encoder layer's residual branches: it maps its input to itself exactly."""
    import torch

    layer = _vm(model).encoder.layers[-1]
    with torch.no_grad():
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    layer.requires_grad_(False)


def _vm(model):
    """The module holding embeddings / pre_layrnorm / encoder (transformers 5 flattens `vision_model`)."""
    return getattr(model, "vision_model", model)


def _read_layer(model, pixel_values, pos_ids=None, return_inputs: bool = False):
    """hidden_states[-2] (B, 1 + n, D) without running the last layer (identical to the full forward's).

    `pixel_values` may be a patch-aligned crop (B, 3, 14 h, 14 w) of the 336 canvas; `pos_ids` (B, h w) are
    then its patches' indices in the full 24x24 grid (0-based), whose position embeddings they get. With
    `pos_ids=None` the input must be the full canvas, and this equals CLIPVisionModel's hidden_states[-2].
    `return_inputs`: also return the input of every layer run (for the attention supervision).
    """
    vm = _vm(model)
    emb = vm.embeddings
    if pos_ids is None:
        h = emb(pixel_values)
    else:
        x = emb.patch_embedding(pixel_values.to(emb.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        pe = emb.position_embedding.weight
        cls = (emb.class_embedding + pe[0]).expand(x.shape[0], 1, -1)
        h = torch.cat([cls, x + pe[1 + pos_ids]], 1)
    h = vm.pre_layrnorm(h)
    inputs = []
    for layer in vm.encoder.layers[:-1]:
        inputs.append(h)
        out = layer(h, None)
        h = out[0] if isinstance(out, tuple) else out
    return (h, inputs) if return_inputs else h


def _vision_init_fn():
    import torch.nn as nn

    class VisionHeads(nn.Module):
        """Linear heads on the patch tokens of hidden_states[-2] (+ image-level heads on their mean)."""

        def __init__(self, width: int):
            super().__init__()
            self.patch = nn.ModuleDict({k: nn.Linear(width, c) for k, c in PATCH_HEADS.items()})
            self.glyph_local = nn.Linear(width, 1 + len(GLYPHS))
            self.offset = nn.Linear(width, 2)
            self.color_count = nn.Linear(width, len(COLOR_NAMES) * COUNT_CLASSES)
            self.shape_count = nn.Linear(width, len(SHAPES) * COUNT_CLASSES)
            self.n_objects = nn.Linear(width, MAX_OBJECTS + 1)
            self.letters = nn.Linear(width, len(GLYPHS))

        def forward(self, patches):
            out = {k: head(patches) for k, head in self.patch.items()}
            out["glyph_local"] = self.glyph_local(patches)
            out["offset"] = self.offset(patches)
            pooled = patches.mean(1)
            b = patches.shape[0]
            out["color_count"] = self.color_count(pooled).view(b, len(COLOR_NAMES), COUNT_CLASSES)
            out["shape_count"] = self.shape_count(pooled).view(b, len(SHAPES), COUNT_CLASSES)
            out["n_objects"] = self.n_objects(pooled)
            out["letters"] = self.letters(pooled)
            return out

    return VisionHeads


def VisionHeads(width: int):  # noqa: N802 - a factory so torch.nn is imported lazily
    """The pretraining heads (dropped after pretraining)."""
    return _vision_init_fn()(width)


IMAGE_LOSS_WEIGHT = 0.1
OFFSET_LOSS_WEIGHT = 0.5


def _image_targets(labels: dict) -> dict:
    """Image-level targets of the (cropped) view: counts over the objects with a patch in view."""
    owner = labels["owner"]  # (B, n), -1 = background
    present = torch.stack([(owner == k).any(1) for k in range(MAX_OBJECTS)], 1)  # (B, MAX_OBJECTS)

    def count(table, n_values):
        hits = (table.unsqueeze(-1) == torch.arange(n_values)) & present.unsqueeze(-1)  # B, K, V
        return hits.sum(1)

    return {"color_count": count(labels["obj_color"], len(COLOR_NAMES)).clamp(max=COUNT_CLASSES - 1),
            "shape_count": count(labels["obj_shape"], len(SHAPES)).clamp(max=COUNT_CLASSES - 1),
            "n_objects": present.sum(1),
            "letters": (count(labels["obj_glyph"], len(GLYPHS)) > 0).float()}


SEGMENT_LOSS_WEIGHT = 0.5
SEGMENT_LAYERS = (1, 2)  # encoder layers whose head 0 learns to attend over its own object's patches


def _segment_loss(model, inputs, owner):
    """Attention supervision: head 0 of each SEGMENT_LAYERS layer, queried from an object patch, should
    spread its attention uniformly over the patches of that object (cross-entropy against that target).
    This teaches the object-level pooling that shape / glyph / size / counting need, and keeps other
    objects of the same colour (a shortcut in crops) out of it."""
    import torch.nn.functional as F

    layers = _vm(model).encoder.layers
    hd = model.config.hidden_size // model.config.num_attention_heads
    same = (owner.unsqueeze(2) == owner.unsqueeze(1)) & (owner >= 0).unsqueeze(2)  # B, n, n
    target = same.float() / same.sum(-1, keepdim=True).clamp(min=1)
    rows = (owner >= 0).float()
    total, n = 0.0, 0
    for li in SEGMENT_LAYERS:
        if li >= len(layers) - 1:
            continue
        layer = layers[li]
        z = layer.layer_norm1(inputs[li])[:, 1:]
        att = layer.self_attn
        q = F.linear(z, att.q_proj.weight[:hd], att.q_proj.bias[:hd])
        k = F.linear(z, att.k_proj.weight[:hd], att.k_proj.bias[:hd])
        # Keys: the patches only (the CLS key is left out of the target; its logit is small at init).
        logp = torch.log_softmax(q @ k.transpose(1, 2) * hd ** -0.5, -1)
        ce = -(target * logp).sum(-1)
        total = total + (ce * rows).sum() / rows.sum().clamp(min=1)
        n += 1
    return total / max(n, 1)


def vision_loss(model, heads, pixel_values, labels: dict, pos_ids=None, return_parts: bool = False):
    """The pretraining loss: per-patch CE (object patches weighted OBJECT_WEIGHT) of the colour / shape /
    glyph / size / local-glyph heads + offset MSE, and a light image-level objective (counts, letters).
    `labels` hold the per-patch targets of the patches in view (see `_crop_batch`)."""
    import torch.nn.functional as F

    h, inputs = _read_layer(model, pixel_values, pos_ids, return_inputs=True)
    patches = h[:, 1:]
    out = heads(patches)
    parts = {}
    if SEGMENT_LOSS_WEIGHT:
        parts["segment"] = SEGMENT_LOSS_WEIGHT * _segment_loss(model, inputs, labels["owner"])
    w = 1.0 + (OBJECT_WEIGHT - 1.0) * (labels["color"] > 0).float().flatten()
    for k in PATCH_HEADS:
        ce = F.cross_entropy(out[k].flatten(0, 1), labels[k].flatten(), reduction="none")
        parts[k] = (ce * w).sum() / w.sum()
    wg = w + (GLYPH_WEIGHT - OBJECT_WEIGHT) * (labels["glyph_local"] > 0).float().flatten()
    ce = F.cross_entropy(out["glyph_local"].flatten(0, 1), labels["glyph_local"].flatten(), reduction="none")
    parts["glyph_local"] = (ce * wg).sum() / wg.sum()
    obj = (labels["color"] > 0).unsqueeze(-1).float()
    parts["offset"] = OFFSET_LOSS_WEIGHT * ((out["offset"] - labels["offset"]).pow(2) * obj).sum() / obj.sum().clamp(min=1)
    tgt = _image_targets(labels)
    img = (F.cross_entropy(out["color_count"].flatten(0, 1), tgt["color_count"].flatten())
           + F.cross_entropy(out["shape_count"].flatten(0, 1), tgt["shape_count"].flatten())
           + F.cross_entropy(out["n_objects"], tgt["n_objects"])
           + F.binary_cross_entropy_with_logits(out["letters"], tgt["letters"]))
    parts["image"] = IMAGE_LOSS_WEIGHT * img
    loss = sum(parts.values())
    return (loss, {k: float(v.detach()) for k, v in parts.items()}) if return_parts else loss


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


PER_PATCH = ("color", "shape", "glyph", "size", "glyph_local", "offset", "owner")
PER_OBJECT = ("obj_color", "obj_shape", "obj_glyph")
CELL_PATCHES = GRID // CELLS  # 6 patches per cell side


def _crop_batch(images, labels: dict, cells: int, per_image: int, gen):
    """Cell-aligned crops of `cells` x `cells` cells (objects never straddle cells, so every object in view
    is whole): `per_image` distinct windows from each image, drawn with weight 0.25 + (objects in view)^2.
    Returns (uint8 pixels (B', 3, 84 c, 84 c), pos_ids (B', (6 c)^2), labels of the patches in view)."""
    n_win = CELLS - cells + 1
    side = cells * CELL_PATCHES
    grid = torch.arange(GRID * GRID).view(GRID, GRID)
    px, ids, sel = [], [], []
    for b in range(images.shape[0]):
        if cells == CELLS:
            wins = [(0, 0)] * per_image
        else:
            owner = labels["owner"][b].view(GRID, GRID)
            n_obj = torch.tensor([float(len(set(owner[r * CELL_PATCHES:(r + cells) * CELL_PATCHES,
                                                     c * CELL_PATCHES:(c + cells) * CELL_PATCHES].unique().tolist())
                                            - {-1}))
                                  for r in range(n_win) for c in range(n_win)])
            weight = 0.25 + n_obj ** 2  # busy windows first (1 cell: occupied 5:1 over empty)
            k = min(per_image, n_win * n_win)
            picks = torch.multinomial(weight, k, replacement=False, generator=gen).tolist()
            wins = [divmod(i, n_win) for i in picks]
        for r, c in wins:
            r0, c0 = r * CELL_PATCHES, c * CELL_PATCHES
            px.append(images[b, :, r0 * PATCH:(r0 + side) * PATCH, c0 * PATCH:(c0 + side) * PATCH])
            ids.append(grid[r0:r0 + side, c0:c0 + side].reshape(-1))
            sel.append(b)
    pos_ids = torch.stack(ids)
    sel_t = torch.tensor(sel)
    out = {}
    for k, v in labels.items():
        if k in PER_PATCH:
            v = v[sel_t]
            out[k] = torch.stack([v[i, pos_ids[i]] for i in range(len(sel))])
        elif k in PER_OBJECT:
            out[k] = v[sel_t]
    return torch.stack(px), pos_ids, out


# Crop schedule: view sizes in cells (1 = one 84-px cell, 2 = 2x2 cells, 4 = the full image), cycled; the
# last FULL_FRACTION of the steps use full images only (what LLaVA sees).
CROP_CYCLE = (1, 1, 2, 2)
FULL_FRACTION = 0.15


def pretrain_vision(model, samples: Sequence[dict], steps: int, batch_size: int = 8, lr: float = 2e-3,
                    seed: int = 0, heads=None, progress: bool = True, weight_decay: float = 0.05,
                    crop_cycle: Sequence[int] = CROP_CYCLE, full_fraction: float = FULL_FRACTION) -> dict:
    """Train `model` (in place) and `heads` on `samples` for `steps` AdamW steps (warm-up + cosine).

    Every step sees about `batch_size` full images' worth of patch tokens: `batch_size` full images, or
    4 x `batch_size` images x 4 one-cell crops, or 2 x `batch_size` images x 2 2x2-cell crops (cheaper:
    short sequences, mostly occupied cells), following `crop_cycle`; the last `full_fraction` of the steps
    use full images. Images are drawn without replacement in a seeded order (epochs reshuffle). Returns
    {heads, history: [loss per step], parts: last step's loss parts, seconds, images}.
    """
    from tqdm import tqdm

    if heads is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            heads = VisionHeads(model.config.hidden_size)
    params = [p for p in list(model.parameters()) + list(heads.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed + 2)
    order: List[int] = []
    model.train()
    heads.train()
    history, parts, n_images = [], {}, 0
    warmup = max(1, min(30, steps // 10))
    full_from = steps - int(round(full_fraction * steps))
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="vision pretrain", unit="step", disable=not progress)
    for step in bar:
        cells = CELLS if step >= full_from else crop_cycle[step % len(crop_cycle)]
        per_image = (CELLS // cells) if cells < CELLS else 1
        n_img = batch_size * (CELLS // cells)
        while len(order) < n_img:
            order.extend(torch.randperm(len(samples), generator=gen).tolist())
        idx, order = order[:n_img], order[n_img:]
        n_images += n_img
        batch = [samples[i] for i in idx]
        images = _decode([s["image"] for s in batch])
        labels = _stack_labels(batch)
        if cells == CELLS:
            pixels, pos_ids = images, None
        else:
            pixels, pos_ids, labels = _crop_batch(images, labels, cells, per_image, gen)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        loss, parts = vision_loss(model, heads, _normalize(pixels), labels, pos_ids, return_parts=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(float(loss.detach()))
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.3f}", view=cells,
                            **{k: f"{v:.2f}" for k, v in parts.items() if k in ("shape", "glyph", "size")})
    model.eval()
    heads.eval()
    return {"heads": heads, "history": history, "parts": parts, "seconds": time.perf_counter() - t0,
            "images": n_images}


def _encode(model, paths: Sequence[str], batch_size: int = 16, progress: bool = False, desc: str = "encode"):
    """hidden_states[-2] patch tokens (N, 576, D) of the images, in batches (no grad)."""
    import torch
    from tqdm import tqdm

    feats = []
    with torch.no_grad():
        for i in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress):
            feats.append(_read_layer(model, _pixels(paths[i:i + batch_size]))[:, 1:].clone())
    return torch.cat(feats) if feats else torch.zeros(0)


def patch_accuracy(model, heads, samples: Sequence[dict], batch_size: int = 16, progress: bool = False) -> dict:
    """Per-head accuracy (%) on the samples' patches: `all` patches, `object` patches (owner != background),
    `glyph_objects` (glyph head on patches of objects that carry a letter); image-level head accuracies;
    the offset head's mean absolute error in patches."""
    import torch

    model.eval()
    heads.eval()
    hits = {}
    tot = {}

    def add(key, correct, count):
        hits[key] = hits.get(key, 0.0) + float(correct)
        tot[key] = tot.get(key, 0.0) + float(count)

    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = samples[i:i + batch_size]
            feats = _read_layer(model, _pixels([s["image"] for s in batch]))[:, 1:]
            out = heads(feats)
            lab = _stack_labels(batch)
            lab.update(_image_targets(lab))
            obj = lab["color"] > 0
            for k in PATCH_HEADS:
                pred = out[k].argmax(-1)
                ok = pred == lab[k]
                add(f"{k}/all", ok.sum(), ok.numel())
                add(f"{k}/object", (ok & obj).sum(), obj.sum())
            g = lab["glyph_local"] > 0
            add("glyph_local/on_glyph", ((out["glyph_local"].argmax(-1) == lab["glyph_local"]) & g).sum(), g.sum())
            g = lab["glyph"] >= 2
            add("glyph/glyph_objects", ((out["glyph"].argmax(-1) == lab["glyph"]) & g).sum(), g.sum())
            err = (out["offset"] - lab["offset"]).abs().sum(-1) * 3  # in patches (L1 over x, y)
            add("offset_l1_patches/object", (err * obj).sum(), obj.sum())
            for k in ("color_count", "shape_count"):
                ok = out[k].argmax(-1) == lab[k]
                add(f"image/{k}", ok.sum(), ok.numel())
            add("image/n_objects", (out["n_objects"].argmax(-1) == lab["n_objects"]).sum(), len(batch))
            ok = (out["letters"] > 0).float() == lab["letters"]
            add("image/letters", ok.sum(), ok.numel())
    res = {k: (1.0 if k.startswith("offset") else 100.0) * hits[k] / max(tot[k], 1) for k in hits}
    return res


def save_vision_tower(model, out_dir: str) -> str:
    """Save the CLIPVisionModel (heads are not part of it) + the CLIP-336 PIL processor config."""
    from dualspeed_lab.tiny.vision import make_image_processor

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    make_image_processor().save_pretrained(out_dir)
    return out_dir


def _check_processor(out_dir: str, image_path: str) -> float:
    """Max |processor(image) - _pixels(image)| for a saved tower folder (should be ~1e-6)."""
    from PIL import Image

    from llava.model.multimodal_encoder.clip_encoder import load_clip_image_processor

    proc = load_clip_image_processor(out_dir)
    with Image.open(image_path) as im:
        ref = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    return float((ref.float() - _pixels([image_path])).abs().max())


# ----------------------------------------------------------------------------------------------- LLM
def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def llm_texts(data_root: str, splits: Sequence[str] = ("pretrain", "train")) -> Dict[str, List]:
    """The warm-up corpus: {'prompts': rendered LLaVA prompts (with '<image>'), 'texts': raw strings for the
    tokenizer (captions, questions, answers, prompts)}, from the pretrain captions and train conversations."""
    from llava import conversation as conversation_lib

    prompts, texts = [], []
    for split in splits:
        path = os.path.join(data_root, split, f"{split}.json")
        if not os.path.exists(path):
            continue
        for rec in _read_json(path):
            conv_turns = rec["conversations"]
            for t in conv_turns:
                texts.append(t["value"].replace("<image>", "").strip())
            if split == "pretrain":
                # LLaVA stage 1 (`plain`): "<image>" + caption + "\n".
                prompts.append("<image>" + conv_turns[1]["value"] + "\n")
            conv = conversation_lib.conv_templates["vicuna_v1"].copy()
            for t in conv_turns:
                conv.append_message(conv.roles[0] if t["from"] == "human" else conv.roles[1], t["value"])
            prompts.append(conv.get_prompt())
    return {"prompts": prompts, "texts": texts}


def _tokenize_without_image(prompt: str, tokenizer) -> List[int]:
    """LLaVA's tokenisation of a prompt (`tokenizer_image_token`) with the image placeholder dropped."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    return [t for t in tokenizer_image_token(prompt, tokenizer) if t != IMAGE_TOKEN_INDEX]


def lm_adamw(params, lr: float):
    """The LLM warm-ups' optimiser: AdamW (0.9, 0.98), weight decay 0.01 on matrices only."""
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98))


def lm_step(model, opt, params, lr: float, **inputs) -> float:
    """One optimisation step of an LLM warm-up: set the LR, forward, backward, clip at 1.0, step; the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(**inputs).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def build_llm(out_dir: str, data_root: str, seed: int = 0, steps: int = 300, batch_size: int = 16,
              lr: float = 3e-3, vocab_size: int = 1000, progress: bool = True, scene_steps: int = 0,
              scene_lr: float = DEFAULTS["scene_lr"], scene_types: Optional[Sequence[str]] = None,
              **overrides) -> dict:
    """Train the tokenizer, warm up a small LlamaForCausalLM on the toy text, save both to `out_dir`.

    Then, with `scene_steps` > 0, the second warm-up stage (dualspeed_lab/toy/scene_warmup.py): questions about
    scenes written in word embeddings, of `scene_types` (default: the task's meta.json `question_types`).
    Returns {path, history, seconds, n_sequences, vocab_size, eval_loss (held-out val conversations),
    scene: {steps, types, seconds, first_loss, last_loss, accuracy (grid layout, fresh scenes)} or None}.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dualspeed_lab.tiny.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    corpus = llm_texts(data_root)
    train_tokenizer(out_dir, corpus["texts"] + corpus["prompts"], vocab_size=vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    seqs = [_tokenize_without_image(p, tokenizer) for p in corpus["prompts"]]
    val = llm_texts(data_root, ("val",))["prompts"]
    val_seqs = [_tokenize_without_image(p, tokenizer) for p in val[:64]]

    config = LlamaConfig(vocab_size=len(tokenizer), **dict(LLM_CONFIG, **overrides))
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    params = list(model.parameters())
    opt = lm_adamw(params, lr)
    gen = torch.Generator().manual_seed(seed + 3)
    pad = config.pad_token_id

    def collate(batch):
        n = max(len(s) for s in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, :len(s)] = torch.tensor(s)
            lab[i, :len(s)] = torch.tensor(s)
            att[i, :len(s)] = 1
        return ids, lab, att

    order: List[int] = []
    history = []
    warmup = max(1, min(30, steps // 10))
    model.train()
    bar = tqdm(range(steps), desc="LLM warm-up", unit="step", disable=not progress)
    for step in bar:
        while len(order) < batch_size:
            order.extend(torch.randperm(len(seqs), generator=gen).tolist())
        idx, order = order[:batch_size], order[batch_size:]
        ids, lab, att = collate([seqs[i] for i in idx])
        history.append(lm_step(model, opt, params, _lr_at(step, steps, lr, warmup),
                               input_ids=ids, attention_mask=att, labels=lab))
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    model.eval()
    eval_loss = None
    if val_seqs:
        with torch.no_grad():
            ids, lab, att = collate(val_seqs)
            eval_loss = float(model(input_ids=ids, attention_mask=att, labels=lab).loss)
    scene = None
    if scene_steps > 0:
        from dualspeed_lab.toy.scene_warmup import scene_accuracy, scene_warmup

        types = list(scene_types or (_read_json(os.path.join(data_root, "meta.json")) or {}).get(
            "question_types", QUESTION_TYPES))
        t1 = time.perf_counter()
        hist = scene_warmup(model, tokenizer, scene_steps, types, lr=scene_lr, seed=seed, data_root=data_root,
                            progress=progress)
        tail = [h["loss"] for h in hist[-50:]]
        scene = {"steps": scene_steps, "types": types, "lr": scene_lr, "seconds": round(time.perf_counter() - t1, 1),
                 "first_loss": hist[0]["loss"], "last_loss": sum(tail) / len(tail),
                 "accuracy": scene_accuracy(model, tokenizer, types, n=100, data_root=data_root)}
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out_dir)
    return {"path": out_dir, "history": history, "seconds": time.perf_counter() - t0, "n_sequences": len(seqs),
            "vocab_size": len(tokenizer), "eval_loss": eval_loss, "scene": scene}


# --------------------------------------------------------------------------------------------- build
def build_toy_models(data_root: str, out_root: str, seed: int = 0, vision_steps: int = DEFAULTS["vision_steps"],
                     vision_batch: int = DEFAULTS["vision_batch"], vision_lr: float = DEFAULTS["vision_lr"],
                     lm_steps: int = DEFAULTS["lm_steps"], lm_batch: int = DEFAULTS["lm_batch"],
                     lm_lr: float = DEFAULTS["lm_lr"], vocab_size: int = DEFAULTS["vocab_size"],
                     threads: Optional[int] = DEFAULTS["threads"], eval_split: Optional[str] = "val",
                     vision_overrides: Optional[dict] = None, llm_overrides: Optional[dict] = None,
                     progress: bool = True, scene_steps: int = DEFAULTS["scene_steps"],
                     scene_lr: float = DEFAULTS["scene_lr"]) -> dict:
    """Build both folders under `out_root`; returns dict(model=<vicuna-toy>, vision_tower=<clip folder>,
    report=<timings, losses, val patch accuracies>) and writes the report to `out_root/build_report.json`."""
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _build(data_root, out_root, seed, vision_steps, vision_batch, vision_lr, lm_steps, lm_batch, lm_lr,
                      vocab_size, eval_split, vision_overrides, llm_overrides, progress, scene_steps, scene_lr)
    finally:
        torch.set_num_threads(prev_threads)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _build(data_root, out_root, seed, vision_steps, vision_batch, vision_lr, lm_steps, lm_batch, lm_lr, vocab_size,
           eval_split, vision_overrides, llm_overrides, progress, scene_steps, scene_lr) -> dict:
    t0 = time.perf_counter()
    out_root = os.path.abspath(out_root)
    os.makedirs(out_root, exist_ok=True)
    vision_dir = os.path.join(out_root, VISION_DIR)
    llm_dir = os.path.join(out_root, LLM_DIR)
    report: dict = {"recipe": RECIPE, "seed": seed, "data": os.path.abspath(data_root), "threads": torch.get_num_threads(),
                    "vision_config": dict(VISION_CONFIG, **(vision_overrides or {})),
                    "llm_config": dict(LLM_CONFIG, **(llm_overrides or {})),
                    "vision": {"steps": vision_steps, "batch": vision_batch, "lr": vision_lr,
                               "recipe": {"crop_cycle": list(CROP_CYCLE), "full_fraction": FULL_FRACTION,
                                          "object_weight": OBJECT_WEIGHT, "glyph_weight": GLYPH_WEIGHT,
                                          "segment_loss_weight": SEGMENT_LOSS_WEIGHT,
                                          "segment_layers": list(SEGMENT_LAYERS),
                                          "image_loss_weight": IMAGE_LOSS_WEIGHT,
                                          "local_sharpness": LOCAL_SHARPNESS}},
                    "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
                    "llm": {"steps": lm_steps, "batch": lm_batch, "lr": lm_lr}}

    samples = load_vision_samples(data_root, ("pretrain", "train"))
    model = make_vision_model(seed, **(vision_overrides or {}))
    init_from_data(model, samples, seed=seed)
    res = pretrain_vision(model, samples, vision_steps, vision_batch, vision_lr, seed=seed, progress=progress)
    report["vision"].update(seconds=round(res["seconds"], 1), images_seen=res["images"],
                            pool_images=len(samples), first_loss=res["history"][0], last_loss=res["history"][-1],
                            last_parts=res["parts"])
    save_vision_tower(model, vision_dir)
    report["vision"]["processor_max_abs_diff"] = _check_processor(vision_dir, samples[0]["image"])

    llm = build_llm(llm_dir, data_root, seed=seed, steps=lm_steps, batch_size=lm_batch, lr=lm_lr,
                    vocab_size=vocab_size, progress=progress, scene_steps=scene_steps, scene_lr=scene_lr,
                    **(llm_overrides or {}))
    report["llm"].update(seconds=round(llm["seconds"], 1), n_sequences=llm["n_sequences"],
                         vocab_size=llm["vocab_size"], first_loss=llm["history"][0], last_loss=llm["history"][-1],
                         val_loss=llm["eval_loss"], scene_warmup=llm["scene"])
    report["build_seconds"] = round(time.perf_counter() - t0, 1)

    if eval_split and os.path.exists(os.path.join(data_root, eval_split, "objects.json")):
        t1 = time.perf_counter()
        val = load_vision_samples(data_root, (eval_split,))
        report["vision"][f"{eval_split}_patch_accuracy"] = patch_accuracy(model, res["heads"], val)
        report["eval_seconds"] = round(time.perf_counter() - t1, 1)
    with open(os.path.join(out_root, "build_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return {"model": llm_dir, "vision_tower": vision_dir, "report": report}


# --------------------------------------------------------------------------------------------- probe
def _template_regex(template: str):
    pattern = re.escape(template)
    for slot in re.findall(r"\{(\w+)\}", template):
        pattern = pattern.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>.+?)", 1)
    return re.compile("^" + pattern + "$")


def _question_slots(row: dict) -> List[str]:
    """Slot tokens of a question: e.g. ['a_color=red', 'a_shape=circle', 'b_color=blue', 'b_shape=star']."""
    question = row["text"].split("\n")[0]
    m = _template_regex(row["template"]).match(question)
    if m is None:
        raise ValueError(f"question {question!r} does not match its template {row['template']!r}")
    singular = {v: k for k, v in SHAPE_PLURALS.items()}
    out = []
    for k, v in m.groupdict().items():
        if k == "article":
            continue
        if k in ("a", "b"):
            c, s = v.split(" ", 1)
            out += [f"{k}_color={c}", f"{k}_shape={s}"]
        elif k == "shapes":
            out.append(f"shape={singular[v]}")
        else:
            out.append(f"{k}={v}")
    return out


def probe_tower(vision_tower: str, data_root: str, seed: int = 0, train_images: Optional[int] = None,
                eval_split: str = "val", steps: int = 1000, batch_size: int = 64, threads: Optional[int] = 1,
                progress: bool = True) -> dict:
    """Learnability check: freeze the tower, train a tiny attention-pooling probe (not an LLM) to answer the
    train questions from hidden_states[-2] patch features + template/slot embeddings; score per type on
    `eval_split` next to the image-blind baselines. Returns {'probe': {type: acc}, 'blind': table, ...}."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import CLIPVisionModel

    from dualspeed_lab.toy.blind_baseline import blind_table, load_questions

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tower = CLIPVisionModel.from_pretrained(vision_tower).eval()
    train_q = load_questions(os.path.join(data_root, "train", "questions.jsonl"))
    eval_q = load_questions(os.path.join(data_root, eval_split, "questions.jsonl"))
    train_imgs = sorted({q["image"] for q in train_q})
    if train_images:
        train_imgs = train_imgs[:train_images]
        keep = set(train_imgs)
        train_q = [q for q in train_q if q["image"] in keep]
    eval_imgs = sorted({q["image"] for q in eval_q})
    all_imgs = train_imgs + [p for p in eval_imgs if p not in set(train_imgs)]
    f_index = {p: i for i, p in enumerate(all_imgs)}
    feats = _encode(tower, [os.path.join(data_root, p) for p in all_imgs], progress=progress,
                    desc="probe: encode")
    feats = F.layer_norm(feats, feats.shape[-1:])  # (N, 576, D), frozen
    t_encode = time.perf_counter() - t0

    answers = sorted({a for v in ANSWERS.values() for a in v})
    a_index = {a.lower(): i for i, a in enumerate(answers)}
    templates = sorted({q["template"] for q in train_q + eval_q})
    t_index = {t: i for i, t in enumerate(templates)}
    type_mask = torch.full((len(QUESTION_TYPES), len(answers)), float("-inf"))
    for ti, t in enumerate(QUESTION_TYPES):
        for a in ANSWERS[t]:
            type_mask[ti, a_index[a.lower()]] = 0.0

    def refs_of(q):
        """[(colour index | -1, shape index | -1)] for the referents (a, b): one for most types."""
        ref = {"": [-1, -1], "a_": [-1, -1], "b_": [-1, -1]}
        for slot in _question_slots(q):
            key, value = slot.split("=")
            role, attr = (key[:2], key[2:]) if key[:2] in ("a_", "b_") else ("", key)
            ref[role][0 if attr == "color" else 1] = (COLOR_NAMES if attr == "color" else SHAPES).index(value)
        return (ref["a_"], ref["b_"]) if ref["a_"] != [-1, -1] else (ref[""], [-1, -1])

    def encode_rows(rows):
        img = torch.tensor([f_index[q["image"]] for q in rows])
        tmpl = torch.tensor([t_index[q["template"]] for q in rows])
        refs = torch.tensor([refs_of(q) for q in rows])  # (n, 2 referents, (colour, shape))
        typ = torch.tensor([QUESTION_TYPES.index(q["type"]) for q in rows])
        ans = torch.tensor([a_index[q["answer"].lower()] for q in rows])
        return img, tmpl, refs, typ, ans

    d = feats.shape[-1]
    dp, ht = 64, 32
    grid = torch.arange(GRID, dtype=torch.float32) / (GRID - 1)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).view(GRID * GRID, 2)  # (row, col)

    class Probe(nn.Module):
        """Find each referent with a query built from SHARED colour / shape embeddings (score of a patch =
        projected feature . (E_color[c] + E_shape[s])), pool the projected features, positions, soft counts
        and the best score over its patches, and answer with a small MLP (plus a template embedding).
        Shared embeddings keep it from memorising questions: it must read the answers from the features."""

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(d, dp)
            self.e_color = nn.Embedding(len(COLOR_NAMES) + 1, dp, padding_idx=len(COLOR_NAMES))
            self.e_shape = nn.Embedding(len(SHAPES) + 1, dp, padding_idx=len(SHAPES))
            self.bias = nn.Parameter(torch.zeros(1))
            self.tmpl = nn.Embedding(len(templates), ht)
            self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(ht + 2 * (dp + 4) + 2, 128), nn.GELU(),
                                     nn.Linear(128, len(answers)))

        def forward(self, x, tmpl, refs):
            x = self.proj(x)
            feats_out = [self.tmpl(tmpl)]
            where = []
            for r in range(2):
                c = refs[:, r, 0].masked_fill(refs[:, r, 0] < 0, len(COLOR_NAMES))
                sh = refs[:, r, 1].masked_fill(refs[:, r, 1] < 0, len(SHAPES))
                key = self.e_color(c) + self.e_shape(sh)
                s = torch.einsum("bnd,bd->bn", x, key) / math.sqrt(dp)
                a = s.softmax(-1)
                pooled = torch.einsum("bn,bnd->bd", a, x)
                wh = a @ coords
                mass = torch.sigmoid(s + self.bias).sum(-1, keepdim=True) / 36.0
                feats_out += [pooled, wh, mass, s.max(-1, keepdim=True).values]
                where.append(wh)
            feats_out.append(where[0] - where[1])
            return self.mlp(torch.cat(feats_out, -1))

    tr = encode_rows(train_q)
    ev = encode_rows(eval_q)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 10)
        probe = Probe()
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed + 11)
    n = len(train_q)
    order: List[int] = []
    t1 = time.perf_counter()
    probe.train()
    for step in tqdm(range(steps), desc="probe: train", unit="step", disable=not progress):
        while len(order) < batch_size:
            order.extend(torch.randperm(n, generator=gen).tolist())
        idx, order = torch.tensor(order[:batch_size]), order[batch_size:]
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, 2e-3, 50)
        logits = probe(feats[tr[0][idx]], tr[1][idx], tr[2][idx]) + type_mask[tr[3][idx]]
        loss = F.cross_entropy(logits, tr[4][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t_train = time.perf_counter() - t1

    probe.eval()

    def accuracy(data):
        with torch.no_grad():
            pred = torch.cat([(probe(feats[data[0][i:i + 256]], data[1][i:i + 256], data[2][i:i + 256])
                               + type_mask[data[3][i:i + 256]]).argmax(-1) for i in range(0, len(data[4]), 256)])
        ok = pred == data[4]
        out = {}
        for ti, t in enumerate(QUESTION_TYPES):
            m = data[3] == ti
            if m.any():
                out[t] = 100.0 * float(ok[m].float().mean())
        out["overall"] = 100.0 * float(ok.float().mean())
        return out

    res = {"probe": accuracy(ev), "probe_train": accuracy(tr),
           "blind": {t: {k: (100.0 * v if k != "n" else v) for k, v in row.items()}
                     for t, row in blind_table(train_q, eval_q).items()},
           "chance": {t: 100.0 * CHANCE[t] for t in QUESTION_TYPES},
           "n_train_questions": n, "n_eval_questions": len(eval_q), "train_images": len(train_imgs),
           "encode_seconds": round(t_encode, 1), "train_seconds": round(t_train, 1)}
    return res


def format_probe(res: dict) -> str:
    """Markdown table: probe vs image-blind (best rule) vs chance, per type, in %."""
    lines = ["| type | n | probe (val) | probe (train) | blind best | chance |", "|---|---:|---:|---:|---:|---:|"]
    for t in list(QUESTION_TYPES) + ["overall"]:
        if t not in res["probe"]:
            continue
        b = res["blind"].get(t, {})
        lines.append(f"| {t} | {b.get('n', '')} | {res['probe'][t]:.1f} | {res['probe_train'].get(t, float('nan')):.1f} "
                     f"| {b.get('best', float('nan')):.1f} | {res['chance'].get(t, float('nan')) if t != 'overall' else float('nan'):.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Pretrain the toy CLIP tower and warm up the toy Vicuna LLM offline (dualspeed_lab/toy/task.py data).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="the toy task folder (dualspeed_lab/toy/task.py --out)")
    parser.add_argument("--out", required=True, help=f"output folder: <out>/{VISION_DIR}, <out>/{LLM_DIR}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-steps", type=int, default=DEFAULTS["vision_steps"])
    parser.add_argument("--vision-batch", type=int, default=DEFAULTS["vision_batch"])
    parser.add_argument("--vision-lr", type=float, default=DEFAULTS["vision_lr"])
    parser.add_argument("--lm-steps", type=int, default=DEFAULTS["lm_steps"])
    parser.add_argument("--lm-batch", type=int, default=DEFAULTS["lm_batch"])
    parser.add_argument("--lm-lr", type=float, default=DEFAULTS["lm_lr"])
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS["vocab_size"])
    parser.add_argument("--scene-steps", type=int, default=DEFAULTS["scene_steps"],
                        help="steps of the LLM's scene warm-up (dualspeed_lab/toy/scene_warmup.py; 0: text warm-up only)")
    parser.add_argument("--scene-lr", type=float, default=DEFAULTS["scene_lr"], help="scene warm-up peak lr")
    parser.add_argument("--vision-width", type=int, default=VISION_CONFIG["hidden_size"],
                        help="CLIP hidden size (MLP 4x)")
    parser.add_argument("--vision-layers", type=int, default=VISION_CONFIG["num_hidden_layers"],
                        help="CLIP layers, the last one an identity (LLaVA reads hidden_states[-2])")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch CPU threads")
    parser.add_argument("--no-eval", action="store_true", help="skip the val patch accuracies")
    parser.add_argument("--probe", action="store_true", help="also run the learnability probe (frozen tower)")
    parser.add_argument("--probe-only", action="store_true", help="only run the probe on an existing --out")
    parser.add_argument("--probe-steps", type=int, default=1000)
    parser.add_argument("--probe-train-images", type=int, default=None, help="train images for the probe (all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    out = {"model": os.path.join(os.path.abspath(args.out), LLM_DIR),
           "vision_tower": os.path.join(os.path.abspath(args.out), VISION_DIR)}
    if not args.probe_only:
        vo = {}
        if args.vision_width != VISION_CONFIG["hidden_size"]:
            vo.update(hidden_size=args.vision_width, intermediate_size=4 * args.vision_width,
                      projection_dim=args.vision_width)
        if args.vision_layers != VISION_CONFIG["num_hidden_layers"]:
            vo["num_hidden_layers"] = args.vision_layers
        out = build_toy_models(args.data, args.out, seed=args.seed, vision_steps=args.vision_steps,
                               vision_batch=args.vision_batch, vision_lr=args.vision_lr, lm_steps=args.lm_steps,
                               lm_batch=args.lm_batch, lm_lr=args.lm_lr, vocab_size=args.vocab_size,
                               threads=args.threads, eval_split=None if args.no_eval else "val",
                               vision_overrides=vo, progress=not args.quiet, scene_steps=args.scene_steps,
                               scene_lr=args.scene_lr)
        rep = out["report"]
        print(f"vision tower: {out['vision_tower']}  ({rep['vision']['seconds']} s, "
              f"loss {rep['vision']['first_loss']:.3f} -> {rep['vision']['last_loss']:.3f})")
        print(f"LLM:          {out['model']}  ({rep['llm']['seconds']} s, loss {rep['llm']['first_loss']:.3f} -> "
              f"{rep['llm']['last_loss']:.3f}, val {rep['llm']['val_loss']:.3f}, vocab {rep['llm']['vocab_size']})")
        sw = rep["llm"].get("scene_warmup")
        if sw:
            print(f"scene warm-up: {sw['steps']} steps on {sw['types']} ({sw['seconds']} s, loss "
                  f"{sw['first_loss']:.3f} -> {sw['last_loss']:.3f}), accuracy on fresh scenes {sw['accuracy']}")
        print(f"build: {rep['build_seconds']} s")
        acc = rep["vision"].get("val_patch_accuracy")
        if acc:
            print("val patch accuracy (%):")
            for k, v in acc.items():
                print(f"  {k:28s} {v:6.1f}" if "offset" not in k else f"  {k:28s} {v:6.3f} (mean L1, patches)")
    if args.probe or args.probe_only:
        res = probe_tower(out["vision_tower"], args.data, seed=args.seed, steps=args.probe_steps,
                          train_images=args.probe_train_images, threads=args.threads, progress=not args.quiet)
        print(f"probe: {res['n_train_questions']} train questions ({res['train_images']} images), "
              f"encode {res['encode_seconds']} s, train {res['train_seconds']} s")
        print(format_probe(res))
        with open(os.path.join(args.out, "probe_report.json"), "w") as f:
            json.dump(res, f, indent=1)
        out["probe"] = res
    return out


if __name__ == "__main__":
    main()
