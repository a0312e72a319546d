"""The paper's tables and figures from the aggregated results.

    report = Report(P, Results(cells_json, P.seeds), cells, alias, questions, out)
    mds = report.write_all()     # table key -> Markdown; writes <key>.md, <key>.csv and <key>.png under out

One method per table (table2 with its per-type companion, speed, table1, table3, table4, fig5, fig6), each
returning Table objects; write_all writes the preset's tables. The plots come from ReportPlots (plots.py).
"""
from __future__ import annotations

import os
import statistics
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

from dualspeed_lab.reproduce.assets import chance_of
from dualspeed_lab.reproduce.common import QUESTION_TYPES
from dualspeed_lab.reproduce.plan import (Cell, EvalSpec, as_trained_eval, duet_eval, duet_layer_factor,
                                          duet_stage_a_ratio, fmt_num, table_variants, variant_catalog,
                                          variant_name)
from dualspeed_lab.reproduce.plots import ReportPlots
from dualspeed_lab.reproduce.presets import Preset
from dualspeed_lab.reproduce.stats import Results, Stat
from dualspeed_lab.reproduce.tables import Table
from dualspeed_patch.pruners import budget


class Report(ReportPlots):
    """The paper's tables and figures from Results: Markdown, CSV and PNG files under `out`."""

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

    def duet(self) -> Table:
        """DUET-VLM's stages beside DualSpeed at each average reduction over the LLM's layers."""
        R, P = self.R, self.P
        t = Table("duet", "DUET-VLM (stages A + B) and DualSpeed at matching average visual-token reductions",
                  [("Avg reduction", "text"), ("Normal", "acc"), ("Reduced (as trained)", "acc"),
                   ("Rel. normal (%)", "rel"), ("Total (s)", "time"), ("Speedup", "speedup"),
                   ("CPU total (s)", "time"), ("Speedup CPU", "speedup"), ("Visual kept in SFT (layer avg)", "text")])
        if R.has("baseline"):
            t.add("Baseline", ["0%", R.acc("baseline", "normal"), "–", "–", R.time("baseline"), Stat([1.0]),
                               R.time("baseline", "total", "cpu"), Stat([1.0]), "100%"])
        for red in P.duet_reductions:
            tag = fmt_num(red)
            duet_ev = duet_eval(P, red, iso=False).name
            if R.has("baseline"):
                t.add(f"Baseline + DUET at inference only, {100 * red:.0f}%",
                      [f"{100 * red:.0f}%", "–", R.acc("baseline", duet_ev)] + ["–"] * 6)
            for kind in ("duet-trained", "ds-divprune", "ds-duet"):
                v = f"{kind}-{tag}"
                if not R.has(v):
                    continue
                t.add(self.lab(v), [f"{100 * red:.0f}%", R.acc(v, "normal"), R.acc(v, self.duet_as_trained(v, red)),
                                    R.rel(v, "normal"), R.time(v), R.speedup(v), R.time(v, "total", "cpu"),
                                    R.speedup(v, kind="cpu"), self.layer_kept(v)])
        a = {red: duet_stage_a_ratio(P, red) for red in P.duet_reductions}
        seeds = max((len(R.seeds(v)) for v in R.by), default=0)
        t.notes = [
            f"Accuracy: exact match (%) on {len(self.questions)} test questions of the toy task (chance "
            f"{100 * self.chance:.1f}%); mean ± sample std over {seeds} seed(s). Time: the Trainer's train_runtime "
            "(s) of both stages; speedups are paired by seed. Rel. = % of the baseline's normal-inference accuracy.",
            f"Avg reduction: of the {P.duet_visual_tokens} visual tokens per image, averaged over the LLM's "
            f"{P.duet_llm_layers} layers (DUET's measure). DUET: stage A (--vtp_method duet) keeps "
            + ", ".join(f"{budget(P.duet_visual_tokens, a[red])} tokens at {100 * red:.0f}%" for red in a)
            + f"; stage B drops after layer(s) {P.duet_stage_b_layers} keeping {P.duet_stage_b_ratios} of them "
            "(layer factor " f"{duet_layer_factor(P):g}). DualSpeed (divprune) keeps (1 - R) of the tokens in every "
            "layer. DUET trained: A+B on every step, no isolator, no slow mode (as DUET's paper trains); DualSpeed "
            f"(DUET A+B): A+B as the fast mode with the isolator, r = {P.slow_mode_ratio:g}. Reduced: the "
            "reduction the recipe trained with (with its isolator when it has one); the baseline's is DUET's "
            "A+B, training-free. Visual kept in SFT: the logged mean of the visual tokens the LLM saw over its "
            "layers in reduced steps (stage B's measure when it runs; divprune: the kept fraction). CPU: user + system "
            "seconds of both stages' whole scripts, less sensitive than train_runtime to other jobs on the cores."]
        return t

    def duet_as_trained(self, v: str, red: float) -> str:
        if v.startswith("ds-divprune-"):
            return EvalSpec(True, "divprune", red, True).name
        return duet_eval(self.P, red, iso=v.startswith("ds-duet-")).name

    def layer_kept(self, v: str) -> str:
        runs = [self.R.by[v][s]["stages"]["sft"] for s in self.R.seeds(v)]
        vals = [r["visual_layer_avg_frac"] if r.get("visual_layer_avg_frac") is not None else r.get("visual_kept_frac")
                for r in runs]
        vals = [x for x in vals if x is not None]
        return f"{100 * statistics.fmean(vals):.1f}%" if vals else "–"

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
        if "duet" in tables:
            mds["duet"] = self.write_table(self.duet())
        return mds
