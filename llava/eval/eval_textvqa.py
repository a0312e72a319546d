"""Score TextVQA answers (VQA soft accuracy), upstream's CLI.

    python -m llava.eval.eval_textvqa \
        --annotation-file ./playground/data/eval/textvqa/TextVQA_0.5.1_val.json \
        --result-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl [--score-file X.score.json]

``--result-dir DIR`` scores every ``*.jsonl`` in DIR instead (with ``--score-file``, the path is then taken as
a directory and ``<result name>/textvqa.score.json`` is written under it, one per result file).

Inputs:
- the official annotation JSON: ``{"data": [{"image_id", "question", "answers": [10 strings], ...}]}``;
- the answers JSONL of ``model_vqa_loader``: ``{"question_id", "prompt", "text", ...}``. In LLaVA's
  ``llava_textvqa_val_v051_ocr.jsonl`` the ``question_id`` is the TextVQA *image id* and the question text is
  the first line of the prompt (``"<question>\\nReference OCR token: ...\\nAnswer the question using a
  single word or phrase."``), so each result is matched to its annotation by
  ``(image_id, question.lower())``, as upstream does.

Output (stdout): the result file's stem, then ``Samples: N`` and ``Accuracy: xx.xx%``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Optional, Sequence, Tuple

from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator
from llava.eval.summarize import write_score_file

_OCR_PREFIX = "Reference OCR token:"
_LEGACY_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TextVQA soft accuracy.")
    p.add_argument("--annotation-file", type=str, required=True)
    p.add_argument("--result-file", type=str, default=None)
    p.add_argument("--result-dir", type=str, default=None)
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    return p.parse_args(argv)


def prompt_processor(prompt: str) -> str:
    """Recover the lowercased question from a result's ``prompt``.

    Layouts handled (the first three are upstream's): ``"OCR tokens: ... Question: Q Short answer:"``;
    three lines with a ``Reference OCR token:`` line (the question is the other non-instruction line,
    i.e. the first line, or the second when the OCR line comes first); two lines ``"Q\\n<instruction>"``.
    Anything else (upstream asserts) falls back to the first line that is neither an ``<image>`` marker
    nor an OCR line.
    """
    if prompt.startswith("OCR tokens: "):
        match = _LEGACY_QUESTION.search(prompt)
        if match:
            return match.group(1).lower()
    lines = prompt.split("\n")
    if lines and lines[0].strip() == "<image>":
        lines = lines[1:]
    if _OCR_PREFIX + " " in prompt and len(lines) == 3:
        question = lines[1] if lines[0].startswith(_OCR_PREFIX) else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        candidates = [ln for ln in lines if ln.strip() and not ln.startswith(_OCR_PREFIX)]
        question = candidates[0] if candidates else prompt
    return question.lower()


def load_annotations(annotation_file: str) -> dict:
    with open(annotation_file) as f:
        data = json.load(f)["data"]
    return {(a["image_id"], a["question"].lower()): a for a in data}


def eval_single(annotation_file: str, result_file: str, score_file: Optional[str] = None) -> Tuple[float, int]:
    """Print and return (accuracy in percent, number of samples)."""
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    print(experiment_name)
    annotations = load_annotations(annotation_file)
    with open(result_file) as f:
        results = [json.loads(line) for line in f if line.strip()]

    pred_list, unmatched = [], []
    for result in results:
        key = (result["question_id"], prompt_processor(result["prompt"]))
        annotation = annotations.get(key)
        if annotation is None:
            unmatched.append(key)
            continue
        pred_list.append({"pred_answer": result["text"], "gt_answers": annotation["answers"]})
    if unmatched:
        raise SystemExit(f"{result_file}: {len(unmatched)} result(s) have no annotation with the same "
                         f"(image_id, question), e.g. {unmatched[:3]}; wrong --annotation-file?")
    if not pred_list:
        raise SystemExit(f"{result_file}: no results to score")

    accuracy = 100.0 * TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    print("Samples: {}\nAccuracy: {:.2f}%\n".format(len(pred_list), accuracy))
    write_score_file(score_file, "TextVQA", "accuracy", accuracy, len(pred_list), official=True,
                     source=result_file)
    return accuracy, len(pred_list)


def main(argv: Optional[Sequence[str]] = None):
    args = get_args(argv)
    if args.result_file is None and args.result_dir is None:
        raise SystemExit("give --result-file or --result-dir")
    out = {}
    if args.result_file is not None:
        out[args.result_file] = eval_single(args.annotation_file, args.result_file, args.score_file)
    if args.result_dir is not None:
        for name in sorted(os.listdir(args.result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            path = os.path.join(args.result_dir, name)
            score_file = None
            if args.score_file is not None:
                score_file = os.path.join(args.score_file, os.path.splitext(name)[0], "textvqa.score.json")
            out[path] = eval_single(args.annotation_file, path, score_file)
    return out


if __name__ == "__main__":
    main()
