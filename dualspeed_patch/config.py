"""DualSpeedConfig: the one place where the core's options, their defaults, `--help` and validation live.

    cfg = DualSpeedConfig(dualspeed=True, vtp_method="cdpruner", pruning_ratio=0.9)
    dualspeed_patch.apply("llava", config=cfg)

It is also what `HfArgumentParser` parses beside the fork's ModelArguments/DataArguments/TrainingArguments
(`python -m dualspeed_patch.train --help`); `DualSpeedArguments` is the same class under its flag-parsing
name. Per-forward modes (`context.ModeSpec`) and the inference runner's flags are derived from it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

PRETRAIN_MODES = ("fast", "fast_slow", "full")


@dataclass
class DualSpeedConfig:
    dualspeed: bool = field(default=False, metadata={"help": "Enable DualSpeed fast-slow training."})
    vtp_method: str = field(default="divprune", metadata={
        "help": "Visual token reduction for fast mode: divprune | cdpruner | fastervlm | random | uniform | duet "
                "(DUET-VLM stage A) (or a plug-in registered with dualspeed_patch.pruners.register)."})
    pruning_ratio: float = field(default=0.9, metadata={
        "help": "Fraction p of visual tokens dropped in fast mode; k = max(1, floor((1-p)*N)) are kept per image."})
    slow_mode_ratio: float = field(default=0.1, metadata={
        "help": "Probability r that a micro-batch runs in slow mode (full tokens + self-distillation)."})
    isolator_len: int = field(default=4, metadata={"help": "Number of mode-isolator vectors put before each "
                                                           "pruned image (0 disables the isolator)."})
    use_isolator: bool = field(default=True, metadata={"help": "Ablation switch: False trains without the isolator."})
    distill_alpha: float = field(default=1.0, metadata={
        "help": "Weight alpha of the KL term in slow mode; must be > 0 while --use_distillation is True "
                "(switch distillation off with --use_distillation False, not with alpha 0)."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature tau of the KL term (> 0)."})
    use_distillation: bool = field(default=True, metadata={
        "help": "Ablation switch: False makes slow mode plain cross-entropy on the full sequence."})
    pretrain_mode: str = field(default="fast", metadata={
        "help": "Behaviour while the LLM is frozen (projector pretraining): fast = pruned on every step (the "
                "paper), fast_slow = the fast/slow schedule as in fine-tuning, full = no pruning in this stage."})
    slow_mode_seed: Optional[int] = field(default=None, metadata={
        "help": "Seed of the fast/slow schedule (default: --seed). Every rank derives the same modes from it."})
    mode_log: Optional[str] = field(default=None, metadata={
        "help": "Append the mode of every micro-batch of this rank to this file as JSON lines ('{rank}' in the "
                "path is replaced by the rank), to check that ranks agree."})
    # Options of one plug-in (PLUGIN_OPTIONS says whose, and under which keyword they reach its function through
    # ModeSpec.options); setting one for another --vtp_method is an error, never a no-op.
    duet_dominant: Optional[int] = field(default=None, metadata={
        "help": "duet: dominant tokens per image, the [CLS] token included (DUET-LLaVA: 300). Set, the budget is "
                "counts: dominant + contextual per image instead of --pruning_ratio (leave that at its default)."})
    duet_contextual: Optional[int] = field(default=None, metadata={
        "help": "duet: contextual (merged) tokens per image (DUET-LLaVA: 7). Default: DUET's share, 7 of every "
                "307 tokens of the budget."})
    duet_cluster_width: int = field(default=4, metadata={
        "help": "duet: the best width x contextual remaining patches are pre-selected to merge (DUET: 4)."})
    # DUET-VLM stage B: not a plug-in option, it applies after any --vtp_method (stage A is --vtp_method duet).
    duet_stage_b: bool = field(default=False, metadata={
        "help": "DUET-VLM stage B in reduced forwards: after the configured decoder layers, keep the visual tokens "
                "the text queries attend to most and continue with the shorter sequence (default schedule: after "
                "1/2 and 3/4 of the depth, keeping 0.5 and 0.0 of the visual tokens that entered the LLM)."})
    duet_stage_b_layers: Optional[str] = field(default=None, metadata={
        "help": "duet stage B: comma-separated decoder layers after which to drop, strictly increasing (DUET on "
                "32 layers: 16,24; default: the same fractions of this LLM's depth)."})
    duet_stage_b_ratios: Optional[str] = field(default=None, metadata={
        "help": "duet stage B: comma-separated keep ratios, one per drop layer, in [0, 1] and not increasing, of "
                "each sample's visual tokens at the LLM's input (default: 0.5,0.0)."})
    llava_module: str = field(default="llava", metadata={
        "help": "The LLaVA package to patch and train with (ours, upstream llava-torch, or another fork)."})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the flag and the value; NaN and infinities never pass (`x >= 0` is False for
        NaN, so every bound is written as a positive test)."""
        check_finite_floats(self)
        check_reduction(self.vtp_method, self.pruning_ratio)
        check_plugin_options(self)
        self.stage_b_spec()
        if not 0.0 <= self.slow_mode_ratio <= 1.0:
            raise ValueError(f"--slow_mode_ratio must be in [0, 1], got {self.slow_mode_ratio}")
        if self.isolator_len < 0:
            raise ValueError(f"--isolator_len must be >= 0, got {self.isolator_len}")
        self._check_distillation()
        if self.pretrain_mode not in PRETRAIN_MODES:
            raise ValueError(f"--pretrain_mode must be one of {PRETRAIN_MODES}, got {self.pretrain_mode!r}")

    def _check_distillation(self) -> None:
        # alpha 0 used to switch the KL term off silently while --use_distillation said True, so a typo or a
        # sweep's edge value gave an ablation nobody asked for; switching it off is now only the explicit flag.
        off = "; to train without distillation pass --use_distillation False" if self.use_distillation else ""
        if self.use_distillation and not self.distill_alpha > 0:
            raise ValueError(f"--distill_alpha must be > 0 while distillation is on, got {self.distill_alpha}{off}")
        if not self.distill_alpha >= 0:
            raise ValueError(f"--distill_alpha must be >= 0, got {self.distill_alpha}")
        if not self.distill_temperature > 0:  # the logits are divided by it
            raise ValueError(f"--distill_temperature must be > 0, got {self.distill_temperature}{off}")

    def stage_b_spec(self):
        """The LayerDropSpec of --duet_stage_b (None when off)."""
        return stage_b_spec(self)

    @property
    def isolator_active(self) -> bool:
        return self.use_isolator and self.isolator_len > 0


