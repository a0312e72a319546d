"""Deterministic synthetic LLaVA-format data: coloured shapes on plain backgrounds.

Every image holds 1-3 shapes (circle / square / triangle, each type and each colour at most once per image)
laid out along the image's longer side, on a white, gray or black background. Image sizes vary (square,
wide and tall) so `image_aspect_ratio` 'pad' and 'anyres' have something to do. All captions and answers
are derived from the drawing parameters, so they are correct by construction.

Layout written under `<data_root>` (mirrors playground/data, spec §2.3):

    LLaVA-Pretrain/blip_laion_cc_sbu_tiny.json   caption set (pretrain format, 2 turns, `<image>` + prompt)
    LLaVA-Pretrain/images/00000/000000000.jpg    paths in the JSON are relative to LLaVA-Pretrain/images
    llava_v1_5_mix_tiny.json                     finetune mix: single-turn, multi-turn and text-only samples
    coco/train2017/*.jpg  gqa/images/*.jpg  vg/VG_100K/*.jpg   paths in the JSON are relative to <data_root>

    paths = build_data(data_root, seed=0, num_pretrain=64, num_finetune=64)   # + paths["texts"] for the tokenizer

dualspeed_lab/tiny/build.py calls it; `make_scene` / `render_scene` draw single images.
"""
from __future__ import annotations

import json
import os
import random
from typing import Dict, Iterable, List, Sequence, Tuple

PRETRAIN_JSON = os.path.join("LLaVA-Pretrain", "blip_laion_cc_sbu_tiny.json")
PRETRAIN_IMAGES = os.path.join("LLaVA-Pretrain", "images")
FINETUNE_JSON = "llava_v1_5_mix_tiny.json"

SHAPE_COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 0, 0),
    "green": (0, 170, 0),
    "blue": (0, 0, 230),
    "yellow": (250, 230, 0),
    "orange": (255, 140, 0),
    "purple": (140, 0, 170),
}
BACKGROUND_COLORS: Dict[str, Tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}
SHAPES = ("circle", "square", "triangle")
# (width, height): square, wide and tall, small and large (anyres grids up to 672x672 get exercised).
IMAGE_SIZES = (
    (336, 336), (512, 512), (224, 224),
    (480, 320), (640, 360), (800, 400), (672, 336), (600, 448),
    (320, 480), (360, 640), (400, 800), (336, 672),
)
JPEG_QUALITY = 95

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

PRETRAIN_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short description of this picture.",
    "Summarize what the image shows.",
    "Write a one-line caption for the image.",
    "What is in the photo?",
)
DESCRIBE_PROMPTS = (
    "Describe the image briefly.",
    "What do you see in this image?",
    "Can you describe the picture?",
)

__all__ = [
    "PRETRAIN_JSON", "PRETRAIN_IMAGES", "FINETUNE_JSON", "SHAPE_COLORS", "BACKGROUND_COLORS", "SHAPES",
    "IMAGE_SIZES", "make_scene", "render_scene", "caption_for", "make_pretrain_records",
    "make_finetune_records", "collect_texts", "load_texts", "build_data",
]


