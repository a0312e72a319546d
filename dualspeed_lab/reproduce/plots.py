"""The PNG figures of the report (matplotlib, imported only when a figure is drawn).

ReportPlots is a mixin of Report (report.py): its png_* methods draw from the report's results (self.R,
self.P, self.chance, ...) and each writes one file, e.g. `report.png_table2("table2.png")`. Report.write_table
calls them and skips the figure, with a message, when matplotlib is missing.
"""
from __future__ import annotations

import math
from typing import List, Tuple

from dualspeed_lab.reproduce.plan import table_variants, variant_name
from dualspeed_lab.reproduce.stats import Stat


class ReportPlots:
    """Accuracy bars, stacked training-time bars and the sweeps of Figures 5 and 6."""

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
