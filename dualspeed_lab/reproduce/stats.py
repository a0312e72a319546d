"""The cell JSONs, aggregated: accuracies, times, relative accuracies and speedups over seeds.

    R = Results(load_cells(out), seeds)          # indexed by recipe name (aliases included) and seed
    R.acc("dualspeed", "normal")                 # a Stat: per-seed values, mean, sample std, spread()
    R.speedup("dualspeed")                       # baseline time / time, paired by seed
    R.rel("dualspeed", "normal")                 # % of the baseline's normal-inference accuracy, paired by seed

Evaluations are named as EvalSpec.name ("normal", "pruned-divprune-p0.9-iso", ...).
"""
from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from dualspeed_lab.reproduce.common import SCHEMA, read_json


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
                r = read_json(os.path.join(folder, name))
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
