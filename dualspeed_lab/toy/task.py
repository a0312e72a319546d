#!/usr/bin/env python
"""A synthetic multimodal task whose answers need LOCAL visual evidence (DualSpeed's pruning testbed).

Every scene is a 336x336 canvas (CLIP-336, patch 14: a 24x24 patch grid; square, so LLaVA-1.5's `pad`
is a no-op) cut into a 4x4 grid of 84-px cells (6x6 patches each). 3-6 cells hold one object each,
jittered inside its cell so objects never overlap (>= 6 px apart). An object has

    colour  red green blue yellow purple cyan             (well separated in RGB, never near the background)
    shape   circle square triangle diamond star
    size    small (half-extent 19-23 px: 33-47 px across) or large (29-34 px: 50-69 px across); an object
            spans ~3x3 to 5x5 patches
    glyph   about half the objects carry a bold capital letter (A B E H K M P R T X; distinct in a scene),
            black with a white halo, drawn on the object's centre; every scene has at least one

on a light background, plain or with a smooth noise texture. Attributes are i.i.d. and uniform (60 % of
the scenes force 2-3 objects to share a colour, and independently 60 % a shape, so counts of 2 and 3 are
common), hence exchangeable: no attribute value is more likely than another given anything a question says.

Question types (answers: one word or number from a small closed vocabulary, exact-match scoring):

    color     What color is the <shape>?                      (the shape is unique in the scene)  6 answers
    shape     What shape is the <color> object?               (the colour is unique)              5 answers
    count     How many <color> objects / <shape>s are there?  answer 0-3 drawn first, then kept    4 answers
              with a probability that evens out how often scenes can give it
    position  Is the <A> left or right of the <B>? / above or below   (A, B: unique "<color> <shape>";
              in different columns / rows, so their boxes are disjoint along that axis)           2 answers
    glyph     What letter is on the <color> <shape>?                                            10 answers
    exists    Is there a <color> <shape>?   yes/no 50:50; most "no"s are near misses (both the colour and
              the shape are in the scene, on other objects)                                       2 answers
    size      Is the <color> <shape> small or large?                                            2 answers

Each answer is a function of the pixels of one object (color, shape, glyph, size), of two objects
(position) or of the matching objects (count, exists): keep the right patches and it is answerable, drop
them and it is not. Answers are balanced per type and per referring expression (exchangeability, or
the answer is drawn first), and which types an image gets is drawn without looking at the scene, so an
image-blind model is at chance (dualspeed_lab/toy/blind_baseline.py).

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

`--types` (build_task(types=...)) restricts the questions: the reproduction presets ask color and shape only,
the types a 3-layer toy LLM learns on a CPU (docs/reproduce.md). With every type the task is byte-identical
to one built before the option existed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import time
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

# ------------------------------------------------------------------------------------------ constants
CANVAS = 336                     # pixels (CLIP ViT-L/14-336)
PATCH = 14                       # pixels per patch side
GRID = CANVAS // PATCH           # 24 patches per side
CELLS = 4                        # layout: CELLS x CELLS cells
CELL = CANVAS // CELLS           # 84 px = 6 patches
CELL_MARGIN = 3                  # min gap between an object and its cell border
MIN_OBJECTS, MAX_OBJECTS = 3, 6
GROUP_PROB = 0.6                 # a scene forces 2-3 objects to share a colour (and, apart, a shape)
GLYPH_PROB = 0.5                 # an object carries a glyph (at least one per scene)
NEAR_MISS_PROB = 0.75            # a "no" existence question asks for a colour and a shape both present
GLYPH_SCALE = 0.8                # glyph cap height / object half-extent
JPEG_QUALITY = 95
PATCH_COVER_MIN = 0.25           # an object "owns" a patch it covers at least this much

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 30),
    "purple": (150, 60, 190),
    "cyan": (30, 185, 200),
}
COLOR_NAMES: Tuple[str, ...] = tuple(COLORS)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
                 "star": "stars"}
SIZES: Tuple[str, ...] = ("small", "large")
SIZE_RADII = {"small": (19, 23), "large": (29, 34)}   # half-extent r in pixels, inclusive
GLYPHS: Tuple[str, ...] = ("A", "B", "E", "H", "K", "M", "P", "R", "T", "X")
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "white": (247, 247, 245),
    "gray": (222, 222, 222),
    "beige": (238, 228, 208),
    "blue-gray": (220, 228, 236),
}
BACKGROUND_STYLES = ("plain", "textured")
ROW_WORDS = ("top", "upper middle", "lower middle", "bottom")
COL_WORDS = ("far left", "center left", "center right", "far right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

QUESTION_TYPES: Tuple[str, ...] = ("color", "shape", "count", "position", "glyph", "exists", "size")
COUNT_ANSWERS: Tuple[str, ...] = ("0", "1", "2", "3")
# The closed answer vocabulary of each type (position: 2 answers per template, 4 in all).
ANSWERS: Dict[str, Tuple[str, ...]] = {
    "color": COLOR_NAMES,
    "shape": SHAPES,
    "count": COUNT_ANSWERS,
    "position": ("left", "right", "above", "below"),
    "glyph": GLYPHS,
    "exists": ("yes", "no"),
    "size": SIZES,
}
# Chance accuracy of a uniform guess among the answers a question's template allows.
CHANCE: Dict[str, float] = {t: 1.0 / (2 if t == "position" else len(v)) for t, v in ANSWERS.items()}

SPLITS: Tuple[str, ...] = ("pretrain", "train", "val", "test")
QA_SPLITS: Tuple[str, ...] = ("train", "val", "test")
DEFAULT_SIZES = {"pretrain": 2000, "train": 2000, "val": 200, "test": 500}
# Questions per image: an int or an inclusive (lo, hi) range drawn per image.
DEFAULT_QUESTIONS: Dict[str, Union[int, Tuple[int, int]]] = {"train": (1, 3), "val": 3, "test": 3}
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
PRETRAIN_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Give a short and clear explanation of the subsequent image.",
)
_SEED_PREFIX = "dualspeed-toy-v1"

__all__ = [
    "CANVAS", "PATCH", "GRID", "CELLS", "CELL", "COLORS", "COLOR_NAMES", "SHAPES", "SIZES", "GLYPHS",
    "BACKGROUNDS", "QUESTION_TYPES", "ANSWERS", "CHANCE", "SPLITS", "QA_SPLITS", "DEFAULT_SIZES",
    "DEFAULT_QUESTIONS", "SHORT_ANSWER_SUFFIX", "make_scene", "render", "ground_truth", "questions_for",
    "caption_for", "scene_key", "iter_split", "build_split", "build_task", "normalize_answer",
    "is_correct", "glyph_backend", "object_mask",
]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


# --------------------------------------------------------------------------------------------- scenes
def make_scene(rng: random.Random) -> dict:
    """Draw one scene's parameters (no pixels): background and 3-6 objects, ordered by cell (row-major).

    Object: {color, shape, size, r (half-extent px), center [x, y], cell [row, col], glyph (letter|None)}.
    """
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    cells = sorted(rng.sample(range(CELLS * CELLS), n))
    colors = [rng.choice(COLOR_NAMES) for _ in range(n)]
    shapes = [rng.choice(SHAPES) for _ in range(n)]
    for values, attrs in ((COLOR_NAMES, colors), (SHAPES, shapes)):  # groups: counts of 2 and 3 get common
        if rng.random() < GROUP_PROB:
            value = rng.choice(values)
            for m in rng.sample(range(n), min(n, rng.choice((2, 3)))):
                attrs[m] = value
    has_glyph = [rng.random() < GLYPH_PROB for _ in range(n)]
    if not any(has_glyph):
        has_glyph[rng.randrange(n)] = True
    letters = iter(rng.sample(GLYPHS, sum(has_glyph)))
    objects = []
    for k, cell in enumerate(cells):
        size = rng.choice(SIZES)
        r = rng.randint(*SIZE_RADII[size])
        row, col = divmod(cell, CELLS)
        slack = CELL // 2 - r - CELL_MARGIN
        cx = col * CELL + CELL // 2 + rng.randint(-slack, slack)
        cy = row * CELL + CELL // 2 + rng.randint(-slack, slack)
        objects.append({"color": colors[k], "shape": shapes[k], "size": size, "r": r, "center": [cx, cy],
                        "cell": [row, col], "glyph": next(letters) if has_glyph[k] else None})
    background = {"color": rng.choice(sorted(BACKGROUNDS)), "style": rng.choice(BACKGROUND_STYLES),
                  "texture_seed": rng.getrandbits(31)}
    return {"size": [CANVAS, CANVAS], "background": background, "objects": objects}


def scene_key(scene: dict) -> str:
    """What makes two scenes 'the same' (cells, attributes, glyphs; not jitter or background)."""
    return json.dumps(sorted([o["cell"], o["color"], o["shape"], o["size"], o["glyph"] or ""]
                             for o in scene["objects"]))


# ------------------------------------------------------------------------------------------- drawing
def _shape_points(shape: str, cx: int, cy: int, r: int) -> List[Tuple[int, int]]:
    """Polygon vertices (integers) of a non-circle shape with half-extent r around (cx, cy)."""
    import math

    if shape == "square":
        s = round(0.86 * r)
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":  # apex up, ~equilateral
        b = round(0.8 * r)
        return [(cx, cy - r), (cx + r, cy + b), (cx - r, cy + b)]
    if shape == "diamond":
        w = round(0.8 * r)
        return [(cx, cy - r), (cx + w, cy), (cx, cy + r), (cx - w, cy)]
    if shape == "star":  # 5 points, point up
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.48 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + round(rad * math.cos(a)), cy + round(rad * math.sin(a))))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=fill)


def object_mask(obj: dict, shape: Optional[str] = None):
    """The object's silhouette as an 'L' image (255 inside); `shape` overrides the object's own shape."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (CANVAS, CANVAS), 0)
    (cx, cy), r = obj["center"], obj["r"]
    _draw_shape(ImageDraw.Draw(m), shape or obj["shape"], cx, cy, r, 255)
    return m


