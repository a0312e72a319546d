"""Learnability check of a toy CLIP tower: do its frozen patch features carry the answers of the toy task?

A tiny attention-pooling probe (referents found with SHARED colour / shape embeddings dotted with the
projected patch features -> pooled features, attended position, soft count, best score -> MLP -> answer) is
trained on the train questions and scored per question type on val, next to the image-blind baseline
(dualspeed_lab/toy/blind_baseline.py). Not an LLM: it tells whether the tower is the bottleneck.

    res = probe_tower("<out>/clip-vit-toy-patch14-336", data_root, steps=1000)
    print(format_probe(res))

From the shell: `python -m dualspeed_lab.toy.models --data <task> --out <out> --probe-only` (or `--probe` after a
build) runs it and writes <out>/probe_report.json.
"""
from __future__ import annotations

import math
import os
import re
import time
from typing import List, Optional

from dualspeed_lab.toy.blind_baseline import blind_table, load_questions
from dualspeed_lab.toy.optim import lr_at
from dualspeed_lab.toy.questions import ANSWERS, CHANCE, QUESTION_TYPES
from dualspeed_lab.toy.scenes import COLOR_NAMES, GRID, SHAPE_PLURALS, SHAPES
from dualspeed_lab.toy.tower import encode_patches

__all__ = ["probe_tower", "format_probe"]


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
    feats = encode_patches(tower, [os.path.join(data_root, p) for p in all_imgs], progress=progress,
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
            g["lr"] = lr_at(step, steps, 2e-3, 50)
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
