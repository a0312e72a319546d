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
    llava_module: str = field(default="llava", metadata={
        "help": "The LLaVA package to patch and train with (ours, upstream llava-torch, or another fork)."})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the flag and the value; NaN and infinities never pass (`x >= 0` is False for
        NaN, so every bound is written as a positive test)."""
        check_finite_floats(self)
        check_reduction(self.vtp_method, self.pruning_ratio)
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

    @property
    def isolator_active(self) -> bool:
        return self.use_isolator and self.isolator_len > 0


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