def _glyph_anchor(obj: dict) -> Tuple[int, int]:
    (cx, cy), r = obj["center"], obj["r"]
    if obj["shape"] == "triangle":  # centroid
        return cx, cy + round((-r + 2 * round(0.8 * r)) / 3)
    return cx, cy


@functools.lru_cache(maxsize=1)
def _font_master():
    """(backend, font): Pillow's bundled FreeType font at 128 px, else its bitmap default font."""
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=128)
        if isinstance(font, ImageFont.FreeTypeFont):
            return "freetype", font
    except (TypeError, AttributeError, ImportError, OSError):
        pass
    return "bitmap", ImageFont.load_default()


def glyph_backend() -> str:
    """'freetype' (Pillow's bundled font, scaled) or 'bitmap' (the default bitmap font, upscaled)."""
    return _font_master()[0]


@functools.lru_cache(maxsize=None)
def _glyph_master(letter: str):
    """A large, bold, tightly cropped 'L' mask of a letter (the source every glyph is scaled from)."""
    from PIL import Image, ImageDraw, ImageFilter

    backend, font = _font_master()
    if backend == "freetype":
        canvas = Image.new("L", (256, 256), 0)
        ImageDraw.Draw(canvas).text((64, 32), letter, fill=255, font=font)
        mask = canvas.crop(canvas.getbbox())
    else:
        canvas = Image.new("L", (32, 32), 0)
        ImageDraw.Draw(canvas).text((8, 8), letter, fill=255, font=font)
        mask = canvas.crop(canvas.getbbox())
        mask = mask.resize((mask.width * 12, mask.height * 12), Image.NEAREST)
    # Embolden (~8 px at ~92 px cap height), so the strokes survive scaling down to 15-27 px.
    padded = Image.new("L", (mask.width + 16, mask.height + 16), 0)
    padded.paste(mask, (8, 8))
    bold = padded.filter(ImageFilter.MaxFilter(9))
    return bold.crop(bold.getbbox())


