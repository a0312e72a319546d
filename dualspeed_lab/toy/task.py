#!/usr/bin/env python
"""A synthetic multimodal task whose answers need LOCAL visual evidence (DualSpeed's pruning testbed).

Scenes of 3-6 coloured shapes, about half of them carrying a letter, on a 336x336 canvas
(dualspeed_lab/toy/scenes.py), drawn by dualspeed_lab/toy/render.py, with closed-vocabulary questions whose
answers need the pixels of one or two objects (dualspeed_lab/toy/questions.py). This module draws the splits
and writes them in LLaVA's formats. The public names of those three modules are re-exported here, so
`from dualspeed_lab.toy.task import build_task, CHANCE, is_correct` (or `make_scene`, `render`, ...) works.

Layout written by `build_task(root)` (image paths are relative to `root`, i.e. `--image_folder root`):

    root/meta.json                          seed, sizes, vocabularies, geometry, font backend, versions,
                                            file paths relative to root (the folder can be moved)
    root/<split>/images/000/000000.jpg      JPEG q95, 4:4:4, fixed encoder settings
    root/pretrain/pretrain.json             LLaVA caption records (`plain` format: human '<image>' + prompt,
                                            gpt `caption_for(scene)`)
    root/<qa split>/<split>.json            LLaVA conversations: 1-3 QA turns (train; up to 3 for val/test,
                                            see `questions_for`), <image> in the first human turn
    root/<qa split>/questions.jsonl         one line a question: {question_id, image, text, answer, type,
                                            template, objects}  (model_vqa_loader's format + the answer)
    root/<split>/objects.json               {image: {id, background, objects: [{color, shape, size, glyph,
                                            center, r, cell, box, patch_box, patches, glyph_box}],
                                            patch_map}} (see `ground_truth`)

QA splits are train, val and test; pretrain is captions only. Split seeds are disjoint strings, and
`build_task` additionally keeps any test/val scene (same cells, attributes and glyphs) out of val/train/
pretrain. Everything derives from `random.Random` instances seeded from strings (sha512, independent of
PYTHONHASHSEED); the same Pillow build gives byte-identical images and JSON.

    python -m dualspeed_lab.toy.task --out playground/toy --seed 0 --pretrain 2000 --train 2000 --val 200 --test 500
    python -m dualspeed_lab.toy.task --out playground/toy-cs --types color shape    # only these question types

From Python: `build_task(root, seed=0, sizes={"pretrain": 0, "train": 30, "val": 6, "test": 20},
types=("color", "shape"))` (missing sizes: DEFAULT_SIZES), or `iter_split(split, n)` for samples without files.

`--types` (build_task(types=...)) restricts the questions: the reproduction presets ask color and shape only,
the types a 3-layer toy LLM learns on a CPU (docs/reproduce.md). With every type the task is byte-identical
to one built before the option existed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from dualspeed_lab.toy.questions import (ANSWERS, CHANCE, COUNT_ANSWERS, NEAR_MISS_PROB, QUESTION_TYPES,
                                         SHORT_ANSWER_SUFFIX, is_correct, normalize_answer, questions_for)
from dualspeed_lab.toy.render import GLYPH_SCALE, PATCH_COVER_MIN, glyph_backend, ground_truth, object_mask, render
from dualspeed_lab.toy.scenes import (BACKGROUND_STYLES, BACKGROUNDS, CANVAS, CELL, CELL_MARGIN, CELLS, COL_WORDS,
                                      COLOR_NAMES, COLORS, GLYPH_PROB, GLYPHS, GRID, GROUP_PROB, MAX_OBJECTS,
                                      MIN_OBJECTS, NUMBER_WORDS, PATCH, ROW_WORDS, SEED_PREFIX, SHAPE_PLURALS, SHAPES,
                                      SIZE_RADII, SIZES, caption_for, capitalized, make_scene, scene_key)

JPEG_QUALITY = 95
SPLITS: Tuple[str, ...] = ("pretrain", "train", "val", "test")
QA_SPLITS: Tuple[str, ...] = ("train", "val", "test")
DEFAULT_SIZES = {"pretrain": 2000, "train": 2000, "val": 200, "test": 500}
# Questions per image: an int or an inclusive (lo, hi) range drawn per image.
DEFAULT_QUESTIONS: Dict[str, Union[int, Tuple[int, int]]] = {"train": (1, 3), "val": 3, "test": 3}
PRETRAIN_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Give a short and clear explanation of the subsequent image.",
)

__all__ = [
    # dualspeed_lab.toy.scenes
    "CANVAS", "PATCH", "GRID", "CELLS", "CELL", "CELL_MARGIN", "MIN_OBJECTS", "MAX_OBJECTS", "GROUP_PROB",
    "GLYPH_PROB", "COLORS", "COLOR_NAMES", "SHAPES", "SHAPE_PLURALS", "SIZES", "SIZE_RADII", "GLYPHS",
    "BACKGROUNDS", "BACKGROUND_STYLES", "ROW_WORDS", "COL_WORDS", "NUMBER_WORDS", "make_scene", "scene_key",
    "caption_for",
    # dualspeed_lab.toy.render
    "GLYPH_SCALE", "PATCH_COVER_MIN", "render", "ground_truth", "glyph_backend", "object_mask",
    # dualspeed_lab.toy.questions
    "NEAR_MISS_PROB", "QUESTION_TYPES", "COUNT_ANSWERS", "ANSWERS", "CHANCE", "SHORT_ANSWER_SUFFIX",
    "questions_for", "normalize_answer", "is_correct",
    # this module
    "JPEG_QUALITY", "SPLITS", "QA_SPLITS", "DEFAULT_SIZES", "DEFAULT_QUESTIONS", "PRETRAIN_PROMPTS",
    "iter_split", "build_split", "build_task", "main",
]


# -------------------------------------------------------------------------------------------- splits
def _image_rel(split: str, i: int) -> str:
    return f"{split}/images/{i // 1000:03d}/{i:06d}.jpg"


def _n_questions(spec: Union[int, Sequence[int]], rng: random.Random) -> int:
    if isinstance(spec, int):
        return spec
    lo, hi = spec
    return rng.randint(lo, hi)


def iter_split(split: str, n_images: int, seed: int = 0,
               questions_per_image: Union[int, Sequence[int], None] = None,
               exclude: Optional[set] = None, types: Sequence[str] = QUESTION_TYPES) -> Iterator[dict]:
    """The samples of a split, without pixels: {index, id, image, scene, key, questions | caption, prompt}.

    Sample i is drawn from its own Random('dualspeed-toy-v1/<split>/<seed>/<i>/<attempt>'); a scene whose
    `scene_key` is in `exclude` or already used in this split is redrawn with the next attempt, and so is a
    QA scene none of `types` can be asked about (only possible without `exists`; the questions' answers are
    still never looked at). With every type (the default) the draws are those of the full task.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if questions_per_image is None:
        questions_per_image = DEFAULT_QUESTIONS.get(split, 0)
    unknown = set(types) - set(QUESTION_TYPES)
    if not types or unknown:
        raise ValueError(f"types must be a non-empty subset of {QUESTION_TYPES}, got {list(types)}")
    seen = set()
    for i in range(n_images):
        for attempt in range(1000):
            rng = random.Random(f"{SEED_PREFIX}/{split}/{seed}/{i}/{attempt}")
            scene = make_scene(rng)
            key = scene_key(scene)
            if key in seen or (exclude is not None and key in exclude):
                continue
            sample = {"index": i, "id": f"{split}_{i:06d}", "image": _image_rel(split, i), "scene": scene,
                      "key": key}
            if split == "pretrain":
                sample["caption"] = caption_for(scene)
                sample["prompt"] = rng.choice(PRETRAIN_PROMPTS)
                sample["image_first"] = rng.random() < 0.5
            else:
                sample["questions"] = questions_for(scene, rng, _n_questions(questions_per_image, rng), types)
                if not sample["questions"]:
                    continue
            break
        else:  # pragma: no cover - 1000 misses in a row cannot happen with this scene space
            raise RuntimeError(f"{split} {i}: no new askable scene in 1000 attempts")
        seen.add(key)
        yield sample


