"""Collect the scores of several runs into one table (Markdown and CSV), with the relative average.

Usage:
    python -m llava.eval.summarize \
        --runs llava-v1.5-7b=./scores/llava-v1.5-7b ours=./scores/ours \
        --baseline llava-v1.5-7b --out-md summary.md --out-csv summary.csv
    # straight from the eval scripts' layout, <EVAL_DIR>/<bench>/scores/<NAME>.score.json:
    python -m llava.eval.summarize --eval-dir ./playground/data/eval \
        --runs llava-v1.5-7b pruned=llava-v1.5-7b_pruned-divprune-r0.9 --out-md summary.md

Every scorer and converter of the evaluation pipeline accepts ``--score-file PATH`` and then writes one
small JSON file (the *score file*)::

    {"benchmark": "POPE",     # one of BENCHMARKS below
     "metric": "f1",          # name of the headline metric
     "score": 85.9,           # float: percent, except MME (Perception total, 0..2000)
     "n": 8910,               # int: number of scored items (MMBench: questions under CircularEval)
     "official": true,        # false: a local stand-in for a server-side/official number
     "details": {...},        # optional, benchmark specific (per split / subtask / type numbers)
     "source": "...",         # optional: the result file that was scored
     "created": "..."}        # optional: ISO time

``--runs NAME=PATH``: PATH is a score file, or a directory searched recursively for ``*.score.json``. When a
run has two score files for one benchmark the newer one (mtime) wins, with a warning.

``--eval-dir DIR --runs NAME [LABEL=NAME ...]``: the layout the scripts in ``scripts/v1_5/eval`` write. A run
is every ``DIR/*/scores/NAME.score.json`` (one per benchmark folder), NAME being the run's name in those
scripts: the checkpoint name (CKPT), plus ``_pruned-<method>-r<ratio>[-noiso]`` for a pruned run. The row is
labelled NAME, or LABEL when given. With ``--eval-dir`` every ``--runs`` value is such a NAME (not a PATH); a
NAME without any score file is an error.

One row per run, one column per benchmark, plus "Avg. rel. (%)": the mean over benchmarks of
score / baseline score * 100, taken over the benchmarks that both the run and the baseline have (MME enters
with its Perception total, as papers report MME). A missing benchmark shows as "–" in
Markdown (an empty cell in CSV) and is left out of that run's average. Scores whose file says
``"official": false`` carry a dagger in Markdown.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

BENCHMARKS: Tuple[str, ...] = ("VQAv2", "GQA", "SQA-IMG", "TextVQA", "POPE", "MME", "MMB", "MMB-CN", "SEED")
AVG_COLUMN = "Avg. rel. (%)"
MISSING = "–"
SCORE_SUFFIX = ".score.json"

__all__ = ["BENCHMARKS", "write_score_file", "load_run", "eval_dir_score_files", "load_eval_dir_run",
           "summarize", "main"]


def write_score_file(path: Optional[str], benchmark: str, metric: str, score: float, n: int, official: bool,
                     details: Optional[dict] = None, source: Optional[str] = None) -> Optional[dict]:
    """Write the score file (schema in the module docstring); no-op when ``path`` is None."""
    if path is None:
        return None
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    record = {"benchmark": benchmark, "metric": metric, "score": float(score), "n": int(n),
              "official": bool(official)}
    if details is not None:
        record["details"] = details
    if source is not None:
        record["source"] = os.path.abspath(source)
    record["created"] = datetime.datetime.now().isoformat(timespec="seconds")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return record


def _score_files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such score file or directory: {path}")
    found = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(SCORE_SUFFIX):
                found.append(os.path.join(root, name))
    return sorted(found)


def eval_dir_score_files(eval_dir: str, name: str) -> List[str]:
    """The score files of run NAME in the eval scripts' layout: ``eval_dir/*/scores/NAME.score.json``."""
    pattern = os.path.join(glob.escape(eval_dir), "*", "scores", glob.escape(name) + SCORE_SUFFIX)
    return sorted(f for f in glob.glob(pattern) if os.path.isfile(f))


def load_eval_dir_run(eval_dir: str, name: str) -> Dict[str, dict]:
    """benchmark -> score record of run NAME under ``eval_dir`` (see :func:`eval_dir_score_files`)."""
    if not os.path.isdir(eval_dir):
        raise FileNotFoundError(f"no such eval directory: {eval_dir}")
    files = eval_dir_score_files(eval_dir, name)
    if not files:
        raise FileNotFoundError(f"run {name!r}: no score file "
                                f"{os.path.join(eval_dir, '*', 'scores', name + SCORE_SUFFIX)}")
    return _load_score_files(files)


def load_run(path: str) -> Dict[str, dict]:
    """benchmark -> score record, from a score file or a directory tree of them."""
    return _load_score_files(_score_files(path))


def _load_score_files(files: Sequence[str]) -> Dict[str, dict]:
    chosen: Dict[str, Tuple[float, str, dict]] = {}
    for file in files:
        with open(file) as f:
            data = json.load(f)
        records = data if isinstance(data, list) else [data]
        mtime = os.path.getmtime(file)
        for rec in records:
            bench = rec.get("benchmark")
            if bench not in BENCHMARKS:
                print(f"[summarize] {file}: unknown benchmark {bench!r}, ignored", file=sys.stderr)
                continue
            if bench in chosen:
                other = chosen[bench][1]
                keep_new = mtime >= chosen[bench][0]
                print(f"[summarize] {bench}: two score files ({other}, {file}); using the newer "
                      f"{file if keep_new else other}", file=sys.stderr)
                if not keep_new:
                    continue
            chosen[bench] = (mtime, file, rec)
    return {b: rec for b, (_m, _f, rec) in chosen.items()}


