"""Second stage of the toy LLM's warm-up: answering questions about scenes written in its own word embeddings.

Why: a real LLaVA starts from Vicuna, an LLM that already knows how to find an answer in its context; LLaVA's
SFT then mostly teaches it where in the visual tokens to look. The 3-layer, 128-wide toy LLM has no such
skill, and learning it inside SFT takes thousands of steps (docs/reproduce.md, "Why the baseline stayed at
chance"), far beyond a CPU preset. So, as a stand-in for the base LLM's in-context reading, the toy LLM is
warmed up on the toy questions asked about scenes that are given as WORDS, not pixels: each object becomes
the sum of the word embeddings of its colour, shape, size and letter ("none" without one), halved.

Layouts of the scene in the sequence (where LLaVA puts the image tokens of a vicuna_v1 conversation):
  grid     576 tokens, one per 14-px patch of the 24x24 grid in row-major order (as the projected CLIP patches
           come): the owning object's vector, zero on the background. This is what LLaVA's layout looks like.
  compact  one token per object, in cell order: 20x shorter, so far more questions per CPU second; it
           teaches the lookup, the grid steps teach the layout.
The scenes are fresh draws of dualspeed_lab/toy/scenes.make_scene (never a scene of the task's val/test splits), so
the LLM can learn to read, not memorise. No pixel and no vision tower is involved: the warm-up stays
text-only in the sense that every input vector is made of word embeddings. What SFT must still learn is
to map the CLIP patch features into this space (the projector) and to cope with the tower's noise.

    history = scene_warmup(model, tokenizer, steps, types, lr=1e-3, seed=0, data_root=task_dir)   # in place
    scene_accuracy(model, tokenizer, types, n=100, data_root=task_dir)     # {type: %, 'all': %}

dualspeed_lab/toy/lm_warmup.build_llm runs it after the text warm-up (`scene_steps` > 0). `lm_probe.py --oracle`
feeds the same grid vectors to check an LLM without any SFT run.
"""
from __future__ import annotations

import itertools
import random
import weakref
from typing import Callable, Dict, List, Optional, Sequence

import torch

from dualspeed_lab.toy.optim import lm_adamw, lm_step, lr_at  # the text warm-up's schedule, optimiser, step
from dualspeed_lab.toy.questions import QUESTION_TYPES, SHORT_ANSWER_SUFFIX, questions_for
from dualspeed_lab.toy.render import ground_truth
from dualspeed_lab.toy.scenes import capitalized, make_scene, scene_key

LAYOUTS = ("grid", "compact")


class WordVectors:
    """Mean word-piece embedding of a word as it appears after a space (e.g. ' circle'), from `weight`
    (live: a trainable embedding matrix keeps its gradient)."""

    def __init__(self, weight: torch.Tensor, tokenizer):
        self.weight, self.tokenizer = weight, tokenizer
        self._ids: Dict[str, List[int]] = {}

    def __call__(self, word: str) -> torch.Tensor:
        if word not in self._ids:
            self._ids[word] = self.tokenizer(" " + word, add_special_tokens=False).input_ids
        return self.weight[self._ids[word]].mean(0)


def object_vectors(objects: Sequence[dict], word: Callable[[str], torch.Tensor]) -> List[torch.Tensor]:
    """One vector per object: (colour + shape + size + letter|'none') / 2 in the LLM's input space."""
    return [(word(o["color"]) + word(o["shape"]) + word(o["size"]) + word(o["glyph"] or "none")) / 2
            for o in objects]


def scene_tokens(objects: Sequence[dict], patch_map: Optional[Sequence[str]], word, layout: str) -> torch.Tensor:
    """(N, D) visual stand-in tokens of one scene (see the module docstring for the layouts)."""
    vecs = object_vectors(objects, word)
    if layout == "compact":
        return torch.stack(vecs)
    if layout != "grid":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    zero = torch.zeros_like(vecs[0])
    return torch.stack([zero if ch == "." else vecs[int(ch)] for ch in "".join(patch_map)])


# Per tokenizer (weakly held, so a freed tokenizer's id can never serve another's entries): the templates
# repeat, a few hundred distinct conversations in all.
_CONV_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def conversation_ids(questions: Sequence[dict], tokenizer):
    """(input_ids, labels) of a vicuna_v1 QA conversation as the task's train.json writes it, tokenised by
    LLaVA's own preprocessing (one IMAGE_TOKEN_INDEX; loss on the answers and their </s>)."""
    from llava import conversation as conversation_lib
    from llava.train.preprocess import preprocess

    cache = _CONV_CACHE.setdefault(tokenizer, {})
    key = tuple((q["question"], q["answer"]) for q in questions)
    if key not in cache:
        conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
        conv = []
        for r, q in enumerate(questions):
            text = f"{q['question']}\n{SHORT_ANSWER_SUFFIX}"
            conv += [{"from": "human", "value": f"<image>\n{text}" if r == 0 else text},
                     {"from": "gpt", "value": capitalized(q["answer"])}]
        enc = preprocess([conv], tokenizer, has_image=True)
        cache[key] = (enc["input_ids"][0], enc["labels"][0])
    return cache[key]


def splice(ids: torch.Tensor, labels: torch.Tensor, visual: torch.Tensor, embed: torch.nn.Module):
    """The image placeholder replaced by `visual` (as LlavaMetaForCausalLM does): (embeds, labels)."""
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    p = int((ids == IMAGE_TOKEN_INDEX).nonzero())
    x = torch.cat([embed(ids[:p]), visual, embed(ids[p + 1:])])
    y = torch.cat([labels[:p], torch.full((len(visual),), IGNORE_INDEX), labels[p + 1:]])
    return x, y


