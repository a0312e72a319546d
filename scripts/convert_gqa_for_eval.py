"""Convert model_vqa_loader answers for GQA into the predictions file of the GQA evaluation.

    python scripts/convert_gqa_for_eval.py --src ./playground/data/eval/gqa/answers/llava_gqa_testdev_balanced/X/merge.jsonl \
        --dst ./playground/data/eval/gqa/data/testdev_balanced_predictions.json

Reads JSONL lines ``{"question_id", "text", ...}`` and writes a JSON list ``[{"questionId", "prediction"}]``,
the prediction being the answer with trailing periods removed and lowercased (as upstream). Score it with
the official ``eval/eval.py --tier testdev_balanced`` or offline with ``python -m llava.eval.eval_gqa``.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional, Sequence


def convert(src: str) -> List[dict]:
    out = []
    with open(src) as f:
        for line in f:
            if not line.strip():
                continue
            res = json.loads(line)
            out.append({"questionId": res["question_id"], "prediction": res["text"].rstrip(".").lower()})
    return out


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(description="model_vqa_loader answers -> GQA predictions JSON")
    p.add_argument("--src", type=str, required=True)
    p.add_argument("--dst", type=str, required=True)
    args = p.parse_args(argv)
    answers = convert(args.src)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    with open(args.dst, "w") as f:
        json.dump(answers, f)
    return answers


if __name__ == "__main__":
    main()
