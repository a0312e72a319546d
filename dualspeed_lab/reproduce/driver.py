#!/usr/bin/env python
"""Reproduce the DualSpeed paper's tables end to end, offline, on a tiny model and the toy task.

For every experiment cell (a training recipe x a seed) this runs what a user runs:

    bash scripts/v1_5/pretrain.sh      (projector pretraining; DUALSPEED=1 + DualSpeed flags when pruned)
    bash scripts/v1_5/finetune_lora.sh (LoRA SFT, from that stage's mm_projector.bin)
    python -m llava.eval.model_vqa_loader ...                       normal inference
    python -m dualspeed_patch.run --pruned [--no_isolator] llava.eval.model_vqa_loader ...   pruned inference

as subprocesses, times every stage (wall clock, and the Trainer's own `train_runtime` from
trainer_state.json), scores the answers by exact match per question type (dualspeed_lab/toy/task.py) and writes
one JSON per cell; then the tables (Markdown + CSV + PNG), mean +- std over seeds, and summary.md.

    python -m dualspeed_lab.reproduce --preset quick                 # Table 2 + speed, ~9.5 min on 2 cores
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
import csv
import datetime
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_lab.reproduce import presets as presets_mod
from dualspeed_lab.reproduce.presets import ALL_TABLES, Preset

SCHEMA = "dualspeed-reproduce/cell-v1"
CONV_MODE = "vicuna_v1"
QUESTION_TYPES = ("color", "shape", "count", "position", "glyph", "exists", "size")


# =============================================================================================== recipes
@dataclass(frozen=True)
class Stage:
    """One training stage: plain LLaVA, or DualSpeed with these flags (name, value), in command order."""
    dualspeed: bool
    flags: Tuple[Tuple[str, object], ...] = ()

    def get(self, name, default=None):
        return dict(self.flags).get(name, default)

    def semantics(self, kind: str) -> tuple:
        """What the stage does (for sharing and caching): flags that cannot change the run are dropped."""
        if not self.dualspeed:
            return ("plain",)
        iso = bool(self.get("use_isolator", True)) and int(self.get("isolator_len", 4)) > 0
        length = int(self.get("isolator_len", 4)) if iso else 0
        base = (str(self.get("vtp_method")), float(self.get("pruning_ratio")), length)
        if kind == "pretrain":  # --pretrain_mode fast: every step pruned, r and distillation unused
            return ("dualspeed",) + base + (str(self.get("pretrain_mode", "fast")),)
        r = float(self.get("slow_mode_ratio"))
        distill = bool(self.get("use_distillation", True)) if r > 0 else True
        return ("dualspeed",) + base + (r, distill)

    def has_isolator(self) -> bool:
        return self.dualspeed and bool(self.get("use_isolator", True)) and int(self.get("isolator_len", 4)) > 0

    def cli(self) -> List[str]:
        out = []
        for k, v in self.flags:
            out += [f"--{k}", str(v)]
        return out


PLAIN = Stage(False)


@dataclass(frozen=True)
class EvalSpec:
    pruned: bool = False
    method: Optional[str] = None
    ratio: Optional[float] = None
    isolator: bool = False

    @property
    def name(self) -> str:
        if not self.pruned:
            return "normal"
        return f"pruned-{self.method}-p{self.ratio:g}-{'iso' if self.isolator else 'noiso'}"

    @property
    def label(self) -> str:
        if not self.pruned:
            return "normal"
        return f"pruned {self.method} p={self.ratio:g} " + ("+ isolator" if self.isolator else "no isolator")


NORMAL = EvalSpec()


@dataclass
class Cell:
    """A training recipe (pretrain stage + SFT stage) with the evaluations the tables ask of it."""
    name: str
    label: str
    pretrain: Stage
    sft: Stage
    evals: List[EvalSpec] = field(default_factory=list)
    aliases: List[str] = field(default_factory=list)

    @property
    def has_isolator(self) -> bool:
        return self.sft.has_isolator()

    def key(self) -> tuple:
        return (self.pretrain.semantics("pretrain"), self.sft.semantics("sft"))

    def add_eval(self, spec: EvalSpec) -> None:
        if spec not in self.evals:
            self.evals.append(spec)


def _ds(P: Preset, kind: str, method=None, p=None, r=None, length=None, iso=True, distill=True) -> Stage:
    flags = [("vtp_method", method or P.vtp_method),
             ("pruning_ratio", P.pruning_ratio if p is None else p)]
    if kind == "sft":
        flags.append(("slow_mode_ratio", P.slow_mode_ratio if r is None else r))
    flags += [("isolator_len", P.isolator_len if length is None else length), ("use_isolator", bool(iso))]
    if kind == "sft":
        flags.append(("use_distillation", bool(distill)))
    else:
        flags.append(("pretrain_mode", "fast"))
    return Stage(True, tuple(flags))


def _fmt_num(x) -> str:
    return f"{x:g}"


def variant_catalog(P: Preset) -> "OrderedDict[str, Tuple[str, Stage, Stage]]":
    """name -> (label, pretrain stage, SFT stage), for every recipe any table can ask for."""
    cat: "OrderedDict[str, Tuple[str, Stage, Stage]]" = OrderedDict()
    cat["baseline"] = ("Baseline", PLAIN, PLAIN)
    cat["naiveprune"] = ("NaivePrune", _ds(P, "pretrain", iso=False), _ds(P, "sft", r=0.0, iso=False))
    cat["dualspeed"] = ("DualSpeed", _ds(P, "pretrain"), _ds(P, "sft"))
    # Table 3 (ablation): NaivePrune -> + fast-slow -> + isolator -> + distillation (= DualSpeed)
    cat["fastslow"] = ("+ fast-slow", _ds(P, "pretrain", iso=False), _ds(P, "sft", iso=False, distill=False))
    cat["fastslow-iso"] = ("+ isolator", _ds(P, "pretrain"), _ds(P, "sft", distill=False))
    # Table 4: where pruning is used
    cat["prune-pretrain-only"] = ("Pruning in pretrain only", _ds(P, "pretrain"), PLAIN)
    cat["prune-sft-only"] = ("Pruning in SFT only", PLAIN, _ds(P, "sft"))
    # Table 1: the pruner used in training
    for m in P.vtp_methods:
        if m != P.vtp_method:
            cat[f"vtp-{m}"] = (f"DualSpeed ({m})", _ds(P, "pretrain", method=m), _ds(P, "sft", method=m))
    # Figure 5: pruning ratio p and slow-mode ratio r
    for p in P.p_values:
        if p != P.pruning_ratio:
            cat[f"p{_fmt_num(p)}"] = (f"DualSpeed p={p:g}", _ds(P, "pretrain", p=p), _ds(P, "sft", p=p))
    for r in P.r_values:
        if r != P.slow_mode_ratio:
            cat[f"r{_fmt_num(r)}"] = (f"DualSpeed r={r:g}", _ds(P, "pretrain"), _ds(P, "sft", r=r))
    # Figure 6: isolator length
    for n in P.isolator_lens:
        if n != P.isolator_len:
            cat[f"l{n}"] = (f"DualSpeed l={n}", _ds(P, "pretrain", length=n), _ds(P, "sft", length=n))
    return cat


def variant_name(P: Preset, kind: str, value) -> str:
    """The catalog name of a sweep point (the default value is DualSpeed itself)."""
    default = {"vtp": P.vtp_method, "p": P.pruning_ratio, "r": P.slow_mode_ratio, "l": P.isolator_len}[kind]
    if value == default:
        return "dualspeed"
    return f"vtp-{value}" if kind == "vtp" else f"{kind}{_fmt_num(value)}"


def table_variants(P: Preset, table: str) -> List[str]:
    if table in ("table2", "speed"):
        return ["baseline", "naiveprune", "dualspeed"]
    if table == "table1":
        return ["baseline"] + [variant_name(P, "vtp", m) for m in P.vtp_methods]
    if table == "table3":
        return ["baseline", "naiveprune", "fastslow", "fastslow-iso", "dualspeed"]
    if table == "table4":
        return ["baseline", "prune-pretrain-only", "prune-sft-only", "dualspeed"]
    if table == "fig5":
        return (["baseline"] + [variant_name(P, "p", p) for p in P.p_values]
                + [variant_name(P, "r", r) for r in P.r_values])
    if table == "fig6":
        return ["baseline"] + [variant_name(P, "l", n) for n in P.isolator_lens]
    raise ValueError(f"unknown table {table!r}; known: {ALL_TABLES}")


def pruned_eval(P: Preset, cell_has_iso: bool, method=None, ratio=None, iso=None) -> EvalSpec:
    iso = cell_has_iso if iso is None else iso
    return EvalSpec(True, method or P.eval_vtp_method, P.eval_pruning_ratio if ratio is None else ratio, iso)


def plan_cells(P: Preset) -> Tuple["OrderedDict[str, Cell]", Dict[str, str]]:
    """The cells the preset's tables need (recipes with identical training merged) and alias -> cell."""
    cat = variant_catalog(P)
    wanted: List[str] = []
    for t in P.tables:
        for v in table_variants(P, t):
            if v not in wanted:
                wanted.append(v)
    cells: "OrderedDict[str, Cell]" = OrderedDict()
    by_key: Dict[tuple, str] = {}
    alias: Dict[str, str] = {}
    for v in wanted:
        label, pre, sft = cat[v]
        cell = Cell(v, label, pre, sft)
        k = cell.key()
        if k in by_key:  # the same training under another name: one cell
            alias[v] = by_key[k]
            cells[by_key[k]].aliases.append(v)
            continue
        by_key[k] = v
        alias[v] = v
        cells[v] = cell
    # Evaluations: every cell gets normal + pruned (with the isolator when it has one, and without)
    for cell in cells.values():
        cell.add_eval(NORMAL)
        if cell.has_isolator:
            cell.add_eval(pruned_eval(P, True))
        cell.add_eval(pruned_eval(P, False, iso=False))
    if "table1" in P.tables:
        for m in P.vtp_methods:
            cells[alias["baseline"]].add_eval(pruned_eval(P, False, method=m, iso=False))
            c = cells[alias[variant_name(P, "vtp", m)]]
            c.add_eval(pruned_eval(P, c.has_isolator, method=m))
    if "fig5" in P.tables:
        for p in P.p_values:
            c = cells[alias[variant_name(P, "p", p)]]
            c.add_eval(pruned_eval(P, c.has_isolator, ratio=p))
    return cells, alias


