"""The token-reduction core for LLaVA codebases, installed as reversible patches (DualSpeed fast-slow training
by visual token reduction, with pluggable selection and merging methods).

    import dualspeed_patch
    inst = dualspeed_patch.apply("llava", config=dualspeed_patch.DualSpeedConfig(dualspeed=True))
    ...                                   # the fork's own train(): fast / slow steps, isolator saved
    with dualspeed_patch.pruned_inference("divprune", 0.9):
        model.generate(...)
    dualspeed_patch.remove()
"""
from .config import DualSpeedArguments, DualSpeedConfig
from .context import FAST, FULL, SLOW, ModeSpec, StepState, mode, pruned_inference
from .install import Installation, apply, configure, installation, is_applied, remove
from .step import StepResult, fast_step, slow_step

__all__ = ["apply", "remove", "is_applied", "installation", "configure", "Installation", "DualSpeedConfig",
           "DualSpeedArguments", "ModeSpec", "StepState", "mode", "pruned_inference", "fast_step", "slow_step",
           "StepResult", "FAST", "SLOW", "FULL"]
