"""Score SEED-Bench answers locally and write the leaderboard upload JSONL, upstream's CLI.

    python scripts/convert_seed_for_submission.py \
        --annotation-file ./playground/data/eval/seed_bench/SEED-Bench.json \
        --result-file ./playground/data/eval/seed_bench/answers/llava-v1.5-13b/merge.jsonl \
        --result-upload-file ./playground/data/eval/seed_bench/answers_upload/llava-v1.5-13b.jsonl \
        [--score-file X.score.json]

Inputs: ``SEED-Bench.json`` (``{"question_type": {name: id}, "questions": [{"question_id", "answer": letter,
"question_type_id", "data_type": "image"|"video", ...}]}``) and the answers JSONL of ``model_vqa_loader``.

Scoring, as upstream: a question is correct when the model text (stripped) equals the answer letter exactly;
every question of SEED-Bench.json counts, one without an answer line as wrong. Printed: the accuracy per
question type, the total accuracy, then the ``image`` (SEED-IMG, the number LLaVA-1.5 reports as SEED) and
``video`` subsets. The score file's score is the image-subset accuracy; the rest is in its details.

Upload file: one line ``{"question_id", "prediction"}`` per question of SEED-Bench.json. Fix against
upstream: a question without an answer gets ``"prediction": ""`` (upstream raised KeyError).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SEED-Bench local accuracy + upload JSONL")
    p.add_argument("--annotation-file", type=str, required=True)
    p.add_argument("--result-file", type=str, required=True)
    p.add_argument("--result-upload-file", type=str, default=None)
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    return p.parse_args(argv)


def accuracy(questions: List[dict], results: Dict[str, dict], data_type: Optional[str] = None) -> dict:
    """Per question-type and total accuracy (percent) over ``questions`` of ``data_type`` (None: all)."""
    type_counts: Dict[int, int] = {}
    correct_counts: Dict[int, int] = {}
    for q in questions:
        if data_type is not None and q.get("data_type") != data_type:
            continue
        t = q["question_type_id"]
        type_counts[t] = type_counts.get(t, 0) + 1
        row = results.get(str(q["question_id"]))
        hit = row is not None and str(row["text"]).strip() == q["answer"]
        correct_counts[t] = correct_counts.get(t, 0) + hit
    total = sum(type_counts.values())
    correct = sum(correct_counts.values())
    return {"per_type": {t: 100.0 * correct_counts[t] / type_counts[t] for t in sorted(type_counts)},
            "per_type_n": {t: type_counts[t] for t in sorted(type_counts)},
            "accuracy": 100.0 * correct / total if total else None, "n": total, "correct": correct}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from llava.eval.summarize import write_score_file

    args = get_args(argv)
    with open(args.annotation_file) as f:
        data = json.load(f)
    type_names = {tid: name for name, tid in data["question_type"].items()}
    questions = data["questions"]
    results: Dict[str, dict] = {}
    with open(args.result_file) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                results[str(row["question_id"])] = row

    overall = accuracy(questions, results)
    for t, acc in overall["per_type"].items():
        print(f"{type_names.get(t, t)}: {acc:.2f}%")
    print(f"Total accuracy: {overall['accuracy']:.2f}%")
    subsets = {}
    for data_type in ("image", "video"):
        sub = accuracy(questions, results, data_type)
        subsets[data_type] = sub
        if sub["n"]:
            print(f"{data_type} accuracy: {sub['accuracy']:.2f}%")
        else:
            print(f"{data_type} accuracy: n/a (no {data_type} questions)")
    missing = sum(str(q["question_id"]) not in results for q in questions)
    if missing:
        print(f"{missing} question(s) have no answer (counted as wrong)")

    if args.result_upload_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.result_upload_file)), exist_ok=True)
        with open(args.result_upload_file, "w") as fp:
            for q in questions:
                row = results.get(str(q["question_id"]))
                fp.write(json.dumps({"question_id": q["question_id"],
                                     "prediction": row["text"] if row is not None else ""}) + "\n")

    image = subsets["image"]
    if image["n"]:
        write_score_file(args.score_file, "SEED", "image accuracy (SEED-IMG)", image["accuracy"], image["n"],
                         official=True,
                         details={"total_accuracy": overall["accuracy"], "total_n": overall["n"],
                                  "video_accuracy": subsets["video"]["accuracy"], "video_n": subsets["video"]["n"],
                                  "per_type": {type_names.get(t, str(t)): a for t, a in overall["per_type"].items()},
                                  "missing": missing},
                         source=args.result_file)
    elif args.score_file:
        print("no image questions: --score-file not written")
    return {"overall": overall, "image": image, "video": subsets["video"], "missing": missing}


if __name__ == "__main__":
    main()
