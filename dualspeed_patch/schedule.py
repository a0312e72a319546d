"""Which micro-batch runs in slow mode: a pure function of (seed, global step, micro-step).

Every rank computes the same answer without talking to the others (a slow step on one rank would make
all others wait, and different forward counts can hang ZeRO-3), and a resumed run repeats the modes."""
from __future__ import annotations

import hashlib


def uniform(seed: int, global_step: int, micro_step: int) -> float:
    """A number in [0, 1) fixed by the three integers (blake2b: stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"dualspeed:{seed}:{global_step}:{micro_step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def is_slow(seed: int, global_step: int, micro_step: int, slow_mode_ratio: float) -> bool:
    if slow_mode_ratio <= 0.0:
        return False
    if slow_mode_ratio >= 1.0:
        return True
    return uniform(seed, global_step, micro_step) < slow_mode_ratio


def mode_sequence(seed: int, steps: int, grad_accum: int, slow_mode_ratio: float) -> list:
    """The modes of a whole run, 'F'/'S' per micro-batch: handy for logs and tests."""
    return ["S" if is_slow(seed, s, m, slow_mode_ratio) else "F" for s in range(steps) for m in range(grad_accum)]
