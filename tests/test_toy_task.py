"""The synthetic local-evidence task (dualspeed_lab/toy/{scenes,render,questions,task}.py) and its image-blind
baseline.

Small sizes only: a few dozen rendered images, a few thousand questions generated without pixels.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from dualspeed_lab.toy import questions, render, scenes, task
from dualspeed_lab.toy.blind_baseline import as_eval_rows, blind_table, format_table
from dualspeed_lab.toy.blind_baseline import main as blind_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"pretrain": 6, "train": 30, "val": 6, "test": 20}
PALETTE = np.array([scenes.COLORS[c] for c in scenes.COLOR_NAMES], dtype=float)


# ------------------------------------------------------------------------------------------- helpers
def _tree(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _palette_labels(arr):
    """Per pixel: index of the nearest object colour within RGB distance 70, else -1."""
    d = np.linalg.norm(arr[:, :, None, :].astype(float) - PALETTE[None, None], axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > 70] = -1
    return lab


def _majority_color(lab, box):
    x0, y0, x1, y1 = box
    sub = lab[y0:y1, x0:x1]
    return scenes.COLOR_NAMES[Counter(sub[sub >= 0].ravel().tolist()).most_common(1)[0][0]]


def _pixel_shape(lab, obj, color):
    """The shape whose silhouette best overlaps (IoU) the pixels of `color` inside the object's box."""
    x0, y0, x1, y1 = obj["box"]
    seen = np.zeros(lab.shape, bool)
    seen[y0:y1, x0:x1] = lab[y0:y1, x0:x1] == scenes.COLOR_NAMES.index(color)
    ious = {}
    for shape in scenes.SHAPES:
        m = np.asarray(render.object_mask(obj, shape)) > 0
        ious[shape] = (m & seen).sum() / (m | seen).sum()
    return max(ious, key=ious.get)


def _read_glyph(dark, box):
    """Template-match the dark pixels inside a box against every glyph (12x16, L1 distance)."""
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(dark[y0:y1, x0:x1])
    crop = dark[y0:y1, x0:x1][ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    seen = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((12, 16), Image.BILINEAR), float) / 255
    scores = {}
    for letter in scenes.GLYPHS:
        ref = np.asarray(render._glyph_master(letter).resize((12, 16), Image.BILINEAR), float) / 255
        scores[letter] = np.abs(seen - ref).sum()
    return min(scores, key=scores.get)


def _in_memory(split, n, seed=0, k=3):
    return list(task.iter_split(split, n, seed, k))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy"))
    return root, task.build_task(root, seed=0, sizes=SIZES)