def relative_average(run: Dict[str, dict], baseline: Dict[str, dict]) -> Tuple[Optional[float], List[str]]:
    """(mean of score / baseline score * 100 over the shared benchmarks, the benchmarks used)."""
    ratios, used = [], []
    for bench in BENCHMARKS:
        if bench in run and bench in baseline and float(baseline[bench]["score"]) != 0.0:
            ratios.append(float(run[bench]["score"]) / float(baseline[bench]["score"]) * 100.0)
            used.append(bench)
    if not ratios:
        return None, used
    return sum(ratios) / len(ratios), used


def summarize(runs: Sequence[Tuple[str, Dict[str, dict]]], baseline_name: str) -> List[dict]:
    """One dict per run: {"run", <benchmark>: score or None, AVG_COLUMN: float or None, ...}."""
    by_name = dict(runs)
    if baseline_name not in by_name:
        raise ValueError(f"baseline {baseline_name!r} is not among the runs {list(by_name)}")
    baseline = by_name[baseline_name]
    rows = []
    for name, run in runs:
        row = {"run": name}
        for bench in BENCHMARKS:
            row[bench] = float(run[bench]["score"]) if bench in run else None
            row[bench + ":official"] = bool(run[bench].get("official", True)) if bench in run else None
        row[AVG_COLUMN], row["avg_over"] = relative_average(run, baseline)
        rows.append(row)
    return rows


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def to_markdown(rows: List[dict], baseline_name: str) -> str:
    header = ["Run"] + list(BENCHMARKS) + [AVG_COLUMN]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    any_local = any_missing = False
    for row in rows:
        cells = [row["run"] + (" (baseline)" if row["run"] == baseline_name else "")]
        for bench in BENCHMARKS:
            cell = _fmt(row[bench])
            if row[bench] is None:
                any_missing = True
            elif row[bench + ":official"] is False:
                cell += "†"
                any_local = True
            cells.append(cell)
        cells.append(_fmt(row[AVG_COLUMN]))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{AVG_COLUMN}: mean over benchmarks of score / score of `{baseline_name}` × 100, over the "
             "benchmarks both runs have; MME enters with its Perception total."]
    if any_missing:
        notes.append(f"{MISSING}: no score for that benchmark; it is left out of the run's average.")
    if any_local:
        notes.append("†: local score, not the official protocol (e.g. VQAv2 on a val split, MMBench "
                     "CircularEval computed offline); see the score file's details.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_csv(rows: List[dict], path: str) -> None:
    header = ["run"] + list(BENCHMARKS) + [AVG_COLUMN]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            values = [row["run"]]
            for key in list(BENCHMARKS) + [AVG_COLUMN]:
                values.append("" if row[key] is None else f"{row[key]:.4f}")
            writer.writerow(values)


def _parse_run(spec: str) -> Tuple[str, Optional[str]]:
    """``LABEL=VALUE`` -> (LABEL, VALUE); a bare ``NAME`` -> (NAME, None) (only valid with --eval-dir)."""
    if "=" not in spec:
        if not spec:
            raise argparse.ArgumentTypeError("--runs got an empty run")
        return spec, None
    name, value = spec.split("=", 1)
    if not name or not value:
        raise argparse.ArgumentTypeError(f"--runs expects NAME=PATH (or, with --eval-dir, NAME or "
                                         f"LABEL=NAME), got {spec!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Summarise the benchmark scores of several runs.")
    p.add_argument("--runs", nargs="+", type=_parse_run, required=True, metavar="RUN",
                   help="NAME=PATH: run name and a score file or a directory holding *.score.json files; "
                        "with --eval-dir: NAME or LABEL=NAME, the run being EVAL_DIR/*/scores/NAME.score.json")
    p.add_argument("--eval-dir", default=None, metavar="DIR",
                   help="the eval scripts' EVAL_DIR (e.g. ./playground/data/eval): --runs then names runs in it")
    p.add_argument("--baseline", default=None, help="run the relative average refers to (default: the first)")
    p.add_argument("--out-md", default=None, help="write the Markdown table here")
    p.add_argument("--out-csv", default=None, help="write the CSV table here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_dir is None:
        bare = [name for name, value in args.runs if value is None]
        if bare:
            parser.error(f"--runs {' '.join(bare)}: a bare run NAME needs --eval-dir; without it use NAME=PATH")
    names = [n for n, _ in args.runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"duplicate run names in --runs: {names}")
    baseline = args.baseline or names[0]
    if args.eval_dir is None:
        runs = [(name, load_run(path)) for name, path in args.runs]
    else:
        runs = [(label, load_eval_dir_run(args.eval_dir, label if value is None else value))
                for label, value in args.runs]
    rows = summarize(runs, baseline)
    md = to_markdown(rows, baseline)
    print(md, end="")
    if args.out_md:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, "w") as f:
            f.write(md)
    if args.out_csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_csv)), exist_ok=True)
        write_csv(rows, args.out_csv)
    return rows


if __name__ == "__main__":
    main()
