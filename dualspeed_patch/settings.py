"""The DualSpeedArguments of the current training process (set by the training entry via `configure`).

Only *whether* and *how* DualSpeed trains lives here; the mode of each forward is handed over explicitly
through `context.mode(...)`."""
from __future__ import annotations

_args = None


def configure(args) -> None:
    """Install DualSpeedArguments for this process (None to switch DualSpeed training off)."""
    global _args
    if args is not None:
        from .args import validate

        validate(args)
    _args = args


def get():
    return _args
