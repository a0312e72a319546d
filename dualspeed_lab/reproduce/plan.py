"""The experiment plan: training recipes, the evaluations each needs, and the cells a preset runs.

    from dualspeed_lab.reproduce.plan import plan_cells
    cells, alias = plan_cells(presets.get("full"))   # name -> Cell, and every table's recipe name -> cell name

A Stage is one training stage (plain LLaVA, or DualSpeed with its flags); a Cell is a recipe (pretraining
stage + SFT stage) with its evaluations (EvalSpec: normal, or pruned with a pruner, a ratio and with or
without the isolator). variant_catalog lists every recipe any table can ask for, table_variants the recipes
of one table; plan_cells merges recipes whose training is identical into one cell.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from dualspeed_lab.reproduce.presets import ALL_TABLES, Preset


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
        # DUET's flags (stage B's schedule, stage A's counts) change the run; appended only when given, so the
        # keys of every earlier recipe stay what they were.
        duet = tuple((k, str(v)) for k, v in self.flags if k.startswith("duet_"))
        if kind == "pretrain":  # --pretrain_mode fast: every step pruned, r and distillation unused
            return ("dualspeed",) + base + (str(self.get("pretrain_mode", "fast")),) + duet
        r = float(self.get("slow_mode_ratio"))
        distill = bool(self.get("use_distillation", True)) if r > 0 else True
        return ("dualspeed",) + base + (r, distill) + duet

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
    stage_b: Optional[Tuple[str, str]] = None  # DUET stage B at inference: (layers, ratios), e.g. ("1,2", "0.5,0.0")

    @property
    def name(self) -> str:
        if not self.pruned:
            return "normal"
        name = f"pruned-{self.method}-p{self.ratio:g}-{'iso' if self.isolator else 'noiso'}"
        if self.stage_b:
            name += "-b" + "r".join(x.replace(",", "_") for x in self.stage_b)
        return name

    @property
    def label(self) -> str:
        if not self.pruned:
            return "normal"
        text = f"pruned {self.method} p={self.ratio:g} " + ("+ isolator" if self.isolator else "no isolator")
        return text + (f" + stage B after {self.stage_b[0]} keeping {self.stage_b[1]}" if self.stage_b else "")

    def identity(self) -> dict:
        """What the evaluation's cache key hashes (stage_b only when set: earlier keys stay valid)."""
        out = asdict(self)
        if self.stage_b is None:
            del out["stage_b"]
        return out


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


def duet_layer_factor(P: Preset) -> float:
    """Stage B's layer average of the kept fraction: N0 visual tokens enter the LLM, N0 * factor is their
    average over its layers (DUET's "avg tokens")."""
    from dualspeed_patch.layer_drop import LayerDropSpec, parse_list

    layers = parse_list("duet_stage_b_layers", P.duet_stage_b_layers, int)
    ratios = parse_list("duet_stage_b_ratios", P.duet_stage_b_ratios, float)
    layers = LayerDropSpec(layers, ratios).resolve(P.duet_llm_layers)
    bounds = (0,) + layers + (P.duet_llm_layers,)
    alive = (1.0,) + ratios
    return sum(a * (end - start) for a, start, end in zip(alive, bounds, bounds[1:])) / P.duet_llm_layers


def duet_stage_a_ratio(P: Preset, reduction: float) -> float:
    """The --pruning_ratio of stage A that, with stage B's schedule, gives `reduction` of the visual tokens on
    average over the LLM's layers: k = round(N (1 - reduction) / factor) tokens per image after stage A."""
    n = P.duet_visual_tokens
    k = round(n * (1 - reduction) / duet_layer_factor(P))
    if not 1 <= k <= n:
        raise ValueError(f"duet: an average reduction of {reduction:g} needs {k} tokens after stage A (of {n}) "
                         f"with stage B after {P.duet_stage_b_layers} keeping {P.duet_stage_b_ratios}")
    return 1 - k / n  # exact enough that pruners.budget(n, ratio) == k


def _stage_b(P: Preset) -> Tuple[Tuple[str, object], ...]:
    return (("duet_stage_b", True), ("duet_stage_b_layers", P.duet_stage_b_layers),
            ("duet_stage_b_ratios", P.duet_stage_b_ratios))


def _duet(P: Preset, kind: str, reduction: float, iso=True, r=None) -> Stage:
    """DUET's stages A and B as the reduced mode of a stage, at an average reduction over the LLM's layers."""
    base = _ds(P, kind, method="duet", p=duet_stage_a_ratio(P, reduction), r=r, iso=iso)
    return Stage(True, base.flags + _stage_b(P))


def duet_eval(P: Preset, reduction: float, iso: bool) -> EvalSpec:
    return EvalSpec(True, "duet", duet_stage_a_ratio(P, reduction), iso,
                    (P.duet_stage_b_layers, P.duet_stage_b_ratios))


def fmt_num(x) -> str:
    return f"{x:g}"


_fmt_num = fmt_num


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
    # The "duet" table, per average reduction R: DUET trained as its paper does (A+B on every step, no
    # isolator, no slow mode), DualSpeed with divprune at p = R, and DualSpeed with DUET's A+B as the fast mode
    if "duet" in P.tables:
        for red in P.duet_reductions:
            tag = _fmt_num(red)
            cat[f"duet-trained-{tag}"] = (f"DUET trained, {100 * red:.0f}%",
                                          _duet(P, "pretrain", red, iso=False), _duet(P, "sft", red, iso=False, r=0.0))
            cat[f"ds-divprune-{tag}"] = (f"DualSpeed (divprune), {100 * red:.0f}%", _ds(P, "pretrain", "divprune", p=red),
                                         _ds(P, "sft", "divprune", p=red))
            cat[f"ds-duet-{tag}"] = (f"DualSpeed (DUET A+B), {100 * red:.0f}%", _duet(P, "pretrain", red),
                                     _duet(P, "sft", red))
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
    if table == "duet":
        return ["baseline"] + [f"{kind}-{_fmt_num(red)}" for red in P.duet_reductions
                               for kind in ("duet-trained", "ds-divprune", "ds-duet")]
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
    paper = [v for t in P.tables if t != "duet" for v in table_variants(P, t)]
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
    # Evaluations: every cell gets normal, and a cell of the paper's tables pruned (with the isolator when it has
    # one, and without); the duet table's own cells get only the evaluations that table reads.
    for cell in cells.values():
        cell.add_eval(NORMAL)
        if not any(a in paper for a in [cell.name] + cell.aliases):
            continue
        if cell.has_isolator:
            cell.add_eval(pruned_eval(P, True))
        cell.add_eval(pruned_eval(P, False, iso=False))
    if "duet" in P.tables:
        for red in P.duet_reductions:
            tag = _fmt_num(red)
            cells[alias["baseline"]].add_eval(duet_eval(P, red, iso=False))   # DUET at inference only
            cells[alias[f"duet-trained-{tag}"]].add_eval(duet_eval(P, red, iso=False))
            cells[alias[f"ds-divprune-{tag}"]].add_eval(EvalSpec(True, "divprune", red, True))
            cells[alias[f"ds-duet-{tag}"]].add_eval(duet_eval(P, red, iso=True))
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