# --------------------------------------------------------------------------------------------- scenes
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_scene(rng: random.Random) -> dict:
    """Draw the parameters of one image (no pixels). Shapes are ordered along the layout axis."""
    width, height = rng.choice(IMAGE_SIZES)
    n = rng.choice((1, 1, 2, 2, 3))
    background = rng.choice(sorted(BACKGROUND_COLORS))
    kinds = rng.sample(SHAPES, n)
    colors = rng.sample(sorted(SHAPE_COLORS), n)
    horizontal = width >= height
    axis_len = width if horizontal else height
    cell = axis_len / n
    other = height if horizontal else width
    shapes = []
    for k in range(n):
        half = int(min(cell, other) * rng.uniform(0.25, 0.36))  # half-extent: shape spans 50-72% of the cell
        slack_a = max(0, int(cell / 2 - half - 2))
        slack_o = max(0, int(other / 2 - half - 2))
        a = int(cell * (k + 0.5)) + rng.randint(-(slack_a // 3), slack_a // 3)
        o = int(other / 2) + rng.randint(-(slack_o // 3), slack_o // 3)
        cx, cy = (a, o) if horizontal else (o, a)
        shapes.append({"shape": kinds[k], "color": colors[k], "center": [cx, cy], "half": half})
    if n == 1:
        positions = ["center"]
    elif horizontal:
        positions = ["left", "right"] if n == 2 else ["left", "middle", "right"]
    else:
        positions = ["top", "bottom"] if n == 2 else ["top", "middle", "bottom"]
    for s, p in zip(shapes, positions):
        s["position"] = p
    return {"size": [width, height], "background": background, "horizontal": horizontal, "shapes": shapes}


def render_scene(scene: dict):
    """Rasterise a scene into an RGB PIL image (no anti-aliasing, so colours stay pure inside shapes)."""
    from PIL import Image, ImageDraw

    width, height = scene["size"]
    img = Image.new("RGB", (width, height), BACKGROUND_COLORS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for s in scene["shapes"]:
        (cx, cy), r, fill = s["center"], s["half"], SHAPE_COLORS[s["color"]]
        if s["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # triangle, apex up
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return img


def _save_image(scene: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Fixed encoder settings: identical bytes for identical scenes.
    render_scene(scene).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def _shape_phrase(s: dict) -> str:
    return f"{_article(s['color'])} {s['color']} {s['shape']}"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_for(scene: dict, rng: random.Random) -> str:
    shapes = [_shape_phrase(s) for s in scene["shapes"]]
    bg = scene["background"]
    templates = (
        "{shapes} on {a_bg} {bg} background",
        "{shapes} against {a_bg} {bg} background.",
        "{A_bg} {bg} picture with {shapes}.",
        "simple drawing of {shapes} on {bg}",
    )
    text = rng.choice(templates).format(shapes=_join(shapes), bg=bg, a_bg=_article(bg), A_bg=_article(bg).capitalize())
    return text


# ------------------------------------------------------------------------------------------ questions
def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def _qa_color(scene, rng):
    shapes = scene["shapes"]
    if len(shapes) == 1:
        s = shapes[0]
        return "What color is the shape?", _cap(s["color"]), f"The shape is {s['color']}."
    s = rng.choice(shapes)
    return f"What color is the {s['shape']}?", _cap(s["color"]), f"The {s['shape']} is {s['color']}."


def _qa_shape(scene, rng):
    shapes = scene["shapes"]
    if len(shapes) == 1:
        s = shapes[0]
        return ("What shape is in the image?", _cap(s["shape"]),
                f"The image shows {_shape_phrase(s)}.")
    s = rng.choice(shapes)
    return (f"Which shape is {s['color']}?", _cap(s["shape"]),
            f"The {s['color']} shape is {_article(s['shape'])} {s['shape']}.")


def _qa_count(scene, rng):
    n = len(scene["shapes"])
    long = "There is one shape in the image." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes in the image."
    return "How many shapes are there in the image?", _cap(NUMBER_WORDS[n]), long


def _qa_background(scene, rng):
    bg = scene["background"]
    return "What color is the background?", _cap(bg), f"The background is {bg}."


def _qa_yesno(scene, rng):
    present = {(s["color"], s["shape"]) for s in scene["shapes"]}
    if rng.random() < 0.5:
        color, shape = sorted(present)[rng.randrange(len(present))]
        return f"Is there {_article(color)} {color} {shape} in the image?", "Yes", f"Yes, there is {_article(color)} {color} {shape}."
    absent = sorted((c, k) for c in SHAPE_COLORS for k in SHAPES if (c, k) not in present)
    color, shape = absent[rng.randrange(len(absent))]
    return f"Is there {_article(color)} {color} {shape} in the image?", "No", f"No, there is no {color} {shape} in the image."


def _qa_position(scene, rng):
    shapes = scene["shapes"]
    if len(shapes) == 1:
        s = shapes[0]
        return "Where is the shape in the image?", "Center", f"The {s['shape']} is in the center of the image."
    s = rng.choice(shapes)
    where = "in the middle" if s["position"] == "middle" else f"on the {s['position']}"
    return (f"What shape is {where}?", _cap(s["shape"]),
            f"The shape {where} is {_shape_phrase(s)}.")


def _qa_describe(scene, rng):
    shapes = [_shape_phrase(s) for s in scene["shapes"]]
    n = len(shapes)
    count = "one shape" if n == 1 else f"{NUMBER_WORDS[n]} shapes"
    text = (f"The image shows {count} on {_article(scene['background'])} {scene['background']} background: "
            f"{_join(shapes)}.")
    if n > 1:
        order = "from left to right" if scene["horizontal"] else "from top to bottom"
        text += f" The shapes are arranged {order}."
    return rng.choice(DESCRIBE_PROMPTS), None, text


QUESTION_KINDS = (
    ("color", _qa_color), ("shape", _qa_shape), ("count", _qa_count), ("background", _qa_background),
    ("yesno", _qa_yesno), ("position", _qa_position), ("describe", _qa_describe),
)


def _qa(kind_fn, scene, rng) -> Tuple[str, str]:
    """One (question, answer) turn; short answers get the LLaVA-1.5 single-word instruction."""
    question, short, long = kind_fn(scene, rng)
    if short is not None and rng.random() < 0.5:
        return f"{question}\n{SHORT_ANSWER_SUFFIX}", short
    return question, long


def _with_image(question: str, rng: random.Random) -> str:
    return f"<image>\n{question}" if rng.random() < 0.75 else f"{question}\n<image>"


# -------------------------------------------------------------------------------------------- records
def make_pretrain_records(data_root: str, num: int, seed: int = 0, write_images: bool = True) -> List[dict]:
    """Caption records in the blip_laion_cc_sbu_558k format; images go under LLaVA-Pretrain/images."""
    rng = random.Random(f"llava-tiny-pretrain-{seed}")
    image_root = os.path.join(data_root, PRETRAIN_IMAGES)
    records = []
    for i in range(num):
        scene = make_scene(rng)
        sample_id = f"{i:09d}"
        rel = f"{i // 32:05d}/{sample_id}.jpg"
        if write_images:
            _save_image(scene, os.path.join(image_root, rel))
        prompt = rng.choice(PRETRAIN_PROMPTS)
        human = f"<image>\n{prompt}" if rng.random() < 0.8 else f"{prompt}\n<image>"
        records.append({
            "id": sample_id,
            "image": rel,
            "conversations": [
                {"from": "human", "value": human},
                {"from": "gpt", "value": caption_for(scene, rng)},
            ],
        })
    return records


_FINETUNE_SOURCES = (
    ("coco/train2017", lambda k: f"{k:012d}"),
    ("coco/train2017", lambda k: f"{k:012d}"),
    ("gqa/images", lambda k: f"{2300000 + k}"),
    ("vg/VG_100K", lambda k: f"{k + 1}"),
)


def _text_only_record(k: int, rng: random.Random) -> dict:
    sides = {"triangle": 3, "square": 4}
    turns = []
    n_rounds = rng.choice((1, 2))
    for _ in range(n_rounds):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randint(0, 5), rng.randint(0, 4)
            turns.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        elif kind == 1:
            shape = rng.choice(sorted(sides))
            turns.append((f"How many sides does {_article(shape)} {shape} have?",
                          f"{_cap(_article(shape))} {shape} has {NUMBER_WORDS[sides[shape]]} sides."))
        else:
            a = rng.randint(1, 9)
            turns.append((f"Which number comes after {a}?", f"The number after {a} is {a + 1}."))
    conv = []
    for q, a in turns:
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": f"text_{k:05d}", "conversations": conv}


def make_finetune_records(data_root: str, num: int, seed: int = 0, write_images: bool = True) -> List[dict]:
    """The llava_v1_5_mix665k-style mix: single-turn QA, 2-3 round conversations and a few text-only ones.

    Image paths are relative to `data_root` (the finetune `--image_folder`). The list is shuffled.
    """
    rng = random.Random(f"llava-tiny-finetune-{seed}")
    num_text = min(num, max(1, num // 8)) if num > 1 else 0
    num_image = num - num_text
    records = []
    for i in range(num_image):
        scene = make_scene(rng)
        folder, namer = _FINETUNE_SOURCES[i % len(_FINETUNE_SOURCES)]
        rel = f"{folder}/{namer(i)}.jpg"
        if write_images:
            _save_image(scene, os.path.join(data_root, rel))
        n_rounds = 1 if i % 2 == 0 else rng.choice((2, 3))
        # First question cycles through the kinds so every kind is present; later ones are random, no repeats.
        first = QUESTION_KINDS[(i // 2) % len(QUESTION_KINDS)]
        rest = [k for k in QUESTION_KINDS if k is not first]
        kinds = [first] + rng.sample(rest, n_rounds - 1)
        conv = []
        for r, (_, fn) in enumerate(kinds):
            q, a = _qa(fn, scene, rng)
            conv.append({"from": "human", "value": _with_image(q, rng) if r == 0 else q})
            conv.append({"from": "gpt", "value": a})
        sample_id = os.path.splitext(os.path.basename(rel))[0]
        records.append({"id": sample_id, "image": rel, "conversations": conv})
    for k in range(num_text):
        records.append(_text_only_record(k, rng))
    rng.shuffle(records)
    return records


# ----------------------------------------------------------------------------------------------- texts
def collect_texts(*record_lists: Iterable[dict]) -> List[str]:
    """Every caption, question and answer in the records, with the `<image>` placeholder removed."""
    texts = []
    for records in record_lists:
        for rec in records:
            for turn in rec["conversations"]:
                text = turn["value"].replace("<image>", "").strip()
                if text:
                    texts.append(text)
    return texts


def load_texts(data_root: str) -> List[str]:
    """`collect_texts` over the pretrain and finetune JSON files already written under `data_root`."""
    lists = []
    for rel in (PRETRAIN_JSON, FINETUNE_JSON):
        with open(os.path.join(data_root, rel)) as f:
            lists.append(json.load(f))
    return collect_texts(*lists)


def _write_json(records: List[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def build_data(data_root: str, seed: int = 0, num_pretrain: int = 64, num_finetune: int = 64) -> dict:
    """Write images and both JSON files under `data_root`; return their paths and all texts.

    Returns {"pretrain_data", "pretrain_images", "finetune_data", "image_folder", "texts"}.
    """
    os.makedirs(data_root, exist_ok=True)
    pretrain = make_pretrain_records(data_root, num_pretrain, seed)
    finetune = make_finetune_records(data_root, num_finetune, seed)
    paths = {
        "pretrain_data": os.path.join(data_root, PRETRAIN_JSON),
        "pretrain_images": os.path.join(data_root, PRETRAIN_IMAGES),
        "finetune_data": os.path.join(data_root, FINETUNE_JSON),
        "image_folder": data_root,
    }
    os.makedirs(paths["pretrain_images"], exist_ok=True)
    _write_json(pretrain, paths["pretrain_data"])
    _write_json(finetune, paths["finetune_data"])
    paths["texts"] = collect_texts(pretrain, finetune)
    return paths