@functools.lru_cache(maxsize=None)
def _glyph_masks(letter: str, cap: int):
    """(glyph, halo) 'L' masks of the same size: the letter at cap height `cap`, and it dilated by 2 px."""
    from PIL import Image, ImageFilter

    master = _glyph_master(letter)
    w = max(1, round(master.width * cap / master.height))
    glyph = master.resize((w, cap), Image.LANCZOS)
    pad = 3
    framed = Image.new("L", (w + 2 * pad, cap + 2 * pad), 0)
    framed.paste(glyph, (pad, pad))
    halo = framed.filter(ImageFilter.MaxFilter(5))
    return framed, halo


def _glyph_placement(obj: dict):
    """(glyph mask, halo mask, top-left x, y) of an object's glyph."""
    cap = max(12, round(GLYPH_SCALE * obj["r"]))
    glyph, halo = _glyph_masks(obj["glyph"], cap)
    ax, ay = _glyph_anchor(obj)
    return glyph, halo, ax - glyph.width // 2, ay - glyph.height // 2


def _background(bg: dict):
    from PIL import Image, ImageChops

    base = BACKGROUNDS[bg["color"]]
    if bg["style"] == "plain":
        return Image.new("RGB", (CANVAS, CANVAS), base)
    rng = random.Random(bg["texture_seed"])
    # Low-frequency blotches (+-14) plus a finer grain (+-6): smooth, light, never close to an object colour.
    low = Image.new("RGB", (6, 6))
    low.putdata([tuple(min(255, max(0, c + d)) for c in base) for d in (rng.randint(-14, 14) for _ in range(36))])
    fine = Image.new("RGB", (48, 48))
    fine.putdata([(128 + d,) * 3 for d in (rng.randint(-6, 6) for _ in range(48 * 48))])
    low = low.resize((CANVAS, CANVAS), Image.BICUBIC)
    fine = fine.resize((CANVAS, CANVAS), Image.BILINEAR)
    return ImageChops.add(low, fine, scale=1.0, offset=-128)


