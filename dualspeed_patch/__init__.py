"""DualSpeed for LLaVA codebases: fast-slow training by visual token pruning, applied as a patch.

    import dualspeed_patch
    dualspeed_patch.apply("llava")          # or an upstream / forked LLaVA package
    ...
    dualspeed_patch.remove()
"""
from .apply import apply, is_applied, remove
from .args import DualSpeedArguments
from .context import ModeSpec, mode, pruned_inference
from .settings import configure

__all__ = ["apply", "remove", "is_applied", "DualSpeedArguments", "configure", "mode", "ModeSpec",
           "pruned_inference"]
