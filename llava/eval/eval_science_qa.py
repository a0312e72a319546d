"""Score ScienceQA answers (Accuracy and IMG-Accuracy), upstream's CLI.

    python -m llava.eval.eval_science_qa \
        --base-dir ./playground/data/eval/scienceqa \
        --result-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b.jsonl \
        --output-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b_output.jsonl \
        --output-result ./playground/data/eval/scienceqa/answers/llava-v1.5-13b_result.json \
        [--split test] [--options ABCDE] [--score-file X.score.json]

Inputs: ``<base-dir>/pid_splits.json`` (``{split: [problem id, ...]}``), ``<base-dir>/problems.json``
(``{pid: {"choices": [...], "answer": index, "image": file or null, ...}}``) and the answers JSONL of
``model_vqa_science`` (``question_id``, ``prompt``, ``text``).

The answer letter is read from the model text as upstream does: the whole text is an option letter; or it
starts with ``"X. "``; or ``The answer is X`` followed by one more character occurs exactly once (upstream's
regex ``The answer is ([A-Z]).`` leaves the dot unescaped, kept for parity). Anything else is ``FAILED``, and
so is a letter beyond the problem's number of choices; both count as wrong. A problem with no answer line
counts as wrong too.

IMG subset: problems with an image (``problems.json``'s ``image``; the generator's prompt then starts with
``<image>``). Upstream decides from the prompt alone, so an image problem *without* an answer line fell out
of the IMG denominator and inflated IMG-Accuracy; here it stays in and counts as wrong.

Output: ``Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: xx.xx%``; ``--output-file`` gets
``{"correct": [...], "incorrect": [...]}`` (one analysis dict per problem) and ``--output-result`` gets
``{"acc", "correct", "count", "results": {pid: predicted index or -1}, "outputs": {pid: text}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import List, Optional, Sequence

from llava.eval.summarize import write_score_file

_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def _parse_options(value) -> List[str]:
    # upstream declares `type=list`, which splits the string into characters ("ABCDE" -> A..E);
    # commas and spaces are dropped here so that "A,B,C" works too.
    return [c for c in value if c not in ", "] if isinstance(value, str) else list(value)


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ScienceQA accuracy and IMG-accuracy.")
    p.add_argument("--base-dir", type=str, required=True)
    p.add_argument("--result-file", type=str, required=True)
    p.add_argument("--output-file", type=str, default=None)
    p.add_argument("--output-result", type=str, default=None)
    p.add_argument("--split", type=str, default="test")
    p.add_argument("--options", type=_parse_options, default=["A", "B", "C", "D", "E"])
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    return p.parse_args(argv)


def parse_answer(pred_text: str, options: Sequence[str]) -> str:
    """The option letter the model chose, or "FAILED"."""
    if pred_text in options:
        return pred_text
    if len(pred_text) >= 3 and pred_text[0] in options and pred_text[1:3] == ". ":
        return pred_text[0]
    found = _ANSWER_IS.findall(pred_text)
    if len(found) == 1:
        return found[0]
    return "FAILED"


def get_pred_idx(prediction: str, choices: Sequence, options: Sequence[str]) -> int:
    """Index of the chosen option, or -1 when it is not one of this problem's choices."""
    if prediction in options[:len(choices)]:
        return list(options).index(prediction)
    return -1


def _dump(path: Optional[str], obj) -> None:
    if path is None:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def evaluate(args: argparse.Namespace) -> dict:
    with open(os.path.join(args.base_dir, "pid_splits.json")) as f:
        split_indices = json.load(f)[args.split]
    with open(os.path.join(args.base_dir, "problems.json")) as f:
        problems = json.load(f)
    with open(args.result_file) as f:
        predictions = {str(p["question_id"]): p for p in (json.loads(line) for line in f if line.strip())}

    results = {"correct": [], "incorrect": []}
    sqa_results = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for prob_id in split_indices:
        prob = problems[prob_id]
        pred = predictions.get(str(prob_id))
        if pred is None:
            pred = {"text": "FAILED", "prompt": "Unknown"}
        pred_text = pred["text"]
        answer = parse_answer(pred_text, args.options)
        pred_idx = get_pred_idx(answer, prob["choices"], args.options)
        has_image = bool(prob["image"]) if "image" in prob else "<image>" in pred.get("prompt", "")
        analysis = {
            "question_id": prob_id,
            "parsed_ans": answer,
            "ground_truth": args.options[prob["answer"]],
            "question": pred.get("prompt", ""),
            "pred": pred_text,
            "is_multimodal": has_image,
        }
        sqa_results["results"][prob_id] = pred_idx
        sqa_results["outputs"][prob_id] = pred_text
        results["correct" if pred_idx == prob["answer"] else "incorrect"].append(analysis)

    correct = len(results["correct"])
    total = correct + len(results["incorrect"])
    mm_correct = sum(x["is_multimodal"] for x in results["correct"])
    mm_total = mm_correct + sum(x["is_multimodal"] for x in results["incorrect"])
    if total == 0:
        raise SystemExit(f"split {args.split!r} is empty")
    acc = correct / total * 100
    img_acc = mm_correct / mm_total * 100 if mm_total else None
    img_text = f"{img_acc:.2f}%" if img_acc is not None else "n/a (no image questions)"
    print(f"Total: {total}, Correct: {correct}, Accuracy: {acc:.2f}%, IMG-Accuracy: {img_text}")

    sqa_results["acc"] = acc
    sqa_results["correct"] = correct
    sqa_results["count"] = total
    _dump(args.output_file, results)
    _dump(args.output_result, sqa_results)
    if img_acc is not None:
        write_score_file(args.score_file, "SQA-IMG", "img_accuracy", img_acc, mm_total, official=True,
                         details={"accuracy": acc, "correct": correct, "total": total,
                                  "img_correct": mm_correct, "img_total": mm_total},
                         source=args.result_file)
    return {"acc": acc, "img_acc": img_acc, "correct": correct, "total": total,
            "img_correct": mm_correct, "img_total": mm_total}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return evaluate(get_args(argv))


if __name__ == "__main__":
    main()
