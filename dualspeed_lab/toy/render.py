"""Pixels of the toy task's scenes: `render(scene)` draws a 336x336 RGB PIL image, `ground_truth(scene)` gives
each object's box, its patches and the patch -> object map (objects.json, for vision-tower pretraining and
oracle pruning).

    from dualspeed_lab.toy.render import render, ground_truth
    image = render(scene)            # scene: dualspeed_lab.toy.scenes.make_scene(rng)
    gt = ground_truth(scene)         # {background, objects (with box, patch_box, patches, glyph_box), patch_map}

Shapes are drawn without anti-aliasing, glyphs (Pillow's bundled font, `glyph_backend()`) with it; the same
Pillow build gives byte-identical images.
"""
from __future__ import annotations

import functools
import random
from typing import List, Optional, Tuple

from dualspeed_lab.toy.scenes import BACKGROUNDS, CANVAS, COLORS, GRID, PATCH

GLYPH_SCALE = 0.8                # glyph cap height / object half-extent
PATCH_COVER_MIN = 0.25           # an object "owns" a patch it covers at least this much

__all__ = ["GLYPH_SCALE", "PATCH_COVER_MIN", "object_mask", "glyph_backend", "render", "ground_truth"]


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
