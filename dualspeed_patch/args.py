"""DualSpeedArguments: parsed by HfArgumentParser beside the fork's ModelArguments/DataArguments/TrainingArguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

PRETRAIN_MODES = ("fast", "fast_slow", "full")


@dataclass
class DualSpeedArguments:
    dualspeed: bool = field(default=False, metadata={"help": "Enable DualSpeed fast-slow training."})
    vtp_method: str = field(default="divprune", metadata={
        "help": "Visual token pruning method for fast mode: divprune | cdpruner | fastervlm | random | uniform "
                "(or one registered with dualspeed_patch.pruners.register)."})
    pruning_ratio: float = field(default=0.9, metadata={
        "help": "Fraction p of visual tokens dropped in fast mode; k = max(1, floor((1-p)*N)) are kept per image."})
    slow_mode_ratio: float = field(default=0.1, metadata={
        "help": "Probability r that a micro-batch runs in slow mode (full tokens + self-distillation)."})
    isolator_len: int = field(default=4, metadata={"help": "Number of mode-isolator vectors put before each "
                                                           "pruned image (0 disables the isolator)."})
    use_isolator: bool = field(default=True, metadata={"help": "Ablation switch: False trains without the isolator."})
    distill_alpha: float = field(default=1.0, metadata={"help": "Weight alpha of the KL term in slow mode."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature tau of the KL term."})
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
        validate(self)

    @property
    def isolator_active(self) -> bool:
        return self.use_isolator and self.isolator_len > 0


def validate(args) -> None:
    if not 0.0 <= args.pruning_ratio < 1.0:
        raise ValueError(f"--pruning_ratio must be in [0, 1), got {args.pruning_ratio}")
    if not 0.0 <= args.slow_mode_ratio <= 1.0:
        raise ValueError(f"--slow_mode_ratio must be in [0, 1], got {args.slow_mode_ratio}")
    if args.isolator_len < 0:
        raise ValueError(f"--isolator_len must be >= 0, got {args.isolator_len}")
    if args.distill_alpha < 0:
        raise ValueError(f"--distill_alpha must be >= 0, got {args.distill_alpha}")
    if args.distill_temperature <= 0:
        raise ValueError(f"--distill_temperature must be > 0, got {args.distill_temperature}")
    if args.pretrain_mode not in PRETRAIN_MODES:
        raise ValueError(f"--pretrain_mode must be one of {PRETRAIN_MODES}, got {args.pretrain_mode!r}")
    from .pruners import available

    if args.vtp_method not in available():
        raise ValueError(f"--vtp_method {args.vtp_method!r} is not registered; available: {available()}")
