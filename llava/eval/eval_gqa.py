"""Local GQA accuracy (testdev-balanced), a stand-in for the official ``eval/eval.py`` accuracy.

    # after: python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst $GQADIR/testdev_balanced_predictions.json
    cd $GQADIR && python -m llava.eval.eval_gqa --tier testdev_balanced [--score-file X.score.json]
    # or with explicit paths:
    python -m llava.eval.eval_gqa --questions testdev_balanced_questions.json \
        --predictions testdev_balanced_predictions.json

Inputs:
- ``--questions`` (default ``{tier}_questions.json``): the public GQA questions file,
  ``{question id: {"question", "answer", "imageId", "isBalanced", "types", ...}}``;
- ``--predictions`` (default ``{tier}_predictions.json``): ``[{"questionId", "prediction"}]`` as written by
  ``scripts/convert_gqa_for_eval.py``.

Metric: accuracy = share of questions (those with ``isBalanced`` true, when the field is present) whose
prediction equals the gold answer. Like the official script, the strings are compared as they are: the
official script does no normalisation of its own; the one normalisation of the LLaVA pipeline (lowercase,
trailing "." removed) is done by ``convert_gqa_for_eval.py``. A question without a prediction counts as
wrong here and is reported (the official script stops with an error instead).

Only accuracy is computed. The official script's other metrics (consistency, validity, plausibility,
grounding, distribution) need scene graphs, choices and entailment assets that the public testdev-balanced
release lacks; run the official script for them.

Output: ``Accuracy: xx.xx%`` (with the question count).
"""
from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from llava.eval.summarize import write_score_file


def gqa_accuracy(questions: dict, predictions: list) -> dict:
    preds = {str(p["questionId"]): p["prediction"] for p in predictions}
    correct = total = missing = 0
    for qid, question in questions.items():
        if not question.get("isBalanced", True):
            continue
        total += 1
        pred = preds.get(str(qid))
        if pred is None:
            missing += 1
            continue
        correct += pred == question["answer"]
    extra = len(set(preds) - {str(q) for q in questions})
    return {"correct": correct, "total": total, "missing": missing, "extra": extra,
            "accuracy": 100.0 * correct / total if total else 0.0}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description="GQA accuracy (only; see the module docstring).")
    p.add_argument("--tier", type=str, default="testdev_balanced")
    p.add_argument("--questions", type=str, default="{tier}_questions.json")
    p.add_argument("--predictions", type=str, default="{tier}_predictions.json")
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    args = p.parse_args(argv)

    questions_path = args.questions.format(tier=args.tier)
    predictions_path = args.predictions.format(tier=args.tier)
    with open(questions_path) as f:
        questions = json.load(f)
    with open(predictions_path) as f:
        predictions = json.load(f)
    res = gqa_accuracy(questions, predictions)
    if res["total"] == 0:
        raise SystemExit(f"{questions_path}: no (balanced) questions")
    if res["missing"]:
        print(f"WARNING: {res['missing']} question(s) have no prediction; counted as wrong "
              "(the official script refuses to score such a file)")
    if res["extra"]:
        print(f"WARNING: {res['extra']} prediction(s) for questions not in {questions_path}; ignored")
    print(f"Questions: {res['total']}")
    print(f"Accuracy: {res['accuracy']:.2f}%")
    print("(accuracy only: consistency/validity/plausibility/distribution need the official script and "
          "its extra assets)")
    write_score_file(args.score_file, "GQA", "accuracy", res["accuracy"], res["total"],
                     official=res["missing"] == 0, details=res, source=predictions_path)
    return res


if __name__ == "__main__":
    main()
