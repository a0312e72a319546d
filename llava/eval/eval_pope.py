"""Score POPE answers per category (adversarial / popular / random), upstream's CLI.

    python -m llava.eval.eval_pope \
        --annotation-dir ./playground/data/eval/pope/coco \
        --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \
        --result-file ./playground/data/eval/pope/answers/llava-v1.5-13b.jsonl [--score-file X.score.json]

Inputs:
- ``--annotation-dir``: the POPE label files ``coco_pope_<category>.json`` (one JSON object a line:
  ``{"question_id", "image", "text", "label": "yes"|"no"}``; a JSON list is accepted too). Other files in
  the folder are ignored.
- ``--question-file``: LLaVA's question JSONL with ``question_id``, ``image``, ``text`` and ``category``.
- ``--result-file``: the answers JSONL of ``model_vqa_loader`` (``question_id``, ``text``).

Answer -> label, as upstream: keep the text before the first ``.``, delete commas, split on spaces; the
answer is "no" if one of the words is ``No``, ``no`` or ``not``, else "yes".

Difference from upstream (a fix): upstream zips the labels of a category with that category's answers *by
position*, so any reordering, sharding or missing line shifts every later label. Here each answer is
matched to its label by question id. LLaVA's question file numbers the categories with offsets
(adversarial 1.., random 10000001.., ...), while every label file starts again at 1, so the id is also tried
modulo 10**7; a candidate whose image differs from the question's image is rejected, and (image, question
text) is the last resort. Unmatched answers and unanswered labels are reported, not scored.

Output per category: ``TP FP TN FN``, Accuracy, Precision, Recall, F1 score, Yes ratio, and the
``f1, acc, precision, recall, yes_ratio`` line upstream prints; then the mean F1 over the categories,
which is the POPE number LLaVA-1.5 reports (x100).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

from llava.eval.summarize import write_score_file

CATEGORIES = ("adversarial", "popular", "random")
_FILE_PREFIX, _FILE_SUFFIX = "coco_pope_", ".json"
_ID_OFFSET = 10 ** 7


def _load_json_rows(path: str) -> List[dict]:
    with open(path) as f:
        content = f.read()
    if content.lstrip().startswith("["):
        return json.loads(content)
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def pope_yes_no(text: str) -> str:
    """Map a free-form answer to "yes"/"no" exactly as upstream does."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _question_line(text: str) -> str:
    return text.split("\n")[0].strip().lower()


class _LabelIndex:
    def __init__(self, rows: List[dict]):
        self.by_id: Dict[str, dict] = {}
        self.by_image_question: Dict[tuple, dict] = {}
        for row in rows:
            self.by_id[str(row["question_id"])] = row
            if "image" in row and "text" in row:
                self.by_image_question[(row["image"], _question_line(row["text"]))] = row

    @staticmethod
    def _consistent(label: Optional[dict], question: dict) -> bool:
        if label is None:
            return False
        if "image" in label and "image" in question and label["image"] != question["image"]:
            return False
        return True

    def find(self, question_id, question: dict) -> Optional[dict]:
        label = self.by_id.get(str(question_id))
        if self._consistent(label, question):
            return label
        try:
            local_id = int(question_id) % _ID_OFFSET
        except (TypeError, ValueError):
            local_id = None
        if local_id is not None:
            label = self.by_id.get(str(local_id))
            if self._consistent(label, question):
                return label
        if "image" in question and "text" in question:
            return self.by_image_question.get((question["image"], _question_line(question["text"])))
        return None


def pope_metrics(preds: List[str], labels: List[str]) -> dict:
    """Confusion counts and metrics for paired "yes"/"no" predictions and labels ("yes" = positive)."""
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l != "yes" for p, l in zip(preds, labels))
    tn = sum(p != "yes" and l != "yes" for p, l in zip(preds, labels))
    fn = sum(p != "yes" and l == "yes" for p, l in zip(preds, labels))
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": n,
            "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": preds.count("yes") / n if n else 0.0}


def _print_metrics(m: dict) -> None:
    print("TP\tFP\tTN\tFN\t")
    print("{}\t{}\t{}\t{}".format(m["TP"], m["FP"], m["TN"], m["FN"]))
    print("Accuracy: {}".format(m["accuracy"]))
    print("Precision: {}".format(m["precision"]))
    print("Recall: {}".format(m["recall"]))
    print("F1 score: {}".format(m["f1"]))
    print("Yes ratio: {}".format(m["yes_ratio"]))
    print("%.3f, %.3f, %.3f, %.3f, %.3f" % (m["f1"], m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]))


def eval_pope(annotation_dir: str, question_file: str, result_file: str,
              score_file: Optional[str] = None) -> Dict[str, dict]:
    questions = {str(q["question_id"]): q for q in _load_json_rows(question_file)}
    answers = _load_json_rows(result_file)

    per_category: Dict[str, dict] = {}
    for name in sorted(os.listdir(annotation_dir)):
        if not (name.startswith(_FILE_PREFIX) and name.endswith(_FILE_SUFFIX)):
            continue
        category = name[len(_FILE_PREFIX):-len(_FILE_SUFFIX)]
        labels = _LabelIndex(_load_json_rows(os.path.join(annotation_dir, name)))
        cur = [a for a in answers if questions.get(str(a["question_id"]), {}).get("category") == category]
        print("Category: {}, # samples: {}".format(category, len(cur)))
        preds, golds, unmatched, used = [], [], 0, set()
        for answer in cur:
            label = labels.find(answer["question_id"], questions[str(answer["question_id"])])
            if label is None:
                unmatched += 1
                continue
            used.add(str(label["question_id"]))
            preds.append(pope_yes_no(answer["text"]))
            golds.append("no" if label["label"] == "no" else "yes")
        if unmatched:
            print(f"WARNING: {unmatched} answer(s) have no label in {name}; not scored")
        unanswered = len(labels.by_id) - len(used)
        if unanswered:
            print(f"WARNING: {unanswered} label(s) in {name} have no answer; not scored")
        if not preds:
            print("no scorable answers in this category")
            print("====================================")
            continue
        metrics = pope_metrics(preds, golds)
        _print_metrics(metrics)
        print("====================================")
        per_category[category] = metrics

    stray = [a for a in answers if str(a["question_id"]) not in questions]
    if stray:
        print(f"WARNING: {len(stray)} answer(s) have a question_id missing from --question-file")
    if not per_category:
        raise SystemExit("no category could be scored (check --annotation-dir / --question-file)")

    cats = sorted(per_category)
    mean_f1 = sum(per_category[c]["f1"] for c in cats) / len(cats)
    print("Mean F1 over {} categories ({}): {:.4f} ({:.2f})".format(len(cats), ", ".join(cats), mean_f1,
                                                                  100 * mean_f1))
    write_score_file(score_file, "POPE", "f1 (mean over categories)", 100 * mean_f1,
                     sum(per_category[c]["n"] for c in cats), official=set(cats) == set(CATEGORIES),
                     details={c: per_category[c] for c in cats}, source=result_file)
    return per_category


def main(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description="POPE: per-category yes/no metrics and the mean F1.")
    p.add_argument("--annotation-dir", type=str, required=True)
    p.add_argument("--question-file", type=str, required=True)
    p.add_argument("--result-file", type=str, required=True)
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    args = p.parse_args(argv)
    return eval_pope(args.annotation_dir, args.question_file, args.result_file, args.score_file)


if __name__ == "__main__":
    main()