def as_trained_eval(P: Preset, cell: Cell, method=None, ratio=None) -> EvalSpec:
    """The pruned inference a cell was trained for (with its isolator when it has one)."""
    return pruned_eval(P, cell.has_isolator, method=method, ratio=ratio)


# ================================================================================ task, models, questions
def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def task_root_for(P: Preset, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"task-s{P.task_seed}-{_hash([P.task_sizes, list(P.question_types)])}")


def prepare_task(P: Preset, cache_dir: str, task_root: Optional[str] = None, log=print, progress: bool = True) -> str:
    if task_root:
        if not os.path.isfile(os.path.join(task_root, "meta.json")):
            raise SystemExit(f"--task-root {task_root}: no meta.json (build it with dualspeed_lab/toy/task.py)")
        return os.path.abspath(task_root)
    root = task_root_for(P, cache_dir)
    marker = os.path.join(root, ".complete.json")
    want = {"seed": P.task_seed, "sizes": P.task_sizes, "types": list(P.question_types)}
    if _read_json(marker) == want:
        return os.path.abspath(root)
    from dualspeed_lab.toy.task import build_task

    log(f"[reproduce] building the toy task under {root} (sizes {P.task_sizes}, seed {P.task_seed}, "
        f"questions {', '.join(P.question_types)})")
    t0 = time.perf_counter()
    build_task(root, seed=P.task_seed, sizes=dict(P.task_sizes), progress=progress, types=P.question_types)
    _write_json(marker, want)
    log(f"[reproduce] task built in {time.perf_counter() - t0:.1f} s")
    return os.path.abspath(root)


def toy_models_available() -> bool:
    return importlib.util.find_spec("dualspeed_lab.toy.models") is not None


def resolve_model_source(P: Preset, args) -> str:
    source = args.models or P.models
    if source == "auto":
        source = "toy" if toy_models_available() else "tiny"
    return source


def model_paths_for(source: str, P: Preset, cache_dir: str, task_root: str) -> dict:
    if source == "tiny":
        from dualspeed_lab.tiny.build import asset_paths

        return asset_paths(os.path.join(REPO, "playground", "tiny"))
    if source == "toy":
        from dualspeed_lab.toy.models import RECIPE  # a new build recipe must not reuse an old build

        root = os.path.join(cache_dir, f"toy-models-s{P.model_seed}-{_hash([task_root, P.model_seed, RECIPE])}")
        done = _read_json(os.path.join(root, ".complete.json")) or {}
        return {"root": root, **{k: done[k] for k in ("model", "vision_tower") if k in done}}
    raise SystemExit(f"unknown model source {source!r} (auto, toy, tiny)")


def prepare_models(source: str, P: Preset, cache_dir: str, task_root: str, args, log=print) -> dict:
    """{"source", "model" (base LLM folder), "vision_tower", "build_s"}."""
    t0 = time.perf_counter()
    if args.base_llm and args.vision_tower:  # both named: nothing to build
        return {"source": "custom", "model": os.path.abspath(args.base_llm),
                "vision_tower": os.path.abspath(args.vision_tower), "build_s": 0.0}
    if source == "tiny":
        from dualspeed_lab.tiny.build import build_all

        paths = build_all(os.path.join(REPO, "playground", "tiny"))
        out = {"model": paths["model"], "vision_tower": paths["vision_tower"]}
    else:
        root = model_paths_for(source, P, cache_dir, task_root)["root"]
        marker = os.path.join(root, ".complete.json")
        done = _read_json(marker)
        if done and os.path.isdir(done.get("model", "")) and os.path.isdir(done.get("vision_tower", "")):
            out = {"model": done["model"], "vision_tower": done["vision_tower"]}
        else:
            if not toy_models_available():
                raise SystemExit("--models toy: dualspeed_lab/toy/models.py with build_toy_models() is not there yet")
            from dualspeed_lab.toy.models import build_toy_models

            log(f"[reproduce] building the toy models under {root} (seed {P.model_seed}); this runs once")
            built = build_toy_models(task_root, root, P.model_seed, progress=not getattr(args, "no_progress", False))
            out = {"model": os.path.abspath(built["model"]), "vision_tower": os.path.abspath(built["vision_tower"])}
            _write_json(marker, dict(out, built_s=round(time.perf_counter() - t0, 1)))
    if args.base_llm:
        out["model"] = os.path.abspath(args.base_llm)
    if args.vision_tower:
        out["vision_tower"] = os.path.abspath(args.vision_tower)
    out["source"] = source + (" (overridden)" if (args.base_llm or args.vision_tower) else "")
    out["build_s"] = round(time.perf_counter() - t0, 1)
    return out