def render(scene: dict):
    """Rasterise a scene into a 336x336 RGB PIL image (shapes without anti-aliasing; glyphs anti-aliased)."""
    from PIL import ImageDraw

    img = _background(scene["background"])
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        (cx, cy), r = o["center"], o["r"]
        _draw_shape(draw, o["shape"], cx, cy, r, COLORS[o["color"]])
    for o in scene["objects"]:
        if o["glyph"]:
            glyph, halo, x, y = _glyph_placement(o)
            img.paste((255, 255, 255), (x, y), halo)
            img.paste((0, 0, 0), (x, y), glyph)
    return img


def ground_truth(scene: dict) -> dict:
    """Per-object boxes and patch coverage (for vision-tower pretraining and oracle pruning).

    Returns {background, objects, patch_map}; each object is the scene's object plus
      box        [x0, y0, x1, y1] pixels, x1/y1 exclusive (PIL getbbox)
      patch_box  [col0, row0, col1, row1] in the 24x24 patch grid, col1/row1 exclusive
      patches    flat patch indices (row * 24 + col) the silhouette covers >= 25 %
      glyph_box  [x0, y0, x1, y1] pixels of the glyph with its halo, or None
    patch_map: 24 strings of 24 chars, the index of the object owning each patch ('.' = background).
    """
    from PIL import Image

    objects, owner, best = [], [-1] * (GRID * GRID), [0] * (GRID * GRID)
    for k, o in enumerate(scene["objects"]):
        mask = object_mask(o)
        x0, y0, x1, y1 = mask.getbbox()
        cover = list(mask.resize((GRID, GRID), Image.BOX).tobytes())
        patches = [p for p, c in enumerate(cover) if c >= PATCH_COVER_MIN * 255]
        for p in patches:
            if cover[p] > best[p]:
                best[p], owner[p] = cover[p], k
        glyph_box = None
        if o["glyph"]:
            _, halo, gx, gy = _glyph_placement(o)
            hx0, hy0, hx1, hy1 = halo.getbbox()
            glyph_box = [gx + hx0, gy + hy0, gx + hx1, gy + hy1]
        objects.append(dict(o, box=[x0, y0, x1, y1],
                            patch_box=[x0 // PATCH, y0 // PATCH, (x1 - 1) // PATCH + 1, (y1 - 1) // PATCH + 1],
                            patches=patches, glyph_box=glyph_box))
    patch_map = ["".join("." if owner[r * GRID + c] < 0 else str(owner[r * GRID + c]) for c in range(GRID))
                 for r in range(GRID)]
    return {"background": scene["background"], "objects": objects, "patch_map": patch_map}


# ------------------------------------------------------------------------------------------- captions
def _position_words(o: dict) -> str:
    row, col = o["cell"]
    return f"{ROW_WORDS[row]}, {COL_WORDS[col]}"


def _object_phrase(o: dict) -> str:
    text = f"{_article(o['size'])} {o['size']} {o['color']} {o['shape']}"
    if o["glyph"]:
        text += f" with the letter {o['glyph']}"
    return text


def caption_for(scene: dict) -> str:
    """A full description (deterministic): every object with its attributes and grid position."""
    objs = scene["objects"]
    bg = scene["background"]
    style = "textured" if bg["style"] == "textured" else "plain"
    parts = [f"{_object_phrase(o)} ({_position_words(o)})" for o in objs]
    return (f"{_cap(NUMBER_WORDS[len(objs)])} objects on {_article(style)} {style} {bg['color']} background: "
            + "; ".join(parts) + ".")


# ------------------------------------------------------------------------------------------ questions
def _question(qtype: str, template: str, slots: dict, answer: str, objects: Sequence[int]) -> dict:
    return {"type": qtype, "question": template.format(**slots), "answer": answer, "template": template,
            "objects": list(objects)}


def _referable(objs: List[dict]) -> List[int]:
    """Objects a '<color> <shape>' phrase picks out uniquely."""
    combos = Counter((o["color"], o["shape"]) for o in objs)
    return [i for i, o in enumerate(objs) if combos[(o["color"], o["shape"])] == 1]


def _q_color(scene, rng):
    objs = scene["objects"]
    shapes = Counter(o["shape"] for o in objs)
    cands = [i for i, o in enumerate(objs) if shapes[o["shape"]] == 1]
    if not cands:
        return None
    i = rng.choice(cands)
    return _question("color", "What color is the {shape}?", {"shape": objs[i]["shape"]}, objs[i]["color"], [i])


def _q_shape(scene, rng):
    objs = scene["objects"]
    colors = Counter(o["color"] for o in objs)
    cands = [i for i, o in enumerate(objs) if colors[o["color"]] == 1]
    if not cands:
        return None
    i = rng.choice(cands)
    return _question("shape", "What shape is the {color} object?", {"color": objs[i]["color"]},
                     objs[i]["shape"], [i])


def _q_count(scene, rng):
    # Template first, then the answer (uniform), then a value with that count. An answer a scene cannot
    # give is skipped, and every answer is kept with probability min_a' f(a') / f(a) (f: how often a
    # scene can give it, see `_calibration`), so P(answer | template) is uniform.
    objs = scene["objects"]
    attr = rng.choice(("color", "shape"))
    target = rng.choice(COUNT_ANSWERS)
    if rng.random() >= _calibration()["count_accept"][attr][target]:
        return None
    counts = Counter(o[attr] for o in objs)
    cands = [v for v in (COLOR_NAMES if attr == "color" else SHAPES) if counts[v] == int(target)]
    if not cands:
        return None
    v = rng.choice(cands)
    refs = [i for i, o in enumerate(objs) if o[attr] == v]
    if attr == "color":
        return _question("count", "How many {color} objects are there?", {"color": v}, target, refs)
    return _question("count", "How many {shapes} are there?", {"shape": v, "shapes": SHAPE_PLURALS[v]}, target,
                     refs)


def _q_position(scene, rng):
    objs = scene["objects"]
    horizontal = rng.random() < 0.5
    axis = 1 if horizontal else 0  # cell column / row
    ref = _referable(objs)
    pairs = [(i, j) for a, i in enumerate(ref) for j in ref[a + 1:] if objs[i]["cell"][axis] != objs[j]["cell"][axis]]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    lo, hi = (i, j) if objs[i]["cell"][axis] < objs[j]["cell"][axis] else (j, i)  # lo: left of / above hi
    words = ("left", "right") if horizontal else ("above", "below")
    answer = rng.choice(words)
    a, b = (lo, hi) if answer == words[0] else (hi, lo)
    template = ("Is the {a} left or right of the {b}?" if horizontal else "Is the {a} above or below the {b}?")
    slots = {"a": f"{objs[a]['color']} {objs[a]['shape']}", "b": f"{objs[b]['color']} {objs[b]['shape']}"}
    return _question("position", template, slots, answer, [a, b])


def _q_glyph(scene, rng):
    objs = scene["objects"]
    cands = [i for i in _referable(objs) if objs[i]["glyph"]]
    if not cands:
        return None
    i = rng.choice(cands)
    return _question("glyph", "What letter is on the {color} {shape}?",
                     {"color": objs[i]["color"], "shape": objs[i]["shape"]}, objs[i]["glyph"], [i])


def _q_exists(scene, rng):
    objs = scene["objects"]
    present = sorted({(o["color"], o["shape"]) for o in objs})
    if rng.random() < 0.5:
        color, shape = rng.choice(present)
        answer = "yes"
    else:
        absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present]
        colors, shapes = {o["color"] for o in objs}, {o["shape"] for o in objs}
        near = [(c, s) for c, s in absent if c in colors and s in shapes]
        color, shape = rng.choice(near if near and rng.random() < NEAR_MISS_PROB else absent)
        answer = "no"
    refs = [i for i, o in enumerate(objs) if (o["color"], o["shape"]) == (color, shape)]
    return _question("exists", "Is there {article} {color} {shape}?",
                     {"article": _article(color), "color": color, "shape": shape}, answer, refs)


