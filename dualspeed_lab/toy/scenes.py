"""The toy task's scenes: their geometry and vocabularies, how one is drawn, its identity key and its caption.

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

    scene = make_scene(random.Random("any string"))   # parameters only, no pixels (render.py draws them)
    scene_key(scene)                                  # what makes two scenes 'the same'
    caption_for(scene)                                # the pretrain caption

No pixels here (dualspeed_lab/toy/render.py), no questions (dualspeed_lab/toy/questions.py); the task's
files are written by dualspeed_lab/toy/task.py.
"""
from __future__ import annotations

import json
import random
from typing import Dict, Tuple

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
# Every random.Random of the task is seeded from a string with this prefix.
SEED_PREFIX = "dualspeed-toy-v1"

__all__ = [
    "CANVAS", "PATCH", "GRID", "CELLS", "CELL", "CELL_MARGIN", "MIN_OBJECTS", "MAX_OBJECTS", "GROUP_PROB",
    "GLYPH_PROB", "COLORS", "COLOR_NAMES", "SHAPES", "SHAPE_PLURALS", "SIZES", "SIZE_RADII", "GLYPHS",
    "BACKGROUNDS", "BACKGROUND_STYLES", "ROW_WORDS", "COL_WORDS", "NUMBER_WORDS", "SEED_PREFIX", "article",
    "capitalized", "make_scene", "scene_key", "caption_for",
]


def article(word: str) -> str:
    """The indefinite article of `word` ('an' before a vowel)."""
    return "an" if word[0] in "aeiou" else "a"


def capitalized(word: str) -> str:
    """`word` with its first letter upper case (answers as train.json writes them: 'Blue', '3')."""
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


# ------------------------------------------------------------------------------------------- captions
def _position_words(o: dict) -> str:
    row, col = o["cell"]
    return f"{ROW_WORDS[row]}, {COL_WORDS[col]}"


def _object_phrase(o: dict) -> str:
    text = f"{article(o['size'])} {o['size']} {o['color']} {o['shape']}"
    if o["glyph"]:
        text += f" with the letter {o['glyph']}"
    return text


def caption_for(scene: dict) -> str:
    """A full description (deterministic): every object with its attributes and grid position."""
    objs = scene["objects"]
    bg = scene["background"]
    style = "textured" if bg["style"] == "textured" else "plain"
    parts = [f"{_object_phrase(o)} ({_position_words(o)})" for o in objs]
    return (f"{capitalized(NUMBER_WORDS[len(objs)])} objects on {article(style)} {style} {bg['color']} background: "
            + "; ".join(parts) + ".")