def select_questions(P: Preset, task_root: str) -> List[dict]:
    """Test questions: the first `eval_per_type` of each type in file order, then at most `eval_limit`."""
    with open(os.path.join(task_root, "test", "questions.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if P.eval_per_type is not None:
        seen: Counter = Counter()
        picked = []
        for r in rows:
            if seen[r["type"]] < P.eval_per_type:
                seen[r["type"]] += 1
                picked.append(r)
        rows = picked
    if P.eval_limit is not None:
        rows = rows[:P.eval_limit]
    if not rows:
        raise SystemExit("no test questions selected")
    return rows


def chance_of(rows: Sequence[dict]) -> Tuple[float, Dict[str, float]]:
    from dualspeed_lab.toy.task import CHANCE

    per_type = {t: CHANCE[t] for t in {r["type"] for r in rows}}
    overall = sum(CHANCE[r["type"]] for r in rows) / len(rows)
    return overall, per_type


# ======================================================================================== the runner
def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def read_trainer_state(output_dir: str) -> dict:
    """train_runtime, train_loss, steps and the mean of DualSpeed's logged fractions, when present."""
    state = _read_json(os.path.join(output_dir, "trainer_state.json")) or {}
    out = {}
    slow, kept = [], []
    for entry in state.get("log_history", []):
        if "train_runtime" in entry:
            out["train_runtime_s"] = float(entry["train_runtime"])
            out["train_loss"] = entry.get("train_loss")
        if "dualspeed/slow_frac" in entry:
            slow.append(entry["dualspeed/slow_frac"])
        if "dualspeed/visual_kept_frac" in entry:
            kept.append(entry["dualspeed/visual_kept_frac"])
    if "global_step" in state:
        out["steps"] = state["global_step"]
    if slow:
        out["slow_frac"] = sum(slow) / len(slow)
    if kept:
        out["visual_kept_frac"] = sum(kept) / len(kept)
    return out


def score_answers(answers_path: str, questions: Sequence[dict]) -> dict:
    from dualspeed_lab.toy.task import is_correct

    preds = {}
    if os.path.isfile(answers_path):
        with open(answers_path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    preds[str(r["question_id"])] = r.get("text", "")
    hits, n = Counter(), Counter()
    missing = 0
    for q in questions:
        n[q["type"]] += 1
        pred = preds.get(str(q["question_id"]))
        if pred is None:
            missing += 1
            continue
        hits[q["type"]] += bool(is_correct(pred, q["answer"]))
    total = sum(n.values())
    return {"accuracy": sum(hits.values()) / total, "n": total, "missing": missing,
            "per_type": {t: {"accuracy": hits[t] / n[t], "n": n[t]} for t in sorted(n)}}


class StageFailed(RuntimeError):
    pass


class Runner:
    def __init__(self, P: Preset, args, out: str, task_root: str, models: dict, questions_file: str,
                 questions: List[dict], dry_run: bool = False, echo=print):
        self.P, self.args, self.out = P, args, out
        self.task_root, self.models = task_root, models
        self.questions_file, self.questions = questions_file, questions
        self.dry_run, self.echo = dry_run, echo
        self.bin_dir = os.path.dirname(sys.executable)
        self.status = lambda text: None  # set by the progress bar

    # ---- configuration identity
    def train_hparams(self, kind: str) -> dict:
        P = self.P
        if kind == "pretrain":
            return {"steps": P.pretrain_steps, "epochs": P.pretrain_epochs, "batch": P.pretrain_batch,
                    "lr": P.pretrain_lr, "max_len": P.model_max_length, "extra": list(P.extra_train_flags)}
        return {"steps": P.sft_steps, "epochs": P.sft_epochs, "batch": P.sft_batch, "lr": P.sft_lr,
                "mm_projector_lr": P.mm_projector_lr, "lora": [P.lora_r, P.lora_alpha],
                "max_len": P.model_max_length, "extra": list(P.extra_train_flags)}

    def identity(self) -> dict:
        return {"model": self.models["model"], "vision_tower": self.models["vision_tower"],
                "task": self.task_root, "launcher": self.args.launcher, "deepspeed": self.args.deepspeed_config,
                "threads": self.P.threads}

    def pretrain_key(self, cell: Cell, seed: int) -> str:
        return _hash([self.identity(), cell.pretrain.semantics("pretrain"), self.train_hparams("pretrain"), seed])

    def sft_key(self, cell: Cell, seed: int) -> str:
        return _hash([self.pretrain_key(cell, seed), cell.sft.semantics("sft"), self.train_hparams("sft"), seed])

    def eval_key(self, spec: EvalSpec, seed: int) -> str:
        return _hash([asdict(spec), self.questions_file, _hash(self.questions), self.P.max_new_tokens,
                      self.args.eval_device, self.P.threads, seed])

    # ---- paths
    def pretrain_dir(self, cell: Cell, seed: int) -> str:
        sem = cell.pretrain.semantics("pretrain")
        tag = "plain" if sem[0] == "plain" else f"ds-{sem[1]}-p{sem[2]:g}-l{sem[3]}"
        return os.path.join(self.out, "runs", "pretrain", f"{tag}-{self.pretrain_key(cell, seed)}-s{seed}")

    def sft_dir(self, cell: Cell, seed: int) -> str:
        return os.path.join(self.out, "runs", "sft", f"{cell.name}-{self.sft_key(cell, seed)}-s{seed}")

    def cell_json(self, cell: Cell, seed: int) -> str:
        return os.path.join(self.out, "cells", f"{cell.name}-s{seed}.json")

    # ---- commands
    def _common_flags(self, kind: str, seed: int) -> List[str]:
        h = self.train_hparams(kind)
        flags = ["--bf16", "False", "--dataloader_num_workers", "0", "--per_device_train_batch_size", str(h["batch"])]
        if h["steps"]:
            flags += ["--max_steps", str(h["steps"])]
        else:
            flags += ["--num_train_epochs", f"{h['epochs']:g}"]
        if h["lr"] is not None:
            flags += ["--learning_rate", f"{h['lr']:g}"]
        if kind == "sft":
            if self.P.mm_projector_lr is not None:
                flags += ["--mm_projector_lr", f"{self.P.mm_projector_lr:g}"]
            if self.P.lora_r is not None:
                flags += ["--lora_r", str(self.P.lora_r)]
            if self.P.lora_alpha is not None:
                flags += ["--lora_alpha", str(self.P.lora_alpha)]
        flags += ["--seed", str(seed), "--save_strategy", "no", "--logging_steps", str(self.P.logging_steps),
                  "--model_max_length", str(self.P.model_max_length), *self.P.extra_train_flags]
        return flags

    def stage_command(self, kind: str, cell: Cell, seed: int, output_dir: str,
                      pretrain_dir: Optional[str] = None) -> Tuple[Dict[str, str], List[str]]:
        """(environment overrides, argv) of one training stage through the upstream-style script."""
        stage = cell.pretrain if kind == "pretrain" else cell.sft
        env = {"MODEL_NAME_OR_PATH": self.models["model"], "VISION_TOWER": self.models["vision_tower"],
               "OUTPUT_DIR": output_dir, "LAUNCHER": self.args.launcher,
               "DEEPSPEED_CONFIG": self.args.deepspeed_config, "REPORT_TO": "none",
               "DUALSPEED": "1" if stage.dualspeed else "0", **self.thread_env()}
        if kind == "pretrain":
            env.update(PRETRAIN_DATA_PATH=os.path.join(self.task_root, "pretrain", "pretrain.json"),
                       PRETRAIN_IMAGE_FOLDER=self.task_root)
            script = "scripts/v1_5/pretrain.sh"
        else:
            env.update(DATA_PATH=os.path.join(self.task_root, "train", "train.json"), IMAGE_FOLDER=self.task_root,
                       PRETRAIN_MM_MLP_ADAPTER=os.path.join(pretrain_dir, "mm_projector.bin"))
            script = "scripts/v1_5/finetune_lora.sh"
        argv = ["bash", script, *self._common_flags(kind, seed), *stage.cli()]
        return env, argv

    def eval_command(self, spec: EvalSpec, model_dir: str, answers: str, seed: int) -> List[str]:
        argv = [sys.executable, "-m"]
        if spec.pruned:
            argv += ["dualspeed_patch.run", "--pruned", "--vtp_method", spec.method, "--pruning_ratio",
                     f"{spec.ratio:g}", "--seed", str(seed)]
            if not spec.isolator:
                argv.append("--no_isolator")
        argv += ["llava.eval.model_vqa_loader", "--model-path", model_dir, "--model-base", self.models["model"],
                 "--question-file", self.questions_file, "--image-folder", self.task_root, "--answers-file", answers,
                 "--conv-mode", CONV_MODE, "--temperature", "0", "--max_new_tokens", str(self.P.max_new_tokens),
                 "--num-workers", "0", "--device", self.args.eval_device]
        return argv

    def _env(self, overrides: Dict[str, str]) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PATH=self.bin_dir + os.pathsep + env.get("PATH", ""),
                   PYTHONPATH=REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
        env.update(overrides)
        return env

    def thread_env(self) -> Dict[str, str]:
        t = self.P.threads
        return {"OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)} if t else {}

    @staticmethod
    def show(env: Dict[str, str], argv: Sequence[str]) -> str:
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])

    def _run(self, env_over: Dict[str, str], argv: List[str], log_path: str) -> Tuple[float, float]:
        """Run one command (output to log_path); (wall seconds, CPU seconds of the whole process tree)."""
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}\n# {self.show(env_over, argv)}\n")
            log.flush()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(argv, cwd=REPO, env=self._env(env_over), stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-6000:]
            raise StageFailed(f"exit {proc.returncode}: {self.show(env_over, argv)}\n--- {log_path} (tail) ---\n{tail}")
        return wall, cpu

    # ---- stages
    def ensure_stage(self, kind: str, cell: Cell, seed: int, pretrain_info: Optional[dict] = None) -> dict:
        if kind == "pretrain":
            run_dir, key = self.pretrain_dir(cell, seed), self.pretrain_key(cell, seed)
            output_dir = os.path.join(run_dir, "llava-pretrain")
        else:
            run_dir, key = self.sft_dir(cell, seed), self.sft_key(cell, seed)
            output_dir = os.path.join(run_dir, "llava-lora")
        info_path = os.path.join(run_dir, "stage.json")
        info = _read_json(info_path)
        if info and info.get("key") == key and os.path.isdir(output_dir):
            return dict(info, reused=True)
        env, argv = self.stage_command(kind, cell, seed, output_dir,
                                       pretrain_info["output_dir"] if pretrain_info else None)
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)  # a run that did not finish
        self.status(f"{cell.name} s{seed}: {kind}")
        load0 = _loadavg()
        wall, cpu = self._run(env, argv, os.path.join(run_dir, "train.log"))
        info = {"key": key, "stage": kind, "output_dir": output_dir, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "dualspeed": (cell.pretrain if kind == "pretrain" else cell.sft).dualspeed,
                "semantics": list((cell.pretrain if kind == "pretrain" else cell.sft).semantics(kind)),
                "command": self.show(env, argv), "loadavg_before": load0, "loadavg_after": _loadavg(),
                "finished": datetime.datetime.now().isoformat(timespec="seconds"), "seed": seed}
        info.update(read_trainer_state(output_dir))
        _write_json(info_path, info)
        return dict(info, reused=False)

    def ensure_eval(self, cell: Cell, seed: int, spec: EvalSpec, sft_info: dict) -> dict:
        run_dir = self.sft_dir(cell, seed)
        res_path = os.path.join(run_dir, "evals", f"{spec.name}.json")
        key = self.eval_key(spec, seed)
        done = _read_json(res_path)
        if done and done.get("key") == key and done.get("sft_key") == sft_info["key"]:
            return done
        answers = os.path.join(run_dir, "answers", f"{spec.name}.jsonl")
        argv = self.eval_command(spec, sft_info["output_dir"], answers, seed)
        self.status(f"{cell.name} s{seed}: eval {spec.name}")
        wall, cpu = self._run(self.thread_env(), argv, os.path.join(run_dir, "logs", f"eval-{spec.name}.log"))
        res = {"key": key, "sft_key": sft_info["key"], "mode": asdict(spec), "name": spec.name,
               "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "answers": answers,
               "command": self.show(self.thread_env(), argv)}
        res.update(score_answers(answers, self.questions))
        _write_json(res_path, res)
        return res

    def cell_config(self, cell: Cell, seed: int) -> dict:
        return {"pretrain": {"dualspeed": cell.pretrain.dualspeed, "flags": dict(cell.pretrain.flags),
                             "hparams": self.train_hparams("pretrain")},
                "sft": {"dualspeed": cell.sft.dualspeed, "flags": dict(cell.sft.flags),
                        "hparams": self.train_hparams("sft")},
                "key": self.sft_key(cell, seed)}

    def cached_cell(self, cell: Cell, seed: int) -> Optional[dict]:
        res = _read_json(self.cell_json(cell, seed))
        if not res or res.get("schema") != SCHEMA or res.get("config", {}).get("key") != self.sft_key(cell, seed):
            return None
        if any(spec.name not in res.get("evals", {}) for spec in cell.evals):
            return None
        if res.get("questions_hash") != _hash(self.questions):
            return None
        return res

    def run_cell(self, cell: Cell, seed: int) -> dict:
        cached = self.cached_cell(cell, seed)
        if cached:
            return dict(cached, cached=True)
        pre = self.ensure_stage("pretrain", cell, seed)
        sft = self.ensure_stage("sft", cell, seed, pre)
        evals = {spec.name: self.ensure_eval(cell, seed, spec, sft) for spec in cell.evals}
        stage_keys = ("wall_s", "cpu_s", "train_runtime_s", "train_loss", "steps", "slow_frac", "visual_kept_frac",
                      "reused", "output_dir", "loadavg_before", "loadavg_after", "command")
        res = {
            "schema": SCHEMA, "cell": cell.name, "label": cell.label, "aliases": [cell.name] + cell.aliases,
            "seed": seed, "preset": self.P.name, "config": self.cell_config(cell, seed),
            "has_isolator": cell.has_isolator, "models": {k: self.models[k] for k in ("source", "model", "vision_tower")},
            "task_root": self.task_root, "questions_file": self.questions_file, "questions_hash": _hash(self.questions),
            "stages": {"pretrain": {k: pre.get(k) for k in stage_keys}, "sft": {k: sft.get(k) for k in stage_keys}},
            "evals": {name: {k: e.get(k) for k in ("name", "mode", "accuracy", "n", "missing", "per_type", "wall_s",
                                                    "cpu_s", "answers")} for name, e in evals.items()},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        }
        # pretraining reused from another cell still counts in this recipe's training time
        res["stages"]["pretrain"]["shared"] = pre.get("reused", False)
        _write_json(self.cell_json(cell, seed), res)
        return dict(res, cached=False)


