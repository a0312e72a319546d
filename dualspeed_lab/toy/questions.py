"""The toy task's questions: what can be asked about a scene, with which answers, and how answers are scored.

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

    questions = questions_for(scene, rng)          # 1-3 questions of distinct types (see its docstring)
    questions_for(scene, rng, 2, types=("color", "shape"))
    is_correct("Three.", "3")                      # True: exact match after normalize_answer
"""
from __future__ import annotations

import functools
import random
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from dualspeed_lab.toy.scenes import (COLOR_NAMES, GLYPHS, NUMBER_WORDS, SEED_PREFIX, SHAPE_PLURALS, SHAPES,
                                      SIZES, article, make_scene)

NEAR_MISS_PROB = 0.75            # a "no" existence question asks for a colour and a shape both present

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
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

__all__ = ["NEAR_MISS_PROB", "QUESTION_TYPES", "COUNT_ANSWERS", "ANSWERS", "CHANCE", "SHORT_ANSWER_SUFFIX",
           "questions_for", "normalize_answer", "is_correct"]


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
                     {"article": article(color), "color": color, "shape": shape}, answer, refs)


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
    rng = random.Random(f"{SEED_PREFIX}/calibration")
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