def _llava_record(sample: dict) -> dict:
    if "caption" in sample:
        prompt = sample["prompt"]
        human = f"<image>\n{prompt}" if sample["image_first"] else f"{prompt}\n<image>"
        conv = [{"from": "human", "value": human}, {"from": "gpt", "value": sample["caption"]}]
    else:
        conv = []
        for r, q in enumerate(sample["questions"]):
            text = f"{q['question']}\n{SHORT_ANSWER_SUFFIX}"
            conv.append({"from": "human", "value": f"<image>\n{text}" if r == 0 else text})
            conv.append({"from": "gpt", "value": capitalized(q["answer"])})
    return {"id": sample["id"], "image": sample["image"], "conversations": conv}


def _eval_rows(sample: dict) -> List[dict]:
    return [{"question_id": f"{sample['id']}_{k}", "image": sample["image"],
             "text": f"{q['question']}\n{SHORT_ANSWER_SUFFIX}", "answer": q["answer"], "type": q["type"],
             "template": q["template"], "objects": q["objects"]}
            for k, q in enumerate(sample["questions"])]


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(obj, path: str, indent: Optional[int] = 1) -> None:
    _write_text(path, json.dumps(obj, indent=indent) + "\n")


def build_split(root: str, split: str, n_images: int, seed: int = 0,
                questions_per_image: Union[int, Sequence[int], None] = None, exclude: Optional[set] = None,
                write_images: bool = True, progress: bool = False, types: Sequence[str] = QUESTION_TYPES) -> dict:
    """Render and write one split under `root` (see the module docstring for the layout).

    Returns {split, image_folder (= root), data_path (LLaVA json), questions (jsonl, None for pretrain),
    objects (json), n_images, n_records, n_questions, keys (the set of scene keys)}.
    """
    from tqdm import tqdm

    split_dir = os.path.join(root, split)
    os.makedirs(split_dir, exist_ok=True)
    records, rows, objects, keys = [], [], {}, set()
    samples = iter_split(split, n_images, seed, questions_per_image, exclude, types)
    for sample in tqdm(samples, total=n_images, desc=f"{split:>8}", unit="img", disable=not progress):
        keys.add(sample["key"])
        if write_images:
            path = os.path.join(root, sample["image"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            render(sample["scene"]).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
        records.append(_llava_record(sample))
        if "questions" in sample:
            rows.extend(_eval_rows(sample))
        objects[sample["image"]] = dict(id=sample["id"], **ground_truth(sample["scene"]))
    out = {"split": split, "image_folder": root, "data_path": os.path.join(split_dir, f"{split}.json"),
           "questions": None, "objects": os.path.join(split_dir, "objects.json"), "n_images": n_images,
           "n_records": len(records), "n_questions": len(rows), "keys": keys}
    _write_json(records, out["data_path"])
    _write_json(objects, out["objects"], indent=None)
    if split != "pretrain":
        out["questions"] = os.path.join(split_dir, "questions.jsonl")
        _write_text(out["questions"], "".join(json.dumps(r) + "\n" for r in rows))
    return out


def build_task(root: str, seed: int = 0, sizes: Optional[Dict[str, int]] = None,
               questions: Optional[Dict[str, Union[int, Sequence[int]]]] = None,
               write_images: bool = True, progress: bool = False, types: Sequence[str] = QUESTION_TYPES) -> dict:
    """Build every split (missing sizes: DEFAULT_SIZES; size 0 skips a split) and root/meta.json.

    `types`: the question types asked (default all; meta.json records them as `question_types`).

    Order test, val, train, pretrain: each later split excludes the scenes of the evaluation splits.
    Returns {split: build_split(...) minus keys, 'meta': path}.
    """
    from PIL import __version__ as pil_version

    sizes = dict(DEFAULT_SIZES, **(sizes or {}))
    questions = dict(DEFAULT_QUESTIONS, **(questions or {}))
    os.makedirs(root, exist_ok=True)
    held_out, out, timings = set(), {}, {}
    for split in ("test", "val", "train", "pretrain"):
        if not sizes.get(split):
            continue
        t0 = time.perf_counter()
        res = build_split(root, split, sizes[split], seed, questions.get(split), exclude=held_out,
                          write_images=write_images, progress=progress, types=types)
        timings[split] = round(time.perf_counter() - t0, 2)
        if split in ("test", "val"):
            held_out |= res["keys"]
        res.pop("keys")
        out[split] = res
    meta = {
        "seed": seed, "sizes": {s: sizes.get(s, 0) for s in SPLITS},
        "questions_per_image": {s: questions.get(s) for s in QA_SPLITS},
        "canvas": CANVAS, "patch": PATCH, "grid": GRID, "cells": CELLS, "colors": COLORS, "shapes": SHAPES,
        "sizes_px": SIZE_RADII, "glyphs": GLYPHS, "backgrounds": BACKGROUNDS, "question_types": list(types),
        "answers": ANSWERS, "chance": CHANCE, "glyph_backend": glyph_backend(), "pillow": pil_version,
        "splits": {s: {k: (os.path.relpath(v, root) if k in ("data_path", "questions", "objects") and v else v)
                       for k, v in r.items() if k not in ("split", "image_folder")} for s, r in out.items()},
    }
    out["meta"] = os.path.join(root, "meta.json")
    _write_json(meta, out["meta"])
    out["timings_s"] = timings
    return out


# ------------------------------------------------------------------------------------------------ CLI
def _questions_arg(text: str) -> Union[int, Tuple[int, int]]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-", 1))
        if not 1 <= lo <= hi <= len(QUESTION_TYPES):
            raise argparse.ArgumentTypeError(f"expected LO-HI within 1-{len(QUESTION_TYPES)}, got {text!r}")
        return lo, hi
    n = int(text)
    if not 1 <= n <= len(QUESTION_TYPES):
        raise argparse.ArgumentTypeError(f"expected 1-{len(QUESTION_TYPES)}, got {text!r}")
    return n


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Build the synthetic local-evidence VQA task (images, LLaVA json, eval jsonl, objects.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (the --image_folder for every split)")
    parser.add_argument("--seed", type=int, default=0, help="task seed (every split derives its own)")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=DEFAULT_SIZES[split], metavar="N",
                            help=f"number of {split} images (0 skips the split)")
    parser.add_argument("--train-questions", type=_questions_arg, default=DEFAULT_QUESTIONS["train"],
                        metavar="K|LO-HI", help="QA turns per train image")
    parser.add_argument("--eval-questions", type=_questions_arg, default=DEFAULT_QUESTIONS["test"],
                        metavar="K|LO-HI", help="questions per val/test image")
    parser.add_argument("--types", nargs="+", choices=QUESTION_TYPES, default=list(QUESTION_TYPES),
                        help="question types to ask (train/val/test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    sizes = {s: getattr(args, s) for s in SPLITS}
    qs = {"train": args.train_questions, "val": args.eval_questions, "test": args.eval_questions}
    t0 = time.perf_counter()
    out = build_task(args.out, args.seed, sizes, qs, progress=not args.quiet, types=args.types)
    total = time.perf_counter() - t0
    print(f"glyph backend: {glyph_backend()}")
    print(f"{'split':>8} {'images':>7} {'records':>8} {'questions':>9} {'seconds':>8} {'MiB':>8}")
    for split in SPLITS:
        if split in out:
            r = out[split]
            print(f"{split:>8} {r['n_images']:>7} {r['n_records']:>8} {r['n_questions']:>9} "
                  f"{out['timings_s'][split]:>8.1f} {_du(os.path.join(args.out, split)) / 2**20:>8.1f}")
    print(f"total {total:.1f} s, {_du(args.out) / 2**20:.1f} MiB under {args.out}")
    return out


if __name__ == "__main__":
    main()
