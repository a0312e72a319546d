"""Convert model_vqa_loader answers for VQAv2 into the EvalAI upload file (plus a local score on val).

    python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt llava-v1.5-13b
        [--dir ./playground/data/eval/vqav2] [--question-file ...] [--annotation-file ...] [--score-file ...]

Reads ``<dir>/answers/<split>/<ckpt>/merge.jsonl`` (``question_id``, ``text``) and writes
``<dir>/answers_upload/<split>/<ckpt>.json``: a JSON list ``[{"question_id", "answer"}]`` with one entry for
**every** question of the question file (default ``<dir>/llava_vqav2_mscoco_test2015.jsonl``, the full test
set EvalAI expects even for test-dev), answers normalised with ``EvalAIAnswerProcessor`` and ``""`` for
questions without an answer. Unparsable answer lines are counted and skipped.

Local score: when ground-truth answers are available -- question rows with an ``answers`` list (strings or
``{"answer": ...}`` dicts, the VQA annotation layout), or ``--annotation-file`` with the official VQA
annotations JSON (``{"annotations": [{"question_id", "answers": [{"answer"}]}]}``) -- the VQA soft accuracy
(``TextVQAAccuracyEvaluator``, missing answers counting 0) is printed, labelled as a local score: the
official number is test-dev, computed by the EvalAI server. ``--score-file`` is written only then, with
``"official": false``.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="VQAv2 answers -> EvalAI upload JSON")
    p.add_argument("--dir", type=str, default="./playground/data/eval/vqav2")
    p.add_argument("--ckpt", type=str, required=True)
    p.add_argument("--split", type=str, required=True)
    p.add_argument("--question-file", type=str, default=None,
                   help="questions to cover (default: <dir>/llava_vqav2_mscoco_test2015.jsonl)")
    p.add_argument("--annotation-file", type=str, default=None,
                   help="official VQA annotations JSON, for a local score on a val split")
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file when a local score is computed")
    return p.parse_args(argv)


def _gt_list(raw) -> List[str]:
    return [a["answer"] if isinstance(a, dict) else a for a in raw]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator
    from llava.eval.summarize import write_score_file

    args = parse_args(argv)
    src = os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
    question_file = args.question_file or os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl")
    dst = os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")
    os.makedirs(os.path.dirname(dst), exist_ok=True)

    results, error_line = [], 0
    with open(src) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:
                error_line += 1
    results = {x["question_id"]: x["text"] for x in results}
    with open(question_file) as f:
        questions = [json.loads(line) for line in f if line.strip()]
    print(f"total results: {len(results)}, total split: {len(questions)}, error_line: {error_line}")

    processor = EvalAIAnswerProcessor()
    all_answers = []
    for q in questions:
        qid = q["question_id"]
        all_answers.append({"question_id": qid, "answer": processor(results[qid]) if qid in results else ""})
    missing = sum(q["question_id"] not in results for q in questions)
    if missing:
        print(f"{missing} question(s) without an answer were written with answer \"\"")
    with open(dst, "w") as f:
        json.dump(all_answers, f)
    print(f"wrote {dst}")

    gt: Dict = {q["question_id"]: _gt_list(q["answers"]) for q in questions if q.get("answers")}
    if args.annotation_file:
        with open(args.annotation_file) as f:
            for ann in json.load(f)["annotations"]:
                gt[ann["question_id"]] = _gt_list(ann["answers"])
    out = {"upload_file": dst, "n": len(all_answers), "missing": missing, "local_accuracy": None}
    scored = [a for a in all_answers if a["question_id"] in gt]
    if scored:
        pred_list = [{"pred_answer": a["answer"], "gt_answers": gt[a["question_id"]]} for a in scored]
        acc = 100.0 * TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
        print(f"VQA accuracy: {acc:.2f}% over {len(scored)} questions -- local score on {args.split} "
              f"(has answers), not the official test-dev number")
        write_score_file(args.score_file, "VQAv2", "vqa_accuracy (local)", acc, len(scored), official=False,
                         details={"split": args.split, "empty_answers": sum(1 for a in scored if a["answer"] == "")},
                         source=src)
        out["local_accuracy"] = acc
    elif args.score_file:
        print("no ground-truth answers (test split): no local score, --score-file not written; "
              "the official number comes from the EvalAI server")
    return out


if __name__ == "__main__":
    main()