# field -> (plug-in, keyword of its function). Kept out of the fields' metadata: HfArgumentParser passes
# metadata to argparse as keyword arguments.
PLUGIN_OPTIONS = {"duet_dominant": ("duet", "dominant"), "duet_contextual": ("duet", "contextual"),
                  "duet_cluster_width": ("duet", "cluster_width")}

# The flag-parsing name used by the training entry and by earlier releases.
DualSpeedArguments = DualSpeedConfig


def check_reduction(method: str, pruning_ratio: float) -> None:
    """The checks every reduced forward needs, training or inference."""
    check_finite("pruning_ratio", pruning_ratio)
    if not 0.0 <= pruning_ratio < 1.0:
        raise ValueError(f"--pruning_ratio must be in [0, 1), got {pruning_ratio}")
    from .pruners import available

    if not isinstance(method, str) or method.strip().lower() not in available():
        raise ValueError(f"--vtp_method {method!r} is not registered; available: {available()}")


def plugin_option_fields(method: Optional[str] = None) -> list:
    """The DualSpeedConfig fields that are options of a plug-in (of `method` only, when given)."""
    return [f for f in dataclasses.fields(DualSpeedConfig) if f.name in PLUGIN_OPTIONS
            and (method is None or PLUGIN_OPTIONS[f.name][0] == method.strip().lower())]


def plugin_options(obj) -> tuple:
    """((keyword, value), ...) of the options of obj.vtp_method's plug-in that are set (not None), for
    ModeSpec.options; `obj` is a DualSpeedConfig or anything with the same attribute names."""
    return tuple((PLUGIN_OPTIONS[f.name][1], getattr(obj, f.name)) for f in plugin_option_fields(obj.vtp_method)
                 if getattr(obj, f.name) is not None)


def check_plugin_options(obj) -> None:
    """An option set for another plug-in would do nothing; counts must be counts; a budget is given once."""
    method = obj.vtp_method.strip().lower()
    for f in plugin_option_fields():
        value = getattr(obj, f.name)
        if value == f.default:
            continue
        if PLUGIN_OPTIONS[f.name][0] != method:
            raise ValueError(f"--{f.name} is an option of --vtp_method {PLUGIN_OPTIONS[f.name][0]}, not of "
                             f"{obj.vtp_method!r}: it would change nothing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"--{f.name} must be an integer, got {value!r}")
    if method != "duet":
        return
    for name, low in (("duet_dominant", 1), ("duet_contextual", 0), ("duet_cluster_width", 1)):
        value = getattr(obj, name)
        if value is not None and value < low:
            raise ValueError(f"--{name} must be >= {low}, got {value}")
    if obj.duet_dominant is not None and obj.pruning_ratio != default("pruning_ratio"):
        raise ValueError(f"--duet_dominant {obj.duet_dominant} gives the budget as counts, and --pruning_ratio "
                         f"{obj.pruning_ratio} gives it as a ratio: give one of them")


STAGE_B_FIELDS = ("duet_stage_b", "duet_stage_b_layers", "duet_stage_b_ratios")


def stage_b_spec(obj):
    """The LayerDropSpec that obj's --duet_stage_b* settings ask for (None when stage B is off); `obj` is a
    DualSpeedConfig or anything with the same attribute names. A schedule given without the switch is an
    error: it would change nothing."""
    from .layer_drop import DEFAULT_RATIOS, LayerDropSpec, parse_list

    layers = parse_list("duet_stage_b_layers", getattr(obj, "duet_stage_b_layers", None), int)
    ratios = parse_list("duet_stage_b_ratios", getattr(obj, "duet_stage_b_ratios", None), float)
    if not getattr(obj, "duet_stage_b", False):
        if layers is not None or ratios is not None:
            raise ValueError("--duet_stage_b_layers / --duet_stage_b_ratios give stage B's schedule, but stage B is "
                             "off: add --duet_stage_b True")
        return None
    return LayerDropSpec(layers, ratios if ratios is not None else DEFAULT_RATIOS)


def check_finite(flag: str, value) -> None:
    """NaN or an infinity in a float flag is always a typo or a broken sweep, never a setting: NaN fails every
    comparison, so a range check written the wrong way round would let it through and train on it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"--{flag} must be a finite number, got {value}")


def check_finite_floats(obj) -> None:
    """check_finite on every field of a dataclass that holds a float, so a new float flag is covered without
    being listed anywhere."""
    for f in dataclasses.fields(obj):
        check_finite(f.name, getattr(obj, f.name))


def default(name: str):
    """The declared default of one option (used by ModeSpec and the inference runner, so none is retyped)."""
    for f in dataclasses.fields(DualSpeedConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


def help_of(name: str) -> str:
    for f in dataclasses.fields(DualSpeedConfig):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)