# ------------------------------------------------------------------------------------------ layout
def test_files_and_formats(built):
    root, out = built
    meta = json.load(open(out["meta"]))
    assert meta["sizes"] == SIZES and meta["grid"] == 24 and meta["canvas"] == 336
    for split in task.SPLITS:
        res = out[split]
        records = json.load(open(res["data_path"]))
        objects = json.load(open(res["objects"]))
        assert len(records) == SIZES[split] == len(objects)
        for rec in records:
            assert set(rec) == {"id", "image", "conversations"}
            assert rec["image"] in objects and objects[rec["image"]]["id"] == rec["id"]
            with Image.open(os.path.join(res["image_folder"], rec["image"])) as im:
                assert im.size == (336, 336) and im.mode == "RGB"
            conv = rec["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].count("<image>") == 1
            assert all("<image>" not in t["value"] for t in conv[1:])
            if split == "pretrain":
                assert len(conv) == 2  # LLaVA `plain` caption record
            else:
                assert 1 <= len(conv) // 2 <= 3
                assert all(t["value"].endswith(questions.SHORT_ANSWER_SUFFIX) for t in conv[::2])
        if split == "pretrain":
            assert res["questions"] is None
            continue
        rows = _load_jsonl(res["questions"])
        assert len(rows) == res["n_questions"] == sum(len(r["conversations"]) // 2 for r in records)
        assert len({r["question_id"] for r in rows}) == len(rows)
        for r in rows:
            assert {"question_id", "image", "text", "answer", "type"} <= set(r)
            assert r["type"] in questions.QUESTION_TYPES and r["answer"] in questions.ANSWERS[r["type"]]
            assert r["image"] in objects and "<image>" not in r["text"]


def test_objects_ground_truth(built):
    root, out = built
    objects = json.load(open(out["test"]["objects"]))
    for entry in objects.values():
        assert 3 <= len(entry["objects"]) <= 6
        assert len(entry["patch_map"]) == 24 and all(len(row) == 24 for row in entry["patch_map"])
        boxes = []
        for k, o in enumerate(entry["objects"]):
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 336 and 0 <= y0 < y1 <= 336
            assert 30 <= max(x1 - x0, y1 - y0) <= 70  # each object spans a few patches
            c0, r0, c1, r1 = o["patch_box"]
            assert (c0, r0) == (x0 // 14, y0 // 14) and (c1, r1) == ((x1 - 1) // 14 + 1, (y1 - 1) // 14 + 1)
            assert o["patches"] and all(c0 <= p % 24 < c1 and r0 <= p // 24 < r1 for p in o["patches"])
            owned = [r * 24 + c for r in range(24) for c in range(24) if entry["patch_map"][r][c] == str(k)]
            assert set(owned) <= set(o["patches"]) and owned
            if o["glyph"]:
                gx0, gy0, gx1, gy1 = o["glyph_box"]
                assert x0 <= gx0 < gx1 <= x1 and y0 <= gy0 < gy1 <= y1
            boxes.append(o["box"])
        for i, a in enumerate(boxes):  # objects never overlap
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


# ----------------------------------------------------------------------------------- determinism
def test_deterministic(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    for root, seed in ((a, 3), (b, 3), (c, 4)):
        task.build_split(root, "train", 5, seed, (1, 3))
        task.build_split(root, "pretrain", 3, seed)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta == tb  # identical JSON and identical image bytes
    assert set(ta) == set(tc)  # same file names ...
    assert all(ta[p] != tc[p] for p in ta)  # ... every one of them different
    assert render.render(scenes.make_scene(random.Random(7))).tobytes() == \
        render.render(scenes.make_scene(random.Random(7))).tobytes()


# -------------------------------------------------------------------------- answers from pixels
def test_answers_match_pixels(built):
    root, out = built
    checked = Counter()
    for split in ("train", "test"):
        objects = json.load(open(out[split]["objects"]))
        by_image = defaultdict(list)
        for row in _load_jsonl(out[split]["questions"]):
            by_image[row["image"]].append(row)
        for image, rows in by_image.items():
            arr = np.asarray(Image.open(os.path.join(root, image)).convert("RGB"))
            lab, dark = _palette_labels(arr), arr.max(-1) < 90
            objs = objects[image]["objects"]
            inside = np.zeros(dark.shape, bool)
            for o in objs:
                x0, y0, x1, y1 = o["box"]
                inside[y0:y1, x0:x1] = True
                # Every object's pixels show its colour and shape; glyph ink only where a glyph is.
                assert _majority_color(lab, o["box"]) == o["color"]
                assert _pixel_shape(lab, o, o["color"]) == o["shape"]
                assert bool(dark[y0:y1, x0:x1].any()) == bool(o["glyph"])
            assert not (lab[~inside] >= 0).any() and not dark[~inside].any()  # nothing outside the objects
            for row in rows:
                t, ans, refs = row["type"], row["answer"], row["objects"]
                o = objs[refs[0]] if refs else None
                if t == "color":
                    assert _majority_color(lab, o["box"]) == ans
                elif t == "shape":
                    assert _pixel_shape(lab, o, _majority_color(lab, o["box"])) == ans
                elif t == "glyph":
                    assert dark[o["box"][1]:o["box"][3], o["box"][0]:o["box"][2]].sum() > 20
                    assert _read_glyph(dark, o["box"]) == ans
                elif t == "size":
                    extent = max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1])
                    assert ("large" if extent > 50 else "small") == ans
                elif t == "count":
                    attr = "color" if "objects are there" in row["text"] else "shape"
                    value = next(v for v in (scenes.COLOR_NAMES if attr == "color" else scenes.SHAPES)
                                 if f" {v} " in row["text"] or f" {scenes.SHAPE_PLURALS.get(v, '?')} " in row["text"])
                    assert int(ans) == sum(x[attr] == value for x in objs) == len(refs)
                    if attr == "color":  # count the blobs of that colour in the pixels
                        assert int(ans) == sum(_majority_color(lab, x["box"]) == value for x in objs)
                elif t == "position":
                    a, b = objs[refs[0]], objs[refs[1]]
                    axis = 1 if "left or right" in row["text"] else 0
                    ca = np.argwhere(lab[a["box"][1]:a["box"][3], a["box"][0]:a["box"][2]] >= 0).mean(0)
                    cb = np.argwhere(lab[b["box"][1]:b["box"][3], b["box"][0]:b["box"][2]] >= 0).mean(0)
                    ca, cb = ca + (a["box"][1], a["box"][0]), cb + (b["box"][1], b["box"][0])
                    first = ca[axis] < cb[axis]
                    assert ans == (("left" if first else "right") if axis else ("above" if first else "below"))
                    if axis:  # boxes are disjoint along the asked axis
                        assert a["box"][2] <= b["box"][0] if ans == "left" else b["box"][2] <= a["box"][0]
                    else:
                        assert a["box"][3] <= b["box"][1] if ans == "above" else b["box"][3] <= a["box"][1]
                elif t == "exists":
                    words = row["text"].split("?")[0].split()
                    color, shape = words[-2], words[-1]
                    seen = any(_majority_color(lab, x["box"]) == color and _pixel_shape(lab, x, color) == shape
                               for x in objs)
                    assert ans == ("yes" if seen else "no")
                checked[t] += 1
    assert set(checked) == set(questions.QUESTION_TYPES), checked


# ------------------------------------------------------------------------- referring expressions
def test_referring_expressions_unique():
    n_checked = 0
    for sample in _in_memory("val", 400):
        objs = sample["scene"]["objects"]
        qs = sample["questions"]
        assert 1 <= len(qs) <= 3 and len({q["type"] for q in qs}) == len(qs)
        combos = Counter((o["color"], o["shape"]) for o in objs)
        for q in qs:
            t, refs = q["type"], q["objects"]
            if t == "color":
                (i,) = refs
                assert sum(o["shape"] == objs[i]["shape"] for o in objs) == 1
                assert q["question"] == f"What color is the {objs[i]['shape']}?"
            elif t == "shape":
                (i,) = refs
                assert sum(o["color"] == objs[i]["color"] for o in objs) == 1
            elif t in ("glyph", "size", "position"):
                for i in refs:
                    assert combos[(objs[i]["color"], objs[i]["shape"])] == 1
                    assert f"{objs[i]['color']} {objs[i]['shape']}" in q["question"]
                if t == "position":
                    axis = 1 if "left or right" in q["question"] else 0
                    assert objs[refs[0]]["cell"][axis] != objs[refs[1]]["cell"][axis]
                if t == "glyph":
                    assert objs[refs[0]]["glyph"] == q["answer"]
            elif t == "exists":
                words = q["question"].rstrip("?").split()
                assert (q["answer"] == "yes") == ((words[-2], words[-1]) in combos)
            elif t == "count":
                assert len(refs) == int(q["answer"])
            n_checked += 1
    assert n_checked > 700


# ----------------------------------------------------------------------------------------- splits
def test_splits_disjoint(built):
    root, out = built

    def keys(split):
        return {json.dumps(sorted([o["cell"], o["color"], o["shape"], o["size"], o["glyph"] or ""]
                                  for o in e["objects"]))
                for e in json.load(open(out[split]["objects"])).values()}

    tree = _tree(root)
    hashes = {s: {h for p, h in tree.items() if p.startswith(f"{s}/images/")} for s in task.SPLITS}
    for a in task.SPLITS:
        assert len(hashes[a]) == SIZES[a] and len(keys(a)) == SIZES[a]  # no duplicate within a split
        for b in task.SPLITS:
            if a < b:
                assert not keys(a) & keys(b) and not hashes[a] & hashes[b], (a, b)
    # Split seeds are disjoint, and `exclude` redraws a held-out scene.
    firsts = {s: next(task.iter_split(s, 1, 0))["key"] for s in task.SPLITS}
    assert len(set(firsts.values())) == len(task.SPLITS)
    redrawn = next(task.iter_split("train", 1, 0, exclude={firsts["train"]}))
    assert redrawn["key"] != firsts["train"]


# ---------------------------------------------------------------------------------------- balance
def test_answer_distributions_balanced():
    qs = [q for s in _in_memory("train", 4000) for q in s["questions"]]
    by_type = defaultdict(Counter)
    by_ref = defaultdict(Counter)  # (type, template, referring word) -> answers
    for q in qs:
        by_type[q["type"]][q["answer"]] += 1
        words = q["question"].rstrip("?").split()
        ref = {"color": words[-1], "shape": words[-2], "glyph": words[-2], "size": words[-4]}.get(q["type"], "")
        by_ref[(q["type"], q["template"], ref)][q["answer"]] += 1
    assert set(by_type) == set(questions.QUESTION_TYPES)
    sizes = [sum(c.values()) for c in by_type.values()]
    assert max(sizes) < 2 * min(sizes), by_type  # every type is about equally frequent
    for t, c in by_type.items():
        n, k = sum(c.values()), len(questions.ANSWERS[t])
        assert n >= 300 and set(c) == set(questions.ANSWERS[t]), (t, c)
        assert max(c.values()) <= 2 * n / k and min(c.values()) >= 0.5 * n / k, (t, c)
    n_groups = 0
    for (t, template, ref), c in by_ref.items():
        n = sum(c.values())
        k = 2 if t == "position" else len(questions.ANSWERS[t])
        if n >= 20 * k:  # e.g. the colours answered to 'What color is the star?'
            assert max(c.values()) <= 2 * n / k, (t, template, ref, c)
            n_groups += 1
    assert n_groups >= 15


def test_blind_baseline_near_chance():
    train = as_eval_rows(q for s in _in_memory("train", 1500) for q in s["questions"])
    test = as_eval_rows(q for s in _in_memory("test", 700) for q in s["questions"])
    table = blind_table(train, test)
    text = format_table(table)
    for t in questions.QUESTION_TYPES:
        assert table[t]["best"] <= questions.CHANCE[t] + 0.08, text
    assert table["overall"]["best"] <= table["overall"]["chance"] + 0.04, text
    assert table["overall"]["chance"] < 0.4


def test_blind_baseline_cli(built, tmp_path, capsys):
    root, _ = built
    out = str(tmp_path / "blind.json")
    table = blind_main(["--data", root, "--json", out])
    assert "| **overall** |" in capsys.readouterr().out
    assert json.load(open(out))["overall"]["n"] == table["overall"]["n"] > 0


def test_task_cli_help():
    res = subprocess.run([sys.executable, "-m", "dualspeed_lab.toy.task", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--train" in res.stdout and "--pretrain" in res.stdout


# ----------------------------------------------------------------------------------- captions etc.
def test_caption_lists_every_object():
    for i in range(50):
        scene = scenes.make_scene(random.Random(i))
        cap = scenes.caption_for(scene)
        assert cap == scenes.caption_for(scene)
        assert cap.startswith(scenes.NUMBER_WORDS[len(scene["objects"])].capitalize() + " objects")
        for o in scene["objects"]:
            phrase = f"{o['size']} {o['color']} {o['shape']}"
            if o["glyph"]:
                phrase += f" with the letter {o['glyph']}"
            assert f"{phrase} ({scenes.ROW_WORDS[o['cell'][0]]}, {scenes.COL_WORDS[o['cell'][1]]})" in cap


def test_scoring():
    assert questions.is_correct("Red.", "red") and questions.is_correct("three", "3")
    assert questions.is_correct("The K", "K") and not questions.is_correct("left", "right")


def test_task_reexports_its_parts():
    """dualspeed_lab.toy.task still offers every name of the single module it was split from (the reproduction
    driver imports build_task, CHANCE and is_correct from it), as the very objects of scenes / render / questions."""
    from dualspeed_lab.toy.task import CHANCE, build_task, is_correct

    assert CHANCE is questions.CHANCE and is_correct is questions.is_correct and build_task is task.build_task
    before_split = ["CANVAS", "PATCH", "GRID", "CELLS", "CELL", "COLORS", "COLOR_NAMES", "SHAPES", "SIZES", "GLYPHS",
                    "BACKGROUNDS", "QUESTION_TYPES", "ANSWERS", "CHANCE", "SPLITS", "QA_SPLITS", "DEFAULT_SIZES",
                    "DEFAULT_QUESTIONS", "SHORT_ANSWER_SUFFIX", "make_scene", "render", "ground_truth",
                    "questions_for", "caption_for", "scene_key", "iter_split", "build_split", "build_task",
                    "normalize_answer", "is_correct", "glyph_backend", "object_mask"]
    assert set(before_split) <= set(task.__all__) and all(hasattr(task, n) for n in task.__all__)
    for part in (scenes, render, questions):
        for name in set(part.__all__) & set(task.__all__):
            assert getattr(task, name) is getattr(part, name), name


def test_restricted_question_types(tmp_path):
    """--types: only those types are asked, every QA image gets at least one, meta.json records them; the
    default (every type) draws the same samples as before the option existed (exists is the fallback)."""
    out = task.build_task(str(tmp_path), seed=1, sizes={"pretrain": 0, "train": 30, "val": 0, "test": 20},
                          types=("color", "shape"), write_images=False)
    meta = json.load(open(out["meta"]))
    assert meta["question_types"] == ["color", "shape"]
    rows = [json.loads(line) for line in open(out["test"]["questions"])]
    assert rows and {r["type"] for r in rows} <= {"color", "shape"}
    records = json.load(open(out["train"]["data_path"]))
    assert len(records) == 30 and all(len(r["conversations"]) >= 2 for r in records)
    a = [s["questions"] for s in task.iter_split("train", 20, seed=1)]
    b = [s["questions"] for s in task.iter_split("train", 20, seed=1, types=questions.QUESTION_TYPES)]
    assert a == b
    scene = scenes.make_scene(random.Random(0))
    scene["objects"] = [dict(o, shape="circle", color="red") for o in scene["objects"]]  # nothing unique
    assert questions.questions_for(scene, random.Random(0), 2, types=("color", "shape")) == []
    with pytest.raises(ValueError, match="types"):
        next(task.iter_split("train", 1, types=("colour",)))