# =================================================================================== aggregation
@dataclass
class Stat:
    values: List[float]
    n: Optional[int] = None        # questions per seed (accuracies)

    @property
    def k(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def spread(self) -> Optional[float]:
        """The seed std; with one seed, the standard error of an accuracy over n questions (Agresti-Coull:
        p~ = (x + 2) / (n + 4), se = sqrt(p~ (1 - p~) / (n + 4)), so 0 % or 100 % on few questions is not
        taken as exact)."""
        if self.std is not None:
            return self.std
        if self.n and self.mean is not None and 0 <= self.mean <= 1:
            pt = (self.mean * self.n + 2) / (self.n + 4)
            return math.sqrt(pt * (1 - pt) / (self.n + 4))
        return None


def load_cells(out: str) -> List[dict]:
    folder = os.path.join(out, "cells")
    res = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                r = _read_json(os.path.join(folder, name))
                if r and r.get("schema") == SCHEMA:
                    res.append(r)
    return res


def stage_time(res: dict, stage: str, kind: str = "train") -> Optional[float]:
    """kind: train (the Trainer's train_runtime, else wall), wall (the whole script), cpu (CPU seconds of the
    whole script's process tree: less sensitive than wall clock to other jobs on a shared machine)."""
    s = res["stages"][stage]
    if kind == "train":
        return s.get("train_runtime_s") if s.get("train_runtime_s") is not None else s.get("wall_s")
    return s.get("cpu_s" if kind == "cpu" else "wall_s")


class Results:
    """Cell JSONs indexed by alias and seed, with per-seed paired statistics."""

    def __init__(self, cells: Iterable[dict], seeds: Optional[Sequence[int]] = None):
        self.by: Dict[str, Dict[int, dict]] = defaultdict(dict)
        for r in cells:
            if seeds is not None and r["seed"] not in seeds:
                continue
            for a in r.get("aliases", [r["cell"]]):
                self.by[a][r["seed"]] = r

    def has(self, v: str) -> bool:
        return bool(self.by.get(v))

    def label(self, v: str) -> str:
        runs = self.by.get(v)
        return next(iter(runs.values()))["label"] if runs else v

    def seeds(self, v: str) -> List[int]:
        return sorted(self.by.get(v, {}))

    def acc(self, v: str, ev: str, qtype: Optional[str] = None) -> Stat:
        vals, n = [], None
        for s in self.seeds(v):
            e = self.by[v][s]["evals"].get(ev)
            if not e:
                continue
            if qtype is None:
                vals.append(e["accuracy"]); n = e["n"]
            elif qtype in e["per_type"]:
                vals.append(e["per_type"][qtype]["accuracy"]); n = e["per_type"][qtype]["n"]
        return Stat(vals, n)

    def time(self, v: str, stage: str = "total", kind: str = "train") -> Stat:
        vals = []
        for s in self.seeds(v):
            r = self.by[v][s]
            if stage == "total":
                a, b = stage_time(r, "pretrain", kind), stage_time(r, "sft", kind)
                if a is not None and b is not None:
                    vals.append(a + b)
            else:
                t = stage_time(r, stage, kind)
                if t is not None:
                    vals.append(t)
        return Stat(vals)

    def paired(self, v: str, ref: str, fn) -> Stat:
        """fn(run of v, run of ref) over the seeds both have (relative %, speedup)."""
        vals = []
        for s in self.seeds(v):
            if s in self.by.get(ref, {}):
                x = fn(self.by[v][s], self.by[ref][s])
                if x is not None:
                    vals.append(x)
        return Stat(vals)

    def mode_gap(self, v: str, ev: str, ref_ev: str) -> Stat:
        """Accuracy under ev minus under ref_ev for the same model, per seed (the paper's mode gap when ev is
        normal inference and ref_ev pruned inference)."""
        def f(a, _):
            ea, eb = a["evals"].get(ev), a["evals"].get(ref_ev)
            return ea["accuracy"] - eb["accuracy"] if ea and eb else None
        st = self.paired(v, v, f)
        st.n = self.acc(v, ev).n
        return st

    def rel(self, v: str, ev: str, ref: str = "baseline", ref_ev: str = "normal") -> Stat:
        def f(a, b):
            ea, eb = a["evals"].get(ev), b["evals"].get(ref_ev)
            if not ea or not eb or eb["accuracy"] == 0:
                return None
            return 100.0 * ea["accuracy"] / eb["accuracy"]
        return self.paired(v, ref, f)

    def speedup(self, v: str, stage: str = "total", ref: str = "baseline", kind: str = "train") -> Stat:
        def f(a, b):
            if stage == "total":
                ta = (stage_time(a, "pretrain", kind) or 0) + (stage_time(a, "sft", kind) or 0)
                tb = (stage_time(b, "pretrain", kind) or 0) + (stage_time(b, "sft", kind) or 0)
            else:
                ta, tb = stage_time(a, stage, kind), stage_time(b, stage, kind)
            return tb / ta if ta and tb else None
        return self.paired(v, ref, f)


# ========================================================================================= tables
def fmt_stat(st, kind: str) -> str:
    if st is None:
        return "–"
    if isinstance(st, str):
        return st
    if not isinstance(st, Stat):
        st = Stat([float(st)])
    if st.mean is None:
        return "–"
    scale, digits, suffix = {"acc": (100, 1, ""), "rel": (1, 1, ""), "time": (1, 1, ""),
                             "speedup": (1, 2, "×")}[kind]
    text = f"{st.mean * scale:.{digits}f}"
    if st.std is not None:
        text += f" ± {st.std * scale:.{digits}f}"
    return text + suffix


@dataclass
class Table:
    key: str
    title: str
    columns: List[Tuple[str, str]]          # (header, kind: acc | rel | time | speedup | text)
    rows: List[Tuple[str, List[object]]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, label: str, values: List[object]) -> None:
        self.rows.append((label, values))

    def markdown(self) -> str:
        head = ["", *[h for h, _ in self.columns]]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|"]
        for label, vals in self.rows:
            cells = [v if kind == "text" else fmt_stat(v, kind) for (h, kind), v in zip(self.columns, vals)]
            lines.append("| " + " | ".join([label] + [str(c) for c in cells]) + " |")
        if self.notes:
            lines += [""] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str) -> None:
        header = ["row"]
        for h, kind in self.columns:
            header += [h] if kind == "text" else [f"{h} mean", f"{h} std", f"{h} k"]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for label, vals in self.rows:
                row = [label]
                for (h, kind), v in zip(self.columns, vals):
                    if kind == "text":
                        row.append(v if v is not None else "")
                        continue
                    if isinstance(v, Stat):
                        st = v
                    elif isinstance(v, (int, float)):
                        st = Stat([float(v)])
                    else:  # None or a placeholder such as "–"
                        st = Stat([])
                    scale = 100 if kind == "acc" else 1
                    row += ["" if st.mean is None else round(st.mean * scale, 4),
                            "" if st.std is None else round(st.std * scale, 4), st.k]
                w.writerow(row)