def _q_size(scene, rng):
    objs = scene["objects"]
    cands = _referable(objs)
    if not cands:
        return None
    i = rng.choice(cands)
    return _question("size", "Is the {color} {shape} small or large?",
                     {"color": objs[i]["color"], "shape": objs[i]["shape"]}, objs[i]["size"], [i])


_GENERATORS = {"color": _q_color, "shape": _q_shape, "count": _q_count, "position": _q_position,
               "glyph": _q_glyph, "exists": _q_exists, "size": _q_size}


@functools.lru_cache(maxsize=1)
def _calibration(n_scenes: int = 6000) -> dict:
    """Scene-distribution constants, estimated once (fixed seed, so deterministic) on n_scenes scenes.

    count_feasible[attr][a]: P(some colour / shape value occurs exactly a times in a scene)
    count_accept[attr][a]:   min over answers of count_feasible[attr] / count_feasible[attr][a]
    feasible[type]:          P(a question of that type can be asked about a scene, after acceptance)
    """
    rng = random.Random(f"{_SEED_PREFIX}/calibration")
    hits = {attr: Counter() for attr in ("color", "shape")}
    ok = Counter()
    for _ in range(n_scenes):
        scene = make_scene(rng)
        for attr, values in (("color", COLOR_NAMES), ("shape", SHAPES)):
            present = Counter(o[attr] for o in scene["objects"])
            for a in {present[v] for v in values}:
                hits[attr][str(a)] += 1
        for t in QUESTION_TYPES:
            if t != "count":
                ok[t] += _GENERATORS[t](scene, rng) is not None
    feasible_count = {attr: {a: max(hits[attr][a], 1) / n_scenes for a in COUNT_ANSWERS} for attr in hits}
    accept = {attr: {a: min(f.values()) / f[a] for a in COUNT_ANSWERS} for attr, f in feasible_count.items()}
    feasible = {t: ok[t] / n_scenes for t in QUESTION_TYPES if t != "count"}
    feasible["count"] = sum(min(f.values()) for f in feasible_count.values()) / len(feasible_count)
    return {"count_feasible": feasible_count, "count_accept": accept, "feasible": feasible}