def pad_batch(pairs):
    """Right-padded (inputs_embeds, labels, attention_mask) from [(embeds, labels)]."""
    from llava.constants import IGNORE_INDEX

    n = max(len(x) for x, _ in pairs)
    x = pairs[0][0].new_zeros(len(pairs), n, pairs[0][0].shape[-1])
    y = torch.full((len(pairs), n), IGNORE_INDEX)
    mask = torch.zeros(len(pairs), n, dtype=torch.long)
    for i, (s, lab) in enumerate(pairs):
        x[i, :len(s)], y[i, :len(lab)], mask[i, :len(s)] = s, lab, 1
    return x, y, mask


def held_out_keys(data_root: Optional[str]) -> set:
    """Scene keys of the task's val/test splits (the warm-up never draws them)."""
    import json
    import os

    keys: set = set()
    for split in ("val", "test"):
        path = os.path.join(data_root or "", split, "objects.json")
        if data_root and os.path.exists(path):
            with open(path) as f:
                keys |= {scene_key(gt) for gt in json.load(f).values()}
    return keys


def draw(rng: random.Random, types: Sequence[str], exclude: set):
    """A fresh scene with one question of each of `types` it allows (at least one): (objects, patch_map, qs)."""
    while True:
        scene = make_scene(rng)
        if scene_key(scene) in exclude:
            continue
        questions = questions_for(scene, rng, len(types), types)
        if questions:
            return scene, questions


def scene_warmup(model, tokenizer, steps: int, types: Sequence[str], lr: float = 1e-3, batch_size: int = 8,
                 compact_batch: int = 32, grid_fraction: float = 0.3, noise: float = 0.0, seed: int = 0,
                 data_root: Optional[str] = None, progress: bool = True) -> List[dict]:
    """Train `model` (a LlamaForCausalLM, in place) for `steps` AdamW steps; returns [{step, layout, loss}].

    A step is a grid batch (`batch_size` scenes) with probability `grid_fraction`, else a compact one
    (`compact_batch` scenes); every scene carries one question of each type it allows (multi-turn).
    `noise` > 0 adds Gaussian noise of that std, relative to the mean object-vector norm / sqrt(D), to every
    visual token (background included): projected CLIP patches are never the exact word vectors."""
    from tqdm import tqdm

    unknown = set(types) - set(QUESTION_TYPES)
    if not types or unknown:
        raise ValueError(f"types must be a non-empty subset of {QUESTION_TYPES}, got {list(types)}")
    rng, exclude = random.Random(f"scene-warmup/{seed}"), held_out_keys(data_root)
    gen = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings()
    word = WordVectors(embed.weight, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = lm_adamw(params, lr)
    warmup = max(1, min(100, steps // 10))
    history: List[dict] = []
    model.train()
    bar = tqdm(range(steps), desc="LLM scene warm-up", unit="step", disable=not progress)
    for step in bar:
        layout = "grid" if rng.random() < grid_fraction else "compact"
        pairs = []
        for _ in range(batch_size if layout == "grid" else compact_batch):
            scene, questions = draw(rng, types, exclude)
            patch_map = ground_truth(scene)["patch_map"] if layout == "grid" else None
            ids, labels = conversation_ids(questions, tokenizer)
            visual = scene_tokens(scene["objects"], patch_map, word, layout)
            if noise > 0:
                scale = visual.detach().norm(dim=-1).max() / visual.shape[-1] ** 0.5
                visual = visual + noise * scale * torch.randn(visual.shape, generator=gen)
            pairs.append(splice(ids, labels, visual, embed))
        x, y, mask = pad_batch(pairs)
        loss = lm_step(model, opt, params, lr_at(step, steps, lr, warmup),
                       inputs_embeds=x, attention_mask=mask, labels=y)
        history.append({"step": step, "layout": layout, "loss": loss})
        if progress:
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", layout=layout)
    model.eval()
    return history


@torch.no_grad()
def scene_accuracy(model, tokenizer, types: Sequence[str], n: int = 100, layout: str = "grid", seed: int = 1,
                   data_root: Optional[str] = None) -> Dict[str, float]:
    """Teacher-forced exact match (%) per type on `n` fresh scenes (each answer token and its </s>)."""
    import collections

    from llava.constants import IGNORE_INDEX

    rng, exclude = random.Random(f"scene-warmup-eval/{seed}"), held_out_keys(data_root)
    embed, hits, count = model.get_input_embeddings(), collections.Counter(), collections.Counter()
    word = WordVectors(embed.weight, tokenizer)
    model.eval()
    for _ in range(n):
        scene, questions = draw(rng, types, exclude)
        patch_map = ground_truth(scene)["patch_map"] if layout == "grid" else None
        ids, labels = conversation_ids(questions, tokenizer)
        x, y = splice(ids, labels, scene_tokens(scene["objects"], patch_map, word, layout), embed)
        pred = model(inputs_embeds=x[None]).logits[0, :-1].argmax(-1)
        tgt = y[1:]
        # answers are separated by ignored spans: one run of supervised positions per question
        runs = [list(g) for k, g in itertools.groupby(range(len(tgt)), key=lambda i: int(tgt[i]) != IGNORE_INDEX)
                if k]
        for q, run in zip(questions, runs):
            hits[q["type"]] += bool((pred[run] == tgt[run]).all())
            count[q["type"]] += 1
    acc = {t: round(100 * hits[t] / count[t], 1) for t in sorted(count)}
    acc["all"] = round(100 * sum(hits.values()) / max(1, sum(count.values())), 1)
    return acc
