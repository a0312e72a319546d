"""Which mode the next multimodal merge runs in, handed over explicitly (not a global training flag).

`compute_loss` enters `mode(...)` around the forward it wants pruned; the wrapper of
prepare_inputs_labels_for_multimodal reads it. Outside any context the merge is the fork's own (full).
Pruned inference opts in with `pruned_inference(...)`, or process-wide through `set_default` (run.py)."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Optional

FULL, FAST, SLOW = "full", "fast", "slow"


@dataclass(frozen=True)
class ModeSpec:
    mode: str  # full | fast (return pruned) | slow (return full, stash pruned for the teacher)
    method: str = "divprune"
    pruning_ratio: float = 0.9
    isolator: bool = True
    seed: int = 0  # for stochastic pruners (random): combined with the step so reruns repeat


@dataclass
class ModeState:
    spec: ModeSpec
    pruned: Optional[tuple] = None  # slow mode: (position_ids, attention_mask, inputs_embeds, labels) for the teacher
    visual_total: int = 0  # visual tokens the full sequence had
    visual_kept: int = 0  # visual tokens left after pruning (isolator not counted)
    extras: dict = field(default_factory=dict)


_current: contextvars.ContextVar[Optional[ModeState]] = contextvars.ContextVar("dualspeed_mode", default=None)
_default: Optional[ModeSpec] = None


def current() -> Optional[ModeState]:
    state = _current.get()
    if state is None and _default is not None:
        return ModeState(_default)
    return state


@contextlib.contextmanager
def mode(spec: ModeSpec):
    state = ModeState(spec)
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)


def pruned_inference(method="divprune", pruning_ratio=0.9, isolator=True, seed=0):
    """Context for generate()/forward() on pruned visual tokens (with or without the isolator)."""
    return mode(ModeSpec(FAST, method, pruning_ratio, isolator, seed))


def set_default(spec: Optional[ModeSpec]) -> None:
    """Process-wide mode when no context is active; used by the pruned-inference runner only."""
    global _default
    _default = spec
