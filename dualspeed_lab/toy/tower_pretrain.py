"""Pretraining of the toy CLIP tower (dualspeed_lab/toy/tower.py) with DENSE per-patch supervision.

From each image's `patch_map` (objects.json): for every patch, the owning object's colour, shape, glyph
(none / letter), size (or "background"), the letter under the patch (`glyph_local`) and the patch's offset to
its object's centre, read by linear heads (`VisionHeads`) from `hidden_states[-2]` (the layer LLaVA reads with
`mm_vision_select_layer=-2`, patch tokens only); a light image-level objective (per-colour / per-shape counts,
number of objects, which letters occur) reads the mean of the same patch tokens. The build uses only pretrain +
train images (never val / test) and writes per-head patch accuracies on val (`patch_accuracy`) to
`<out>/build_report.json`. What makes the small CPU budget go far (each measured on val, see the report of the
task):
* cell-aligned CROPS: objects never straddle the 84-px cells, so 1-cell (6x6 patches) and 2x2-cell
  crops, drawn with weight 0.25 + objects^2, give whole objects for a fraction of the tokens; a crop's
  patches keep their own position embeddings (`read_layer(pos_ids=...)`); the last 15 % of the steps
  use full images, as LLaVA does;
* ATTENTION SUPERVISION (`_segment_loss`): head 0 of layers 2 and 3 learns to attend, from an object
  patch, uniformly over that object's patches: object-level pooling (what shape / glyph / size /
  counting need) that does not leak into other objects of the same colour;
* a data-aware, ConViT-like init (`tower.init_from_data`): PCA-whitened patch embedding, a 2-D sin/cos
  position code, layers 1-2 starting as shifted-copy attention (a 3x3 neighbourhood);
* object patches weighted 4x, glyph patches 16x in `glyph_local`.
The heads are dropped after pretraining.

    samples = load_vision_samples(data_root, ("pretrain", "train"))
    res = pretrain_vision(model, samples, steps, batch_size, lr, seed=seed)   # trains model in place
    patch_accuracy(model, res["heads"], load_vision_samples(data_root, ("val",)))
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Sequence

import torch

from dualspeed_lab.toy.optim import lr_at
from dualspeed_lab.toy.scenes import CELLS, COLOR_NAMES, GLYPHS, GRID, MAX_OBJECTS, PATCH, SHAPES, SIZES
from dualspeed_lab.toy.tower import decode_images, load_pixels, normalize_pixels, read_layer, vision_body

# Per-patch heads: name -> number of classes (0 = background everywhere).
PATCH_HEADS = {"color": 1 + len(COLOR_NAMES), "shape": 1 + len(SHAPES),
               "glyph": 2 + len(GLYPHS),  # 1 = object without a glyph, 2.. = letters
               "size": 1 + len(SIZES)}
COUNT_CLASSES = 4  # image-level counts 0, 1, 2, 3+
GLYPH_COVER_MIN = 0.2  # glyph_local: a patch the glyph box covers at least this much
OBJECT_WEIGHT = 4.0  # per-patch CE weight of object patches (background: 1)
GLYPH_WEIGHT = 16.0  # glyph_local CE weight of the patches a glyph covers

__all__ = ["PATCH_HEADS", "COUNT_CLASSES", "GLYPH_COVER_MIN", "OBJECT_WEIGHT", "GLYPH_WEIGHT", "IMAGE_LOSS_WEIGHT",
           "OFFSET_LOSS_WEIGHT", "SEGMENT_LOSS_WEIGHT", "SEGMENT_LAYERS", "CROP_CYCLE", "FULL_FRACTION",
           "load_vision_samples", "stack_labels", "VisionHeads", "vision_loss", "pretrain_vision",
           "patch_accuracy"]


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


def stack_labels(batch: Sequence[dict]) -> dict:
    import numpy as np
    import torch

    keys = batch[0]["labels"].keys()
    return {k: torch.from_numpy(np.stack([s["labels"][k] for s in batch])) for k in keys}


# ------------------------------------------------------------------------------------- heads, losses
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

    layers = vision_body(model).encoder.layers
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

    h, inputs = read_layer(model, pixel_values, pos_ids, return_inputs=True)
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
        images = decode_images([s["image"] for s in batch])
        labels = stack_labels(batch)
        if cells == CELLS:
            pixels, pos_ids = images, None
        else:
            pixels, pos_ids, labels = _crop_batch(images, labels, cells, per_image, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        loss, parts = vision_loss(model, heads, normalize_pixels(pixels), labels, pos_ids, return_parts=True)
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
            feats = read_layer(model, load_pixels([s["image"] for s in batch]))[:, 1:]
            out = heads(feats)
            lab = stack_labels(batch)
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
