"""The toy CLIP vision tower: its construction, data-aware init, pixels, forward up to the layer LLaVA reads, saving.

A small `transformers.CLIPVisionModel` (336 px, patch 14, so 24x24 = 576 patch tokens + CLS = 577; width 128,
4 layers, 4 heads, MLP 512: `config.VISION_CONFIG`). The LAST encoder layer is never read by LLaVA, so it is
not trained: it is saved as an exact identity (zero attention out_proj and MLP fc2), hence
`last_hidden_state == hidden_states[-2]` and `pooler_output` is the post-LayerNorm CLS of the layer LLaVA reads
(nothing in the saved tower is random). The folder holds the `CLIPVisionModel` and a `CLIPImageProcessorPil`
config (shortest edge 336, centre crop 336, OpenAI CLIP mean/std, as dualspeed_lab/tiny/vision.py). Toy images
are 336x336 squares, so LLaVA-1.5's `pad` and the processor's resize/crop are the identity and the pixels
reduce to `(x / 255 - mean) / std`, which training uses directly (`load_pixels`; the build checks it against
the saved processor with `check_processor`, `processor_max_abs_diff` in build_report.json; the value measured
before is in docs/toy_findings.md).

    model = make_vision_model(seed)                  # fresh tower, last layer an identity
    init_from_data(model, samples, seed=seed)        # PCA patch embedding, 2-D position code, local attention
    h = read_layer(model, load_pixels(paths))        # hidden_states[-2] (B, 577, D), last layer skipped
    save_vision_tower(model, out_dir)                # + the CLIP-336 processor config

The pretraining itself (labels, heads, losses, crops, the loop) is in dualspeed_lab/toy/tower_pretrain.py.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from dualspeed_lab.toy.config import VISION_CONFIG

__all__ = ["POS_DIMS", "LOCAL_OFFSETS", "LOCAL_SHARPNESS", "decode_images", "normalize_pixels", "load_pixels",
           "make_vision_model", "init_from_data", "vision_body", "read_layer", "encode_patches",
           "save_vision_tower", "check_processor"]


# --------------------------------------------------------------------------------------------- pixels
def _clip_mean_std():
    from dualspeed_lab.tiny.vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def decode_images(paths: Sequence[str]):
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


def normalize_pixels(x):
    """uint8 (B, 3, H, W) -> CLIP-normalised float32, exactly CLIPImageProcessorPil's rescale + normalize."""
    mean, std = _clip_mean_std()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean_t) / std_t


def load_pixels(paths: Sequence[str]):
    """Normalised pixel tensors (B, 3, 336, 336): what CLIPImageProcessorPil gives for 336x336 images."""
    return normalize_pixels(decode_images(paths))


# ------------------------------------------------------------------------------------------- model
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
    vm = vision_body(model)
    d = model.config.hidden_size
    p = model.config.patch_size
    g = model.config.image_size // p
    n_heads = model.config.num_attention_heads
    head_dim = d // n_heads
    pos_dims = POS_DIMS if position else 0
    if pca:
        gen = torch.Generator().manual_seed(seed + 5)
        idx = torch.randperm(len(samples), generator=gen)[:n_images].tolist()
        x = load_pixels([samples[i]["image"] for i in idx])  # (n, 3, H, W)
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

    layer = vision_body(model).encoder.layers[-1]
    with torch.no_grad():
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    layer.requires_grad_(False)


def vision_body(model):
    """The module holding embeddings / pre_layrnorm / encoder (transformers 5 flattens `vision_model`)."""
    return getattr(model, "vision_model", model)


def read_layer(model, pixel_values, pos_ids=None, return_inputs: bool = False):
    """hidden_states[-2] (B, 1 + n, D) without running the last layer (identical to the full forward's).

    `pixel_values` may be a patch-aligned crop (B, 3, 14 h, 14 w) of the 336 canvas; `pos_ids` (B, h w) are
    then its patches' indices in the full 24x24 grid (0-based), whose position embeddings they get. With
    `pos_ids=None` the input must be the full canvas, and this equals CLIPVisionModel's hidden_states[-2].
    `return_inputs`: also return the input of every layer run (for the attention supervision).
    """
    vm = vision_body(model)
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


# ---------------------------------------------------------------------------------------- features
def encode_patches(model, paths: Sequence[str], batch_size: int = 16, progress: bool = False, desc: str = "encode"):
    """hidden_states[-2] patch tokens (N, 576, D) of the images, in batches (no grad)."""
    import torch
    from tqdm import tqdm

    feats = []
    with torch.no_grad():
        for i in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress):
            feats.append(read_layer(model, load_pixels(paths[i:i + batch_size]))[:, 1:].clone())
    return torch.cat(feats) if feats else torch.zeros(0)


# ------------------------------------------------------------------------------------------- save
def save_vision_tower(model, out_dir: str) -> str:
    """Save the CLIPVisionModel (heads are not part of it) + the CLIP-336 PIL processor config."""
    from dualspeed_lab.tiny.vision import make_image_processor

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    make_image_processor().save_pretrained(out_dir)
    return out_dir


def check_processor(out_dir: str, image_path: str) -> float:
    """Max |processor(image) - load_pixels(image)| for a saved tower folder (should be ~1e-6)."""
    from PIL import Image

    from llava.model.multimodal_encoder.clip_encoder import load_clip_image_processor

    proc = load_clip_image_processor(out_dir)
    with Image.open(image_path) as im:
        ref = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    return float((ref.float() - load_pixels([image_path])).abs().max())
