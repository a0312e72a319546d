"""Which mode the next multimodal merge runs in, and what it hands back: typed, per forward.

The training step enters `mode(spec)` around the forward it wants reduced; the wrapper of
`prepare_inputs_labels_for_multimodal` reads the active `StepState` and fills it in. Outside any context the
merge is the fork's own (full). Inference opts in with `pruned_inference(...)`, or process-wide through the
installation's inference spec (`python -m dualspeed_patch.run --pruned ...`).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Optional

import torch

from . import config as config_lib
from .layer_drop import LayerDropPlan, LayerDropSpec

FULL, FAST, SLOW = "full", "fast", "slow"
MODES = (FULL, FAST, SLOW)


@dataclass(frozen=True)
class ModeSpec:
    """One forward's mode: full | fast (return the reduced sequence) | slow (return the full sequence and keep
    the reduced one for the teacher). The reduction fields default to DualSpeedConfig's defaults."""
    mode: str
    method: str = config_lib.default("vtp_method")
    pruning_ratio: float = config_lib.default("pruning_ratio")
    isolator: bool = config_lib.default("use_isolator")
    seed: int = 0  # for stochastic plug-ins (random): combined with the step so reruns repeat
    options: tuple = ()  # ((keyword, value), ...) for the plug-in, among the options it declares
    stage_b: Optional[LayerDropSpec] = None  # DUET stage B in the decoder (reduced modes only)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        if self.stage_b is True:
            object.__setattr__(self, "stage_b", LayerDropSpec())
        if self.stage_b is not None and not isinstance(self.stage_b, LayerDropSpec):
            raise TypeError(f"stage_b must be a LayerDropSpec (or True for DUET's default), got {self.stage_b!r}")
        if self.mode != FULL:
            config_lib.check_reduction(self.method, self.pruning_ratio)
            from .pruners import get_reducer

            declared = get_reducer(self.method).options
            unknown = [name for name, _ in self.options if name not in declared]
            if unknown:
                raise ValueError(f"--vtp_method {self.method} takes no option {unknown}; it declares "
                                 f"{list(declared) or 'none'}")

    @classmethod
    def from_config(cls, cfg: config_lib.DualSpeedConfig, mode: str, seed: int = 0) -> "ModeSpec":
        return cls(mode, cfg.vtp_method, cfg.pruning_ratio, cfg.isolator_active, seed,
                   config_lib.plugin_options(cfg), cfg.stage_b_spec())


@dataclass
class TeacherInputs:
    """The reduced sequence a slow step's teacher reads (built from the same, detached, features)."""
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    layer_drop: Optional[LayerDropPlan] = None  # stage B's plan for the teacher's decoder


@dataclass
class StepState:
    """What the merge wrapper reports for one forward."""
    spec: ModeSpec
    teacher: Optional[TeacherInputs] = None   # slow mode only
    full_labels: Optional[torch.Tensor] = None  # the labels of the full sequence (slow mode's student)
    visual_total: int = 0  # visual tokens the full sequence had
    visual_kept: int = 0   # visual tokens left after reduction (isolator not counted)
    layer_drop: Optional[LayerDropPlan] = None  # stage B's plan of the reduced forward (its counts, once run)


_current: contextvars.ContextVar[Optional[StepState]] = contextvars.ContextVar("dualspeed_step", default=None)


def current() -> Optional[StepState]:
    return _current.get()


@contextlib.contextmanager
def mode(spec: ModeSpec):
    state = StepState(spec)
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)


def pruned_inference(method: str = config_lib.default("vtp_method"),
                     pruning_ratio: float = config_lib.default("pruning_ratio"),
                     isolator: bool = config_lib.default("use_isolator"), seed: int = 0,
                     stage_b: Optional[LayerDropSpec] = None, **options):
    """Context for generate()/forward() on reduced visual tokens (with or without the isolator); `options` go to
    the plug-in (e.g. `pruned_inference("duet", 0.9, contextual=2)`); `stage_b` adds DUET's layer-wise dropping
    (True: DUET's default schedule, or a LayerDropSpec)."""
    return mode(ModeSpec(FAST, method, pruning_ratio, isolator, seed, options, stage_b))
