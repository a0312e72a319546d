"""Reproduce the DualSpeed paper's tables end to end, offline, on a tiny model and the toy task.

For every experiment cell (a training recipe x a seed) this runs what a user runs:

    bash scripts/v1_5/pretrain.sh      (projector pretraining; DUALSPEED=1 + DualSpeed flags when pruned)
    bash scripts/v1_5/finetune_lora.sh (LoRA SFT, from that stage's mm_projector.bin)
    python -m llava.eval.model_vqa_loader ...                       normal inference
    python -m dualspeed_patch.run --pruned [--no_isolator] llava.eval.model_vqa_loader ...   pruned inference

as subprocesses, times every stage (wall clock, and the Trainer's own `train_runtime` from
trainer_state.json), scores the answers by exact match per question type (dualspeed_lab/toy/task.py) and writes
one JSON per cell; then the tables (Markdown + CSV + PNG), mean +- std over seeds, and summary.md.

    python -m dualspeed_lab.reproduce --preset quick                 # Table 2 + speed, 1 seed
    python -m dualspeed_lab.reproduce --preset full --seeds 0 1 2    # Tables 1-4, Figures 5-6
    python -m dualspeed_lab.reproduce --preset quick --dry-run       # the plan and the commands only
    python -m dualspeed_lab.reproduce --preset quick --report-only   # tables from the cell JSONs there

Reuse: the task and the models are built once under --cache-dir; a pretraining run is shared by every cell
with the same pretraining recipe and seed (e.g. DualSpeed variants that differ only in SFT, or the baseline
pretraining that Table 4's "SFT only" row starts from); a cell whose result JSON exists (with the same
configuration) is skipped, so reruns are instant and an interrupted run resumes.

Models (--models): `toy` builds a pretrained tiny CLIP and a text-warmed tiny LLM with
dualspeed_lab/toy/models.py (`build_toy_models`); `tiny` uses scripts/build_tiny_assets.py's untrained models
(plumbing only: expect chance accuracy); `auto` (default) takes toy when dualspeed_lab/toy/models.py exists.
--base-llm / --vision-tower name folders directly. Presets: dualspeed_lab/reproduce/presets.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import List, Optional, Sequence

from dualspeed_lab.reproduce import presets as presets_mod
from dualspeed_lab.reproduce.assets import (model_paths_for, prepare_models, prepare_task, resolve_model_source,
                                            select_questions, task_root_for)
from dualspeed_lab.reproduce.common import QUESTION_TYPES, REPO, read_json, write_json
from dualspeed_lab.reproduce.plan import Cell, plan_cells
from dualspeed_lab.reproduce.presets import ALL_TABLES, Preset
from dualspeed_lab.reproduce.report import Report
from dualspeed_lab.reproduce.runner import Runner, StageFailed
from dualspeed_lab.reproduce.stats import Results, load_cells
from dualspeed_lab.reproduce.summary import write_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Presets:\n" + "\n".join(f"  {n:6s} {pr.description}; tables {', '.join(pr.tables)}; seeds "
                                        f"{list(pr.seeds)}; {pr.expected}" for n, pr in presets_mod.PRESETS.items()))
    p.add_argument("--preset", default="quick", help="quick | full | smoke (default quick); flags below override it")
    p.add_argument("--out", default=None, help="results folder (default results/<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    p.add_argument("--tables", nargs="+", default=None, choices=ALL_TABLES, help="tables/figures to produce")
    g = p.add_argument_group("models and data")
    g.add_argument("--models", choices=("auto", "toy", "tiny"), default=None,
                   help="model source: toy (dualspeed_lab/toy/models.py), tiny (untrained tiny assets), auto")
    g.add_argument("--base-llm", default=None, help="base LLM folder (overrides the model source's)")
    g.add_argument("--vision-tower", default=None, help="CLIP vision tower folder (overrides the model source's)")
    g.add_argument("--task-root", default=None, help="an already built toy task (default: build under --cache-dir)")
    g.add_argument("--cache-dir", default=os.path.join(REPO, "results", ".cache"),
                   help="where the task and the toy models are built once (default results/.cache)")
    g.add_argument("--types", nargs="+", default=None, choices=QUESTION_TYPES,
                   help="question types of the toy task (default: the preset's, color shape)")
    g.add_argument("--eval-per-type", type=int, default=None, help="test questions per question type")
    g.add_argument("--eval-limit", type=int, default=None, help="at most this many test questions")
    g = p.add_argument_group("training (appended to the scripts' flags)")
    g.add_argument("--pretrain-steps", type=int, default=None)
    g.add_argument("--sft-steps", type=int, default=None)
    g.add_argument("--pretrain-batch", type=int, default=None)
    g.add_argument("--sft-batch", type=int, default=None)
    g.add_argument("--pretrain-lr", type=float, default=None)
    g.add_argument("--sft-lr", type=float, default=None)
    g.add_argument("--mm-projector-lr", type=float, default=None, help="SFT learning rate of the projector")
    g.add_argument("--lora-r", type=int, default=None)
    g.add_argument("--lora-alpha", type=int, default=None)
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (OMP_NUM_THREADS; preset default 1; 0 = leave the environment)")
    g.add_argument("--launcher", default="python", help='LAUNCHER of the scripts (default python; e.g. '
                                                         '"deepspeed --num_gpus 2")')
    g.add_argument("--deepspeed-config", default="", help="DEEPSPEED_CONFIG of the scripts (default empty: no DeepSpeed)")
    g = p.add_argument_group("DualSpeed and evaluation")
    g.add_argument("--vtp-method", default=None)
    g.add_argument("--pruning-ratio", type=float, default=None)
    g.add_argument("--slow-mode-ratio", type=float, default=None)
    g.add_argument("--isolator-len", type=int, default=None)
    g.add_argument("--vtp-methods", nargs="+", default=None, help="Table 1's pruners")
    g.add_argument("--p-values", type=float, nargs="+", default=None, help="Figure 5's pruning ratios")
    g.add_argument("--r-values", type=float, nargs="+", default=None, help="Figure 5's slow-mode ratios")
    g.add_argument("--isolator-lens", type=int, nargs="+", default=None, help="Figure 6's isolator lengths")
    g.add_argument("--eval-vtp-method", default=None, help="pruner of pruned inference (default divprune)")
    g.add_argument("--eval-pruning-ratio", type=float, default=None)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--eval-device", default="cpu")
    g = p.add_argument_group("running")
    g.add_argument("--dry-run", action="store_true", help="print the plan (cells, commands, estimate); run nothing")
    g.add_argument("--report-only", action="store_true", help="write the tables from the cell JSONs in --out")
    g.add_argument("--keep-going", action="store_true", help="on a failed cell, go on with the others")
    g.add_argument("--only", nargs="+", default=None, metavar="CELL",
                   help="run only these cells (e.g. baseline dualspeed); tables show what exists")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the cells' and the one-time task and model builds')")
    return p


def resolve_preset(args) -> Preset:
    P = presets_mod.get(args.preset)
    tup = lambda x: tuple(x) if x is not None else None  # noqa: E731
    return P.replace(
        tables=tup(args.tables), seeds=tup(args.seeds), question_types=tup(args.types), eval_per_type=args.eval_per_type, eval_limit=args.eval_limit,
        pretrain_steps=args.pretrain_steps, sft_steps=args.sft_steps, pretrain_batch=args.pretrain_batch,
        sft_batch=args.sft_batch, pretrain_lr=args.pretrain_lr, sft_lr=args.sft_lr,
        mm_projector_lr=args.mm_projector_lr, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, vtp_method=args.vtp_method, pruning_ratio=args.pruning_ratio,
        slow_mode_ratio=args.slow_mode_ratio, isolator_len=args.isolator_len, vtp_methods=tup(args.vtp_methods),
        p_values=tup(args.p_values), r_values=tup(args.r_values), isolator_lens=tup(args.isolator_lens),
        eval_vtp_method=args.eval_vtp_method, eval_pruning_ratio=args.eval_pruning_ratio,
        max_new_tokens=args.max_new_tokens).replace(threads=None if args.threads is None else (args.threads or 0))


def estimate_seconds(P: Preset, runner: Runner, cells: "OrderedDict[str, Cell]", n_questions: int) -> dict:
    c = presets_mod.COST
    pre_keys = {runner.pretrain_key(cell, s) for cell in cells.values() for s in P.seeds}
    n_sft = len(cells) * len(P.seeds)
    n_eval = sum(len(cell.evals) for cell in cells.values()) * len(P.seeds)

    def stage(steps, batch):
        return c["train_startup_s"] + (steps or 100) * batch * c["train_sample_s"]

    pre = len(pre_keys) * stage(P.pretrain_steps, P.pretrain_batch)
    sft = n_sft * stage(P.sft_steps, P.sft_batch)
    ev = n_eval * (c["eval_startup_s"] + n_questions * c["eval_question_s"])
    return {"pretrain_runs": len(pre_keys), "sft_runs": n_sft, "eval_runs": n_eval,
            "seconds": round(pre + sft + ev)}


def print_plan(P: Preset, args, out: str, cache_dir: str, source: str, cells: "OrderedDict[str, Cell]",
               to_run: List[Cell]) -> int:
    """--dry-run: the cells, every command they would run and a rough time estimate; nothing is built or run."""
    task_root = os.path.abspath(args.task_root) if args.task_root else os.path.abspath(task_root_for(P, cache_dir))
    mp = model_paths_for(source, P, cache_dir, task_root) if source != "custom" else {"root": "?"}
    models = {"source": source, "model": args.base_llm or mp.get("model", os.path.join(mp["root"], "<llm>")),
              "vision_tower": args.vision_tower or mp.get("vision_tower", os.path.join(mp["root"], "<clip>"))}
    qfile = os.path.join(out, "data", "test_questions.jsonl")
    n_q = (P.eval_per_type or 70) * len(P.question_types)
    if P.eval_limit:
        n_q = min(n_q, P.eval_limit)
    runner = Runner(P, args, out, task_root, models, qfile, [], dry_run=True)
    print(f"preset {P.name}: tables {', '.join(P.tables)}; seeds {list(P.seeds)}; out {out}")
    print(f"models: {source}: {models['model']} + {models['vision_tower']}")
    print(f"task: {task_root} (sizes {P.task_sizes}); ~{n_q} test questions")
    for cell in to_run:
        name = cell.name
        aka = f" (also: {', '.join(cell.aliases)})" if cell.aliases else ""
        print(f"\n== cell {name}: {cell.label}{aka}")
        print(f"   evals: {', '.join(e.name for e in cell.evals)}")
        for s in P.seeds:
            pdir = os.path.join(runner.pretrain_dir(cell, s), "llava-pretrain")
            env, cmd = runner.stage_command("pretrain", cell, s, pdir)
            print(f"   [s{s} pretrain -> {os.path.relpath(pdir, out)}]\n     {runner.show(env, cmd)}")
            sdir = os.path.join(runner.sft_dir(cell, s), "llava-lora")
            env, cmd = runner.stage_command("sft", cell, s, sdir, pdir)
            print(f"   [s{s} sft]\n     {runner.show(env, cmd)}")
            for e in cell.evals:
                print(f"   [s{s} eval {e.name}]\n     "
                      + runner.show(runner.thread_env(), runner.eval_command(e, sdir, f"<answers>/{e.name}.jsonl", s)))
    est = estimate_seconds(P, runner, cells, n_q)
    print(f"\n{len(cells)} cells x {len(P.seeds)} seeds: {est['pretrain_runs']} pretraining runs (shared), "
          f"{est['sft_runs']} SFT runs, {est['eval_runs']} evaluations; rough estimate "
          f"{est['seconds'] / 60:.0f} min on 2 shared CPU cores with the toy models (presets.COST), plus a "
          "one-time build of the task and the models")
    return 0


def run_cells(P: Preset, args, runner: Runner, to_run: List[Cell]) -> Optional[List[str]]:
    """Train and evaluate every (cell, seed) under a progress bar; the failed ones ("<cell> s<seed>"), or None
    when one failed without --keep-going (the run stops there)."""
    work = [(cell, s) for s in P.seeds for cell in to_run]
    failures: List[str] = []
    from tqdm import tqdm

    bar = tqdm(work, desc=f"reproduce[{P.name}]", unit="cell", disable=args.no_progress, dynamic_ncols=True)
    runner.status = lambda text: bar.set_postfix_str(text, refresh=True)
    for cell, s in bar:
        runner.status(f"{cell.name} s{s}")
        try:
            res = runner.run_cell(cell, s)
        except StageFailed as exc:
            failures.append(f"{cell.name} s{s}")
            bar.write(f"[reproduce] cell {cell.name} seed {s} FAILED:\n{exc}")
            if not args.keep_going:
                bar.close()
                return None
            continue
        acc = res["evals"]["normal"]["accuracy"]
        bar.write(f"[reproduce] {cell.name} s{s}: normal {100 * acc:.1f}%"
                  + "".join(f", {n} {100 * e['accuracy']:.1f}%" for n, e in res["evals"].items() if n != "normal")
                  + f"; train {res['stages']['pretrain'].get('train_runtime_s') or 0:.1f}"
                    f"+{res['stages']['sft'].get('train_runtime_s') or 0:.1f} s"
                  + (" (cached)" if res.get("cached") else ""))
    bar.close()
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    P = resolve_preset(args)
    out = os.path.abspath(args.out or os.path.join(REPO, "results", P.name))
    cache_dir = os.path.abspath(args.cache_dir)
    cells, alias = plan_cells(P)
    t_start = time.perf_counter()
    to_run = list(cells.values())
    if args.only:
        unknown = [v for v in args.only if v not in alias]
        if unknown:
            raise SystemExit(f"--only: {unknown} not in this plan; cells: {list(cells)}")
        wanted = {alias[v] for v in args.only}
        to_run = [c for c in to_run if c.name in wanted]

    source = resolve_model_source(P, args)
    if args.base_llm and args.vision_tower:
        source = "custom"
    if args.dry_run:
        return print_plan(P, args, out, cache_dir, source, cells, to_run)

    os.makedirs(out, exist_ok=True)
    task_root = prepare_task(P, cache_dir, args.task_root, progress=not args.no_progress)
    questions = select_questions(P, task_root)
    qfile = os.path.join(out, "data", "test_questions.jsonl")
    os.makedirs(os.path.dirname(qfile), exist_ok=True)
    text = "".join(json.dumps(q) + "\n" for q in questions)
    if not os.path.isfile(qfile) or open(qfile).read() != text:
        with open(qfile, "w") as f:
            f.write(text)

    if args.report_only:
        prev = read_json(os.path.join(out, "run.json")) or {}
        if "models" not in prev:
            raise SystemExit(f"--report-only: no run.json in {out} (run the preset there first)")
        models = prev["models"]
        runner = Runner(P, args, out, task_root, models, qfile, questions)
        failures: List[str] = []
    else:
        models = prepare_models(source, P, cache_dir, task_root, args)
        if source == "tiny":
            print("[reproduce] WARNING: tiny untrained models (scripts/build_tiny_assets.py): accuracies will be at "
                  "chance; use --models toy once dualspeed_lab/toy/models.py exists", file=sys.stderr)
        runner = Runner(P, args, out, task_root, models, qfile, questions)
        write_json(os.path.join(out, "run.json"), {
            "preset": asdict(P), "argv": sys.argv if argv is None else list(argv), "models": models,
            "task_root": task_root, "cells": {n: {"label": c.label, "aliases": c.aliases,
                                                  "evals": [e.name for e in c.evals]} for n, c in cells.items()},
            "started": datetime.datetime.now().isoformat(timespec="seconds")})
        ran = run_cells(P, args, runner, to_run)
        if ran is None:
            return 1
        failures = ran

    # only the cells of this plan with this configuration (the folder may hold runs of other settings)
    current = [r for r in load_cells(out) if r["seed"] in P.seeds and r["cell"] in cells
               and r["config"].get("key") == runner.sft_key(cells[r["cell"]], r["seed"])]
    R = Results(current, P.seeds)
    report = Report(P, R, cells, alias, questions, out)
    mds = report.write_all()
    wall = time.perf_counter() - t_start
    run_json = os.path.join(out, "run.json")
    prev = read_json(run_json) or {}
    if args.report_only:
        wall = prev.get("wall_s")
    else:
        write_json(run_json, dict(prev, wall_s=round(wall, 1),
                                  finished=datetime.datetime.now().isoformat(timespec="seconds")))
    meta = {"models_source": models.get("source"), "model": models.get("model"),
            "vision_tower": models.get("vision_tower"), "task_root": task_root, "seeds": list(P.seeds),
            "wall_s": wall}
    summary = write_summary(out, P, R, report, mds, meta)
    write_json(os.path.join(out, "results.json"), {
        "preset": asdict(P), "meta": meta, "failures": failures,
        "cells": current})
    print(f"[reproduce] {len(report.files)} table files, summary: {summary} "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
