#!/usr/bin/env python
"""Image-blind baselines for the toy task: how far the question text alone gets (should be ~chance).

Fitted on the train split's questions.jsonl, scored (exact match) on the evaluation split's:

    chance     a uniform guess among the answers the question's template allows (dualspeed_lab/toy/questions.CHANCE)
    type       the majority train answer of the question type
    template   the majority train answer of (type, template), e.g. 'What color is the {shape}?'
    text       the majority train answer of the exact question text (referring expression included),
               falling back to `template` for texts never seen in train
    best       the best of type / template / text per type (picked on the evaluation split itself, so an
               optimistic upper bound of what a text-only majority rule reaches)

    python -m dualspeed_lab.toy.blind_baseline --data /tmp/toytask            # train -> test
    python -m dualspeed_lab.toy.blind_baseline --data /tmp/toytask --eval val --json /tmp/blind.json
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

from dualspeed_lab.toy.questions import CHANCE, QUESTION_TYPES, normalize_answer

STRATEGIES = ("type", "template", "text")
COLUMNS = ("chance",) + STRATEGIES + ("best",)

__all__ = ["load_questions", "as_eval_rows", "fit_majority", "blind_table", "format_table", "main"]


def load_questions(path: str) -> List[dict]:
    """The rows of a questions.jsonl ({question_id, image, text, answer, type, template, ...})."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def as_eval_rows(questions: Iterable[dict]) -> List[dict]:
    """`questions_for` dicts ({type, question, answer, template}) in questions.jsonl's field names."""
    return [{"text": q["question"], "answer": q["answer"], "type": q["type"], "template": q["template"]}
            for q in questions]


def _majority(counter: Counter) -> str:
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # ties: alphabetical, deterministic


def _keys(row: dict) -> Dict[str, tuple]:
    return {"type": (row["type"],), "template": (row["type"], row["template"]), "text": (row["type"], row["text"])}


def fit_majority(train: Iterable[dict]) -> Dict[str, Dict[tuple, str]]:
    """{strategy: {key: majority normalised answer}} from train rows."""
    counts = {s: defaultdict(Counter) for s in STRATEGIES}
    for row in train:
        for s, key in _keys(row).items():
            counts[s][key][normalize_answer(row["answer"])] += 1
    return {s: {k: _majority(c) for k, c in counts[s].items()} for s in STRATEGIES}


def _predict(model: Dict[str, Dict[tuple, str]], row: dict, strategy: str) -> Optional[str]:
    keys = _keys(row)
    for s in STRATEGIES[: STRATEGIES.index(strategy) + 1][::-1]:  # back off: text -> template -> type
        if keys[s] in model[s]:
            return model[s][keys[s]]
    return None


def blind_table(train: Sequence[dict], test: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """{type | 'overall': {n, chance, type, template, text, best}}: accuracies of the blind rules on `test`."""
    model = fit_majority(train)
    hits = defaultdict(Counter)
    n = Counter()
    for row in test:
        t = row["type"]
        n[t] += 1
        gold = normalize_answer(row["answer"])
        for s in STRATEGIES:
            hits[t][s] += int(_predict(model, row, s) == gold)
    table = {}
    for t in [t for t in QUESTION_TYPES if n[t]] + sorted(set(n) - set(QUESTION_TYPES)):
        row = {"n": n[t], "chance": CHANCE.get(t, float("nan"))}
        row.update({s: hits[t][s] / n[t] for s in STRATEGIES})
        row["best"] = max(row[s] for s in STRATEGIES)
        table[t] = row
    total = sum(n.values())
    if total:
        table["overall"] = {"n": total}
        for c in COLUMNS:
            table["overall"][c] = sum(table[t][c] * table[t]["n"] for t in n) / total
    return table


def format_table(table: Dict[str, Dict[str, float]]) -> str:
    """A Markdown table, accuracies in %."""
    lines = ["| type | n | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for t, row in table.items():
        name = f"**{t}**" if t == "overall" else t
        lines.append(f"| {name} | {row['n']} | " + " | ".join(f"{100 * row[c]:.1f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description="Image-blind majority baselines of the toy task.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="the task folder (dualspeed_lab/toy/task.py --out)")
    parser.add_argument("--train", default="train", help="split the rules are fitted on")
    parser.add_argument("--eval", default="test", help="split they are scored on")
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    train = load_questions(os.path.join(args.data, args.train, "questions.jsonl"))
    test = load_questions(os.path.join(args.data, args.eval, "questions.jsonl"))
    table = blind_table(train, test)
    print(f"image-blind accuracy (%), fitted on {args.train} ({len(train)} questions), "
          f"scored on {args.eval} ({len(test)} questions)")
    print(format_table(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    return table


if __name__ == "__main__":
    main()