def questions_for(scene: dict, rng: random.Random, k: Optional[int] = None,
                  types: Sequence[str] = QUESTION_TYPES) -> List[dict]:
    """Up to k questions (default: 1-3 drawn from rng) of distinct types about one scene.

    The k types are drawn WITHOUT looking at the scene (weighted sampling without replacement, weights
    1 / how often a type can be asked, so every type is about equally frequent); a type with nothing to
    ask in this scene is dropped (never retried with another answer or another type: either would tie
    the answer distribution to the scene). If all are dropped, an `exists` question (always askable, its
    yes/no drawn first) is asked instead, when `types` has it (else the list is empty). Each question:
    {type, question, answer (canonical: lower case, glyphs upper case, counts as digits),
     template (the question with its slots, e.g. 'What color is the {shape}?'), objects (indices referred to
     or counted; for exists, the matching objects)}.
    """
    if k is None:
        k = rng.randint(1, 3)
    feasible = _calibration()["feasible"]
    keyed = [(rng.random() ** feasible[t], t) for t in types]  # Efraimidis-Spirakis, weight 1 / feasible
    chosen = [t for _, t in sorted(keyed, reverse=True)[:k]]
    out = [q for q in (_GENERATORS[t](scene, rng) for t in chosen) if q is not None]
    if not out and "exists" in types:
        out = [_q_exists(scene, rng)]
    return out


# ------------------------------------------------------------------------------------------- scoring
_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}


def normalize_answer(text: str) -> str:
    """Lower case, first line, no punctuation or articles, number words as digits ('Three.' -> '3')."""
    text = text.strip().split("\n")[0].lower()
    text = re.sub(r"[^a-z0-9 \-]", " ", text)
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def is_correct(prediction: str, answer: str) -> bool:
    """Exact match after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


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
            rng = random.Random(f"{_SEED_PREFIX}/{split}/{seed}/{i}/{attempt}")
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
            conv.append({"from": "gpt", "value": _cap(q["answer"])})
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