class Report:
    def __init__(self, P: Preset, R: Results, cells: "OrderedDict[str, Cell]", alias: Dict[str, str],
                 questions: List[dict], out: str):
        self.P, self.R, self.cells, self.alias, self.questions, self.out = P, R, cells, alias, questions, out
        self.chance, self.chance_type = chance_of(questions)
        self.types = [t for t in QUESTION_TYPES if t in self.chance_type]
        self.pruned = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, True).name
        self.pruned_noiso = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, False).name
        self.files: List[str] = []
        self.labels = {name: lab for name, (lab, _, _) in variant_catalog(P).items()}

    def lab(self, v: str) -> str:
        return self.labels.get(v) or self.R.label(v)

    def as_trained(self, v: str, method=None, ratio=None) -> str:
        cell = self.cells[self.alias[v]]
        return as_trained_eval(self.P, cell, method, ratio).name

    def note_common(self) -> List[str]:
        k = max((len(self.R.seeds(v)) for v in self.R.by), default=0)
        return [f"Accuracy: exact match (%) on {len(self.questions)} test questions of the toy task "
                f"(chance {100 * self.chance:.1f}%); mean ± sample std over {k} seed(s) (no ± with one seed). "
                "Time: the Trainer's train_runtime (s) per stage; speedup = baseline time / time, paired by seed. "
                f"Pruned inference: {self.P.eval_vtp_method}, p = {self.P.eval_pruning_ratio:g}. "
                "Rel. = % of the baseline's normal-inference accuracy."]

    # ---------------------------------------------------------------- tables
    def table2(self) -> Tuple[Table, Table]:
        R = self.R
        t = Table("table2", "Table 2: normal vs pruned inference",
                  [("Normal", "acc"), ("Pruned + isolator", "acc"), ("Pruned, no isolator", "acc"),
                   ("Rel. normal (%)", "rel"), ("Rel. pruned (%)", "rel"),
                   ("Pretrain (s)", "time"), ("SFT (s)", "time"), ("Total (s)", "time"), ("Speedup", "speedup")])
        for v in table_variants(self.P, "table2"):
            if not R.has(v):
                continue
            iso = self.cells[self.alias[v]].has_isolator
            t.add(self.lab(v), [R.acc(v, "normal"), R.acc(v, self.pruned) if iso else "–",
                               R.acc(v, self.pruned_noiso), R.rel(v, "normal"), R.rel(v, self.as_trained(v)),
                               R.time(v, "pretrain"), R.time(v, "sft"), R.time(v, "total"), R.speedup(v)])
        t.add("Chance", [Stat([self.chance]), Stat([self.chance]), Stat([self.chance])] + ["–"] * 6)
        t.notes = self.note_common() + ["Rel. pruned: pruned inference as trained (with the isolator when the "
                                        "model has one). Baseline and NaivePrune have no isolator (–)."]
        types = Table("table2_per_type", "Table 2 per question type (accuracy, %)",
                      [(q, "acc") for q in self.types] + [("All", "acc")])
        for v in table_variants(self.P, "table2"):
            if not R.has(v):
                continue
            iso = self.cells[self.alias[v]].has_isolator
            for ev, lab in (("normal", "normal"), (self.pruned, "pruned + isolator"),
                            (self.pruned_noiso, "pruned, no isolator")):
                if ev == self.pruned and not iso:
                    continue
                types.add(f"{self.lab(v)}, {lab}", [R.acc(v, ev, q) for q in self.types] + [R.acc(v, ev)])
        types.add("Chance", [Stat([self.chance_type[q]]) for q in self.types] + [Stat([self.chance])])
        return t, types

    def speed(self) -> Table:
        R = self.R
        t = Table("speed", "Training speed (wall clock per stage)",
                  [("Pretrain (s)", "time"), ("SFT (s)", "time"), ("Total (s)", "time"),
                   ("Speedup pretrain", "speedup"), ("Speedup SFT", "speedup"), ("Speedup total", "speedup"),
                   ("Wall total incl. start-up (s)", "time"), ("Speedup wall", "speedup"),
                   ("CPU total (s)", "time"), ("Speedup CPU", "speedup"),
                   ("Visual tokens kept (SFT)", "text"), ("Slow fraction (SFT)", "text")])
        for v in table_variants(self.P, "speed"):
            if not R.has(v):
                continue
            runs = [R.by[v][s] for s in R.seeds(v)]
            kept = [r["stages"]["sft"].get("visual_kept_frac") for r in runs]
            slow = [r["stages"]["sft"].get("slow_frac") for r in runs]
            kept = [x for x in kept if x is not None]
            slow = [x for x in slow if x is not None]
            t.add(self.lab(v), [R.time(v, "pretrain"), R.time(v, "sft"), R.time(v, "total"),
                               R.speedup(v, "pretrain"), R.speedup(v, "sft"), R.speedup(v, "total"),
                               R.time(v, "total", "wall"), R.speedup(v, "total", kind="wall"),
                               R.time(v, "total", "cpu"), R.speedup(v, "total", kind="cpu"),
                               f"{100 * statistics.fmean(kept):.1f}%" if kept else "100%",
                               f"{statistics.fmean(slow):.2f}" if slow else "–"])
        t.notes = ["Train time: the Trainer's train_runtime (the optimisation loop); wall: the whole script "
                   "(interpreter start, model loading, saving); CPU: user + system seconds of the whole script's "
                   "processes (less sensitive than wall clock to other jobs on a shared machine). Pretraining shared between cells is counted in "
                   "each recipe. Visual tokens kept / slow fraction: means of the logged dualspeed/* values "
                   "(a slow step keeps every token). On a shared 2-core CPU the timings carry the noise of "
                   "other jobs; compare speedups only beyond their spread."]
        return t

    def table1(self) -> Table:
        R, P = self.R, self.P
        t = Table("table1", "Table 1: visual token pruning methods in training and in inference",
                  [("Baseline + VTP at inference", "acc"), ("DualSpeed normal", "acc"),
                   ("DualSpeed pruned (same VTP)", "acc"), ("Rel. normal (%)", "rel"), ("Total (s)", "time"),
                   ("Speedup", "speedup")])
        for m in P.vtp_methods:
            v = variant_name(P, "vtp", m)
            if not R.has(v):
                continue
            base_ev = EvalSpec(True, m, P.eval_pruning_ratio, False).name
            t.add(m, [R.acc("baseline", base_ev), R.acc(v, "normal"), R.acc(v, self.as_trained(v, method=m)),
                      R.rel(v, "normal"), R.time(v), R.speedup(v)])
        if R.has("baseline"):
            t.add("(baseline, no pruning)", [R.acc("baseline", "normal"), "–", "–", "–", R.time("baseline"), "–"])
        t.notes = self.note_common() + [
            f"Each row trains DualSpeed with that pruner (p = {P.pruning_ratio:g}) and prunes with it at "
            "inference; the first column prunes the baseline at inference only (training-free VTP)."]
        return t

    def table3(self) -> Table:
        R = self.R
        t = Table("table3", "Table 3: ablation",
                  [("Normal", "acc"), ("Pruned (as trained)", "acc"), ("Rel. normal (%)", "rel"),
                   ("Rel. pruned (%)", "rel"), ("Total (s)", "time"), ("Speedup", "speedup")])
        labels = {"baseline": "Baseline (no pruning)", "naiveprune": "NaivePrune", "fastslow": "+ fast-slow",
                  "fastslow-iso": "+ isolator", "dualspeed": "+ distillation (DualSpeed)"}
        for v in table_variants(self.P, "table3"):
            if R.has(v):
                t.add(labels[v], [R.acc(v, "normal"), R.acc(v, self.as_trained(v)), R.rel(v, "normal"),
                                  R.rel(v, self.as_trained(v)), R.time(v), R.speedup(v)])
        t.notes = self.note_common() + [
            f"NaivePrune: pruning in training, r = 0, no isolator; + fast-slow: r = {self.P.slow_mode_ratio:g}; "
            f"+ isolator: {self.P.isolator_len} isolator vectors; + distillation: self-distillation in slow mode."]
        return t

    def table4(self) -> Table:
        R = self.R
        t = Table("table4", "Table 4: pruning in pretraining only / SFT only / both",
                  [("Normal", "acc"), ("Pruned (as trained)", "acc"), ("Rel. normal (%)", "rel"),
                   ("Pretrain (s)", "time"), ("SFT (s)", "time"), ("Speedup pretrain", "speedup"),
                   ("Speedup SFT", "speedup"), ("Speedup total", "speedup")])
        labels = {"baseline": "Neither (baseline)", "prune-pretrain-only": "Pretrain only",
                  "prune-sft-only": "SFT only", "dualspeed": "Both (DualSpeed)"}
        for v in table_variants(self.P, "table4"):
            if R.has(v):
                t.add(labels[v], [R.acc(v, "normal"), R.acc(v, self.as_trained(v)), R.rel(v, "normal"),
                                  R.time(v, "pretrain"), R.time(v, "sft"), R.speedup(v, "pretrain"),
                                  R.speedup(v, "sft"), R.speedup(v, "total")])
        t.notes = self.note_common() + ["Pruned in a stage = DualSpeed in that stage (fast mode every step in "
                                        "pretraining, fast/slow in SFT); the other stage is plain LLaVA."]
        return t

    def fig5(self) -> Table:
        R, P = self.R, self.P
        t = Table("fig5", "Figure 5: speed vs accuracy over p and r",
                  [("sweep", "text"), ("value", "text"), ("Normal", "acc"), ("Pruned (as trained, same p)", "acc"),
                   ("Total (s)", "time"), ("Speedup", "speedup")])
        if R.has("baseline"):
            t.add("Baseline", ["–", "–", R.acc("baseline", "normal"), "–", R.time("baseline"), Stat([1.0])])
        for p in P.p_values:
            v = variant_name(P, "p", p)
            if R.has(v):
                t.add(f"p = {p:g}", ["p", f"{p:g}", R.acc(v, "normal"), R.acc(v, self.as_trained(v, ratio=p)),
                                     R.time(v), R.speedup(v)])
        for r in P.r_values:
            v = variant_name(P, "r", r)
            if R.has(v):
                t.add(f"r = {r:g}", ["r", f"{r:g}", R.acc(v, "normal"), R.acc(v, self.as_trained(v)),
                                     R.time(v), R.speedup(v)])
        t.notes = self.note_common() + [f"p sweep at r = {P.slow_mode_ratio:g}; r sweep at p = {P.pruning_ratio:g}."]
        return t

    def fig6(self) -> Table:
        R, P = self.R, self.P
        t = Table("fig6", "Figure 6: isolator length",
                  [("Normal", "acc"), ("Pruned (as trained)", "acc"), ("Total (s)", "time")])
        for n in P.isolator_lens:
            v = variant_name(P, "l", n)
            if R.has(v):
                t.add(f"l = {n}", [R.acc(v, "normal"), R.acc(v, self.as_trained(v)), R.time(v)])
        t.notes = self.note_common() + ["l = 0: no isolator (pruned inference without one)."]
        return t

    # ---------------------------------------------------------------- writing
    def write_table(self, t: Table, png=None) -> str:
        md = t.markdown()
        for ext, writer in (("md", None), ("csv", t.write_csv)):
            path = os.path.join(self.out, f"{t.key}.{ext}")
            if writer is None:
                with open(path, "w") as f:
                    f.write(md)
            else:
                writer(path)
            self.files.append(path)
        if png is not None:
            path = os.path.join(self.out, f"{t.key}.png")
            try:
                png(path)
                self.files.append(path)
            except ImportError as exc:
                print(f"[reproduce] no PNG for {t.key}: {exc} (pip install matplotlib)", file=sys.stderr)
        return md

    def write_all(self) -> Dict[str, str]:
        mds: Dict[str, str] = OrderedDict()
        tables = self.P.tables
        if "table2" in tables:
            t2, types = self.table2()
            mds["table2"] = self.write_table(t2, lambda p: self.png_table2(p)) + "\n" + self.write_table(types)
        if "speed" in tables:
            mds["speed"] = self.write_table(self.speed(), lambda p: self.png_speed(p, "speed"))
        if "table1" in tables:
            mds["table1"] = self.write_table(self.table1(), lambda p: self.png_bars(
                p, "Table 1: VTP methods", [m for m in self.P.vtp_methods if self.R.has(variant_name(self.P, "vtp", m))],
                lambda m: variant_name(self.P, "vtp", m),
                [("baseline + VTP", lambda m, v: self.R.acc("baseline", EvalSpec(True, m, self.P.eval_pruning_ratio,
                                                                                   False).name)),
                 ("DualSpeed normal", lambda m, v: self.R.acc(v, "normal")),
                 ("DualSpeed pruned", lambda m, v: self.R.acc(v, self.as_trained(v, method=m)))]))
        if "table3" in tables:
            mds["table3"] = self.write_table(self.table3(), lambda p: self.png_variants(p, "Table 3: ablation", "table3"))
        if "table4" in tables:
            mds["table4"] = self.write_table(self.table4(), lambda p: self.png_variants(p, "Table 4: where to prune",
                                                                                        "table4"))
        if "fig5" in tables:
            mds["fig5"] = self.write_table(self.fig5(), self.png_fig5)
        if "fig6" in tables:
            mds["fig6"] = self.write_table(self.fig6(), self.png_fig6)
        return mds

    # ---------------------------------------------------------------- plots
    @staticmethod
    def _plt():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt

    @staticmethod
    def _ms(st: Stat, scale=100.0):
        return (st.mean * scale if st.mean is not None else float("nan"),
                st.std * scale if st.std is not None else 0.0)

    def _grouped(self, ax, groups: List[str], series: List[Tuple[str, List[Stat]]], ylabel="accuracy (%)",
                 scale=100.0):
        import numpy as np

        x = np.arange(len(groups))
        w = 0.8 / max(1, len(series))
        for i, (name, stats) in enumerate(series):
            ms = [self._ms(s, scale) for s in stats]
            ax.bar(x + (i - (len(series) - 1) / 2) * w, [m for m, _ in ms], w, yerr=[s for _, s in ms],
                   capsize=3, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if scale == 100.0:
            ax.axhline(100 * self.chance, color="gray", ls="--", lw=1, label="chance")
        ax.legend(fontsize=7)

    def _time_panel(self, ax, variants: List[str]):
        import numpy as np

        x = np.arange(len(variants))
        pre = [self._ms(self.R.time(v, "pretrain"), 1) for v in variants]
        sft = [self._ms(self.R.time(v, "sft"), 1) for v in variants]
        ax.bar(x, [m for m, _ in pre], 0.6, yerr=[s for _, s in pre], capsize=3, label="pretrain")
        ax.bar(x, [m for m, _ in sft], 0.6, bottom=[m for m, _ in pre], yerr=[s for _, s in sft], capsize=3,
               label="SFT")
        for i, v in enumerate(variants):
            sp = self.R.speedup(v).mean
            total = pre[i][0] + sft[i][0]
            if sp is not None and not math.isnan(total):
                ax.text(i, total, f"{sp:.2f}×", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([self.lab(v) for v in variants], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("train time (s)")
        ax.legend(fontsize=7)

    def png_table2(self, path: str):
        plt = self._plt()
        vs = [v for v in table_variants(self.P, "table2") if self.R.has(v)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        nan = Stat([])
        self._grouped(axes[0], [self.lab(v) for v in vs], [
            ("normal", [self.R.acc(v, "normal") for v in vs]),
            ("pruned + isolator", [self.R.acc(v, self.pruned) if self.cells[self.alias[v]].has_isolator else nan
                                   for v in vs]),
            ("pruned, no isolator", [self.R.acc(v, self.pruned_noiso) for v in vs])])
        axes[0].set_title("accuracy")
        self._time_panel(axes[1], vs)
        axes[1].set_title("training time (speedup vs baseline)")
        fig.suptitle(f"Table 2 ({self.P.name} preset)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def png_speed(self, path: str, table: str):
        plt = self._plt()
        vs = [v for v in table_variants(self.P, table) if self.R.has(v)]
        fig, ax = plt.subplots(figsize=(6, 4))
        self._time_panel(ax, vs)
        ax.set_title("training time per stage (speedup vs baseline)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def png_variants(self, path: str, title: str, table: str):
        plt = self._plt()
        vs = [v for v in table_variants(self.P, table) if self.R.has(v)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        self._grouped(axes[0], [self.lab(v) for v in vs], [
            ("normal", [self.R.acc(v, "normal") for v in vs]),
            ("pruned (as trained)", [self.R.acc(v, self.as_trained(v)) for v in vs])])
        self._time_panel(axes[1], vs)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def png_bars(self, path, title, groups, to_variant, series):
        plt = self._plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        self._grouped(ax, groups, [(name, [fn(g, to_variant(g)) for g in groups]) for name, fn in series])
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def png_fig5(self, path: str):
        plt = self._plt()
        R, P = self.R, self.P
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind, values in ((axes[0], "p", P.p_values), (axes[1], "r", P.r_values)):
            pts = [(val, variant_name(P, kind, val)) for val in values if R.has(variant_name(P, kind, val))]
            for ev_name, marker, lab in (("normal", "o", "normal inference"), (None, "s", "pruned (as trained)")):
                xs, ys, es = [], [], []
                for val, v in pts:
                    ev = ev_name or self.as_trained(v, ratio=val if kind == "p" else None)
                    sp, acc = R.speedup(v), R.acc(v, ev)
                    if sp.mean is None or acc.mean is None:
                        continue
                    xs.append(sp.mean); ys.append(100 * acc.mean); es.append(100 * (acc.std or 0))
                    if ev_name:
                        ax.annotate(f"{kind}={val:g}", (sp.mean, 100 * acc.mean), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
                ax.errorbar(xs, ys, yerr=es, fmt=marker + "-", capsize=3, label=lab)
            if R.has("baseline"):
                b = R.acc("baseline", "normal")
                ax.errorbar([1.0], [100 * (b.mean or 0)], yerr=[100 * (b.std or 0)], fmt="*", ms=12, label="baseline")
            ax.axhline(100 * self.chance, color="gray", ls="--", lw=1, label="chance")
            ax.set_xlabel("training speedup vs baseline (×)")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"sweep over {kind}")
            ax.legend(fontsize=7)
        fig.suptitle("Figure 5: speed-accuracy")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def png_fig6(self, path: str):
        plt = self._plt()
        R, P = self.R, self.P
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = [(n, variant_name(P, "l", n)) for n in P.isolator_lens if R.has(variant_name(P, "l", n))]
        for ev_fn, lab in ((lambda v: "normal", "normal inference"), (self.as_trained, "pruned inference")):
            ms = [self._ms(R.acc(v, ev_fn(v))) for _, v in pts]
            ax.errorbar([n for n, _ in pts], [m for m, _ in ms], yerr=[s for _, s in ms], fmt="o-", capsize=3,
                        label=lab)
        ax.axhline(100 * self.chance, color="gray", ls="--", lw=1, label="chance")
        ax.set_xlabel("isolator length l")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Figure 6: isolator length")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# ======================================================================================== summary
def compare(a: Stat, b: Stat) -> Tuple[Optional[float], Optional[float]]:
    """(mean(a) - mean(b), spread) with spread = sqrt(spread_a^2 + spread_b^2) (Stat.spread)."""
    if a.mean is None or b.mean is None:
        return None, None
    sa, sb = a.spread(), b.spread()
    spread = math.sqrt((sa or 0) ** 2 + (sb or 0) ** 2) if (sa is not None or sb is not None) else None
    return a.mean - b.mean, spread


def verdict(d: Optional[float], spread: Optional[float], direction: int) -> str:
    """'yes' when d has the expected sign beyond the spread, 'no' when the opposite, else 'within spread'."""
    if d is None:
        return "not measured"
    if spread is None or spread == 0:
        return ("yes" if d * direction > 0 else "no") + " (single run, spread unknown)"
    if d * direction > spread:
        return "yes"
    if d * direction < -spread:
        return "no (opposite, beyond the spread)"
    return "within spread (inconclusive)"


def effects(R: Results, chance: float, P: Preset) -> List[dict]:
    """The paper's claims, tested on these results (differences in accuracy points, times in seconds)."""
    out = []

    def add(claim, a, b, direction, unit, detail=""):
        d, s = compare(a, b)
        out.append({"claim": claim, "diff": d, "spread": s, "verdict": verdict(d, s, direction), "unit": unit,
                    "detail": detail})

    base = R.acc("baseline", "normal")
    add("The baseline learned the task (normal accuracy above chance)", base, Stat([chance], base.n), +1, "acc")
    add("NaivePrune loses accuracy on full sequences (normal inference, vs baseline)",
        R.acc("naiveprune", "normal"), base, -1, "acc")
    add("DualSpeed recovers it (normal inference, vs NaivePrune)", R.acc("dualspeed", "normal"),
        R.acc("naiveprune", "normal"), +1, "acc")
    d, s = compare(R.acc("dualspeed", "normal"), base)
    out.append({"claim": "DualSpeed matches the baseline (normal inference; absolute difference within the spread)",
                "diff": d, "spread": s, "unit": "acc", "detail": "",
                "verdict": "not measured" if d is None else
                ("yes" if s is not None and abs(d) <= s else
                 ("no (better than the baseline)" if d > 0 else "no (below the baseline)"))})
    pruned_iso = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, True).name
    pruned_noiso = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, False).name
    add("DualSpeed with pruned inference (+ isolator) beats the baseline pruned at inference only",
        R.acc("dualspeed", pruned_iso), R.acc("baseline", pruned_noiso), +1, "acc")
    tb, td = R.time("baseline"), R.time("dualspeed")
    sp = R.speedup("dualspeed")
    detail = (f"speedup {sp.mean:.2f}×" + (f" ± {sp.std:.2f}" if sp.std is not None else "")) if sp.mean else ""
    add("DualSpeed trains faster than the baseline (total train_runtime)", tb, td, +1, "s", detail)
    cb, cd = R.time("baseline", kind="cpu"), R.time("dualspeed", kind="cpu")
    spc = R.speedup("dualspeed", kind="cpu")
    detail = (f"ratio {spc.mean:.2f}×" + (f" ± {spc.std:.2f}" if spc.std is not None else "")) if spc.mean else ""
    add("DualSpeed needs less CPU time than the baseline (both stages, whole scripts)", cb, cd, +1, "s", detail)
    # The mode gap within one model, paired by seed: seed-to-seed swings of the whole model cancel here, unlike in
    # the comparisons between recipes above.
    gap_np = R.mode_gap("naiveprune", "normal", pruned_noiso)
    gap_ds = R.mode_gap("dualspeed", "normal", pruned_iso)
    paired_claim(out, "NaivePrune is worse on full sequences than on the pruned ones it trained on (its mode gap, "
                      "paired by seed)", gap_np, R.acc("naiveprune", "normal"), R.acc("naiveprune", pruned_noiso), -1)
    narrowing = Stat([d - n for d, n in zip(gap_ds.values, gap_np.values)], gap_np.n) \
        if R.seeds("dualspeed") == R.seeds("naiveprune") else Stat([])
    paired_claim(out, "DualSpeed closes that gap (its full-minus-pruned difference vs NaivePrune's, paired by seed)",
                 narrowing,
                 R.acc("dualspeed", "normal"), R.acc("naiveprune", "normal"), +1)
    return out


def paired_claim(out: List[dict], claim: str, diffs: Stat, a: Stat, b: Stat, direction: int) -> None:
    """A claim on per-seed differences: the spread is their sample std; with one seed, that of the two
    accuracies behind the one difference (compare)."""
    if diffs.mean is None:
        d, s = None, None
    else:
        d, s = diffs.mean, diffs.std if diffs.k > 1 else compare(a, b)[1]
    agree = sum(1 for x in diffs.values if x * direction > 0)
    out.append({"claim": claim, "diff": d, "spread": s, "verdict": verdict(d, s, direction), "unit": "acc",
                "detail": f"that way in {agree} of {diffs.k} seeds" if diffs.k else ""})


def load_line(R: Results) -> str:
    loads = [st.get(k) for runs in R.by.values() for r in runs.values() for st in r["stages"].values()
             for k in ("loadavg_before", "loadavg_after")]
    loads = [x for x in loads if x is not None]
    if not loads:
        return "- load: not recorded"
    busy = max(loads) > (os.cpu_count() or 1)
    return (f"- 1-min load average around the training stages: {min(loads):.1f} to {max(loads):.1f} on "
            f"{os.cpu_count()} CPUs" + (" (above the CPU count: other jobs shared the cores and stretched the wall "
                                        "clock)" if busy else ""))


def write_summary(out: str, P: Preset, R: Results, report: Report, mds: Dict[str, str], meta: dict) -> str:
    eff = effects(R, report.chance, P)
    learned = eff[0]["verdict"].startswith("yes")
    lines = [f"# DualSpeed reproduction: `{P.name}` preset", "",
             f"- models: {meta.get('models_source')} (LLM `{meta.get('model')}`, vision tower `{meta.get('vision_tower')}`)",
             f"- task: `{meta.get('task_root')}`; {len(report.questions)} test questions "
             f"({', '.join(report.types)}); chance {100 * report.chance:.1f}%",
             f"- seeds: {', '.join(str(s) for s in meta.get('seeds', []))}; pretrain {P.pretrain_steps} steps × "
             f"{P.pretrain_batch}, SFT {P.sft_steps} steps × {P.sft_batch} (LoRA r={P.lora_r}); "
             f"DualSpeed p = {P.pruning_ratio:g}, r = {P.slow_mode_ratio:g}, isolator {P.isolator_len}, {P.vtp_method}",
             "- driver wall clock: " + (f"{meta['wall_s']:.0f} s (the last run in this folder, cached cells "
                                         "included)" if meta.get("wall_s") is not None else "not recorded")
             + f"; host: {platform.platform()}, {os.cpu_count()} CPUs",
             load_line(R),
             "", "## Does the paper's effect show?", "",
             "A difference counts only when it exceeds the spread: sqrt(s_a² + s_b²), with s the sample std over "
             "seeds, or with one seed the standard error of an accuracy over its n questions (Agresti-Coull: "
             "p̃ = (x+2)/(n+4), sqrt(p̃(1−p̃)/(n+4))); a timing from one run has no spread. Rows paired by seed "
             "take the sample std of their per-seed differences.", "",
             "| claim | difference | spread | verdict |", "|---|---:|---:|---|"]
    for e in eff:
        scale, unit = (100, " pt") if e["unit"] == "acc" else (1, " s")
        d = "–" if e["diff"] is None else f"{e['diff'] * scale:+.1f}{unit}"
        s = "–" if e["spread"] is None else f"{e['spread'] * scale:.1f}{unit}"
        v = e["verdict"] + (f"; {e['detail']}" if e["detail"] else "")
        lines.append(f"| {e['claim']} | {d} | {s} | {v} |")
    lines.append("")
    if not learned:
        lines += ["**The baseline is not above chance beyond the spread: the models did not learn to use the image "
                  "in this run.** The accuracy rows above then only compare how well each recipe learned the answer "
                  "format and the answer priors (a recipe can still fall below chance, e.g. by answering out of "
                  "format on sequences it was not trained on); they say nothing about the paper's accuracy claims. "
                  "Expected with the untrained tiny assets; with the toy models, check that the toy LLM had its scene "
                  "warm-up and that SFT ran long enough (docs/reproduce.md, 'The fix, in part'). The timing rows do "
                  "not depend on it.", ""]
    else:
        shown = [e["claim"] for e in eff[1:4] if e["verdict"].startswith("yes")]
        lines += [f"Accuracy claims that show beyond the spread: {len(shown)} of 3" +
                  (f" ({'; '.join(shown)})." if shown else "."), ""]
        if len(meta.get("seeds", [])) < 2:
            lines += ["**One seed: the spread above is the sampling error of the test questions only, not the "
                      "spread of training.** On the toy task the training seed moves accuracies by far more (quick "
                      "preset, seeds 0-7: baseline 40.5-52.0 %, NaivePrune on full sequences 19.8-49.8 %; "
                      "docs/reproduce.md). Rerun with `--seeds 0 1 2` before trusting an accuracy verdict.", ""]
    lines += ["## Tables", ""]
    for md in mds.values():
        lines += [md, ""]
    lines += ["Files: " + ", ".join(sorted(os.path.basename(f) for f in report.files)) + ", results.json, cells/*.json",
              ""]
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    _write_json(os.path.join(out, "effects.json"), eff)
    return path


# ============================================================================================= CLI
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
        prev = _read_json(os.path.join(out, "run.json")) or {}
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
        _write_json(os.path.join(out, "run.json"), {
            "preset": asdict(P), "argv": sys.argv if argv is None else list(argv), "models": models,
            "task_root": task_root, "cells": {n: {"label": c.label, "aliases": c.aliases,
                                                  "evals": [e.name for e in c.evals]} for n, c in cells.items()},
            "started": datetime.datetime.now().isoformat(timespec="seconds")})
        work = [(cell, s) for s in P.seeds for cell in to_run]
        failures = []
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
                    return 1
                continue
            acc = res["evals"]["normal"]["accuracy"]
            bar.write(f"[reproduce] {cell.name} s{s}: normal {100 * acc:.1f}%"
                      + "".join(f", {n} {100 * e['accuracy']:.1f}%" for n, e in res["evals"].items() if n != "normal")
                      + f"; train {res['stages']['pretrain'].get('train_runtime_s') or 0:.1f}"
                        f"+{res['stages']['sft'].get('train_runtime_s') or 0:.1f} s"
                      + (" (cached)" if res.get("cached") else ""))
        bar.close()

    # only the cells of this plan with this configuration (the folder may hold runs of other settings)
    current = [r for r in load_cells(out) if r["seed"] in P.seeds and r["cell"] in cells
               and r["config"].get("key") == runner.sft_key(cells[r["cell"]], r["seed"])]
    R = Results(current, P.seeds)
    report = Report(P, R, cells, alias, questions, out)
    mds = report.write_all()
    wall = time.perf_counter() - t_start
    run_json = os.path.join(out, "run.json")
    prev = _read_json(run_json) or {}
    if args.report_only:
        wall = prev.get("wall_s")
    else:
        _write_json(run_json, dict(prev, wall_s=round(wall, 1),
                                   finished=datetime.datetime.now().isoformat(timespec="seconds")))
    meta = {"models_source": models.get("source"), "model": models.get("model"),
            "vision_tower": models.get("vision_tower"), "task_root": task_root, "seeds": list(P.seeds),
            "wall_s": wall}
    summary = write_summary(out, P, R, report, mds, meta)
    _write_json(os.path.join(out, "results.json"), {
        "preset": asdict(P), "meta": meta, "failures": failures,
        "cells": current})
    print(f"[reproduce] {len(report.files)} table files, summary: {summary} "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
