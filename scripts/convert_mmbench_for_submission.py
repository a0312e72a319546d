"""Convert model_vqa_mmbench answers into the MMBench / MMBench-CN upload .xlsx (plus a local CircularEval).

    python scripts/convert_mmbench_for_submission.py \
        --annotation-file ./playground/data/eval/mmbench/mmbench_dev_20230712.tsv \
        --result-dir ./playground/data/eval/mmbench/answers/mmbench_dev_20230712 \
        --upload-dir ./playground/data/eval/mmbench/answers_upload/mmbench_dev_20230712 \
        --experiment llava-v1.5-13b [--score-file X.score.json] [--benchmark MMB|MMB-CN] [--skip-upload]

Upload file (as upstream): the TSV read with pandas, minus the columns hint, category, source, image,
comment and l2-category, with a ``prediction`` column inserted at position 6 holding the model's text for
each ``index`` (= the answer's ``question_id``), written to ``<upload-dir>/<experiment>.xlsx`` with openpyxl.
Needs ``pandas`` and ``openpyxl`` (optional dependencies). The official score (CircularEval with choice
extraction) is computed by the MMBench/OpenCompass evaluation server from that file.
Fixes against upstream: ``--upload-dir`` is created here (upstream's MMBench-CN script mkdirs the English
folder and ``to_excel`` then fails on the missing directory); when the answers file has several rounds per
question (``--all-rounds``), the round-0 answer (original option order) is uploaded, not whichever line
came last.

Local score (only when the TSV has a filled ``answer`` column, e.g. the dev split): CircularEval. The
MMBench TSV stores the circular shifts of a question as separate rows whose ``index`` differ by multiples
of 1,000,000, so rows are grouped by ``index % 1e6``; a question counts as correct only if every row of its
group (every circular shift) is answered correctly; rows without an answer count as wrong. Answers written
with ``--all-rounds`` (``round_id``, ``options``, ``option_char``) are handled as further shifts: the
expected letter is mapped through ``option_char``. The choice is read from the model text by simple rules
(the text is a letter, possibly in brackets or followed by ``.``/``)``/``:``; starts with a letter and
``.``/``)``/``:`` then a space, e.g. "B. a cat"; contains "answer is X"; or equals one option's text) -- no LLM-based extraction as
on the server, so this is a local approximation, printed and recorded as such (``"official": false``).
The plain accuracy on the first-shift rows (index < 1e6) is printed too.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

ALL_OPTIONS = ["A", "B", "C", "D"]
DROP_COLUMNS = ["hint", "category", "source", "image", "comment", "l2-category"]
CIRCULAR_MOD = 1_000_000


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MMBench answers -> upload .xlsx, plus a local CircularEval")
    p.add_argument("--annotation-file", type=str, required=True)
    p.add_argument("--result-dir", type=str, required=True)
    p.add_argument("--upload-dir", type=str, required=True)
    p.add_argument("--experiment", type=str, required=True)
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file with the local CircularEval accuracy")
    p.add_argument("--benchmark", choices=["MMB", "MMB-CN"], default=None,
                   help="score-file benchmark name (default: MMB-CN when the TSV name has a 'cn' part)")
    p.add_argument("--skip-upload", action="store_true", help="only compute the local score, write no .xlsx")
    return p.parse_args(argv)


def _is_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def read_tsv(path: str) -> List[dict]:
    """The TSV as a list of dicts (pure csv module, so the local score needs no pandas)."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # base64 images are long fields
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_answers(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def extract_choice(text: str, options: Dict[str, str]) -> Optional[str]:
    """The option letter a free-form answer picks, or None (see the module docstring for the rules)."""
    t = text.strip()
    m = re.fullmatch(r"\(?([A-Z])\)?[.:)]?", t)
    if m and m.group(1) in options:
        return m.group(1)
    m = re.match(r"\(?([A-Z])[.:)]\s", t)
    if m and m.group(1) in options:
        return m.group(1)
    m = re.search(r"answer is:?\s*\(?([A-Z])\b", t, re.IGNORECASE)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    norm = t.rstrip(".。").strip().lower()
    hits = [k for k, v in options.items() if norm and str(v).rstrip(".。").strip().lower() == norm]
    return hits[0] if len(hits) == 1 else None


def _row_options(row: dict) -> Dict[str, str]:
    opts = {}
    for letter in ALL_OPTIONS:
        value = row.get(letter)
        if _is_none(value):
            break
        opts[letter] = value
    return opts


def _answer_correct(answer: dict, row: dict) -> bool:
    gt = str(row["answer"]).strip()
    if answer.get("options") and answer.get("option_char"):
        options = dict(zip(ALL_OPTIONS, answer["options"]))
        chars = list(answer["option_char"])
        if gt not in chars:
            return False
        expected = ALL_OPTIONS[chars.index(gt)]
    else:
        options = _row_options(row)
        expected = gt
    return extract_choice(str(answer.get("text", "")), options) == expected


def circular_eval(rows: List[dict], answers: List[dict]) -> dict:
    """Local CircularEval over the TSV rows that have an answer key (see the module docstring)."""
    by_index = defaultdict(list)
    for ans in answers:
        by_index[int(ans["question_id"])].append(ans)
    groups = defaultdict(list)
    for row in rows:
        if _is_none(row.get("answer")):
            continue
        groups[int(row["index"]) % CIRCULAR_MOD].append(row)
    if not groups:
        return {}

    group_ok, unanswered_rows = {}, 0
    plain_total = plain_correct = 0
    for key, members in groups.items():
        ok = True
        for row in members:
            idx = int(row["index"])
            row_answers = by_index.get(idx, [])
            if not row_answers:
                unanswered_rows += 1
                ok = False
                continue
            results = [_answer_correct(a, row) for a in row_answers]
            ok &= all(results)
            if idx < CIRCULAR_MOD:
                plain_total += 1
                first = next((r for a, r in zip(row_answers, results) if a.get("round_id", 0) == 0), results[0])
                plain_correct += first
        group_ok[key] = ok
    n = len(group_ok)
    correct = sum(group_ok.values())
    return {"circular_accuracy": 100.0 * correct / n, "questions": n, "correct": correct,
            "rows": sum(len(m) for m in groups.values()), "unanswered_rows": unanswered_rows,
            "plain_accuracy": 100.0 * plain_correct / plain_total if plain_total else None,
            "plain_questions": plain_total}


def _upload_predictions(answers: List[dict]) -> Dict[int, str]:
    preds: Dict[int, str] = {}
    for ans in answers:
        qid = int(ans["question_id"])
        if ans.get("round_id", 0) == 0 and qid not in preds:
            preds[qid] = ans["text"]
    for ans in answers:  # questions answered only in later rounds
        preds.setdefault(int(ans["question_id"]), ans["text"])
    return preds


def write_upload(annotation_file: str, answers: List[dict], upload_path: str) -> None:
    try:
        import pandas as pd
        import openpyxl  # noqa: F401  (engine for to_excel)
    except ImportError as exc:
        raise SystemExit("writing the MMBench upload .xlsx needs pandas and openpyxl: "
                         "pip install pandas openpyxl (or use --skip-upload)") from exc
    df = pd.read_table(annotation_file)
    cur_df = df.drop(columns=[c for c in DROP_COLUMNS if c in df.columns])
    cur_df.insert(min(6, len(cur_df.columns)), "prediction", None)
    cur_df["prediction"] = cur_df["prediction"].astype(object)
    preds = _upload_predictions(answers)
    cur_df["prediction"] = [preds.get(int(i)) for i in df["index"]]
    os.makedirs(os.path.dirname(os.path.abspath(upload_path)), exist_ok=True)
    cur_df.to_excel(upload_path, index=False, engine="openpyxl")


def _guess_benchmark(annotation_file: str) -> str:
    parts = re.split(r"[^a-z0-9]+", os.path.basename(annotation_file).lower())
    return "MMB-CN" if "cn" in parts else "MMB"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from llava.eval.summarize import write_score_file

    args = get_args(argv)
    result_file = os.path.join(args.result_dir, f"{args.experiment}.jsonl")
    answers = read_answers(result_file)
    out = {"upload_file": None, "local": None}

    local = circular_eval(read_tsv(args.annotation_file), answers)
    if local:
        plain = local["plain_accuracy"]
        print(f"CircularEval accuracy: {local['circular_accuracy']:.2f}% ({local['correct']}/{local['questions']} "
              f"questions, {local['rows']} rows, {local['unanswered_rows']} rows unanswered) -- local score "
              f"(rule-based choice extraction), not the official server number")
        if plain is not None:
            print(f"Plain accuracy on first-shift rows: {plain:.2f}% ({local['plain_questions']} rows) -- local")
        benchmark = args.benchmark or _guess_benchmark(args.annotation_file)
        write_score_file(args.score_file, benchmark, "circular_accuracy (local)", local["circular_accuracy"],
                         local["questions"], official=False, details=local, source=result_file)
        out["local"] = local
    else:
        print("no 'answer' column values in the TSV (test split): no local score; submit the .xlsx")

    if not args.skip_upload:
        upload_path = os.path.join(args.upload_dir, f"{args.experiment}.xlsx")
        write_upload(args.annotation_file, answers, upload_path)
        print(f"wrote {upload_path}")
        out["upload_file"] = upload_path
    return out


if __name__ == "__main__":
    main()
