"""Make HF Trainer + DeepSpeed work with several ranks on a machine without CUDA.

Out of the box each CPU rank believes it is alone: accelerate enables DeepSpeed only outside CPU mode and
TrainingArguments passes no backend, so DeepSpeed then rejects the batch sizes. Creating the process group
ourselves (gloo) before TrainingArguments exists, and telling accelerate to use it, fixes that.
On a CUDA machine this does nothing."""
from __future__ import annotations

import os
import sys

import torch


def _wants_deepspeed(argv) -> bool:
    """True when the last --deepspeed flag names a config (argparse keeps the last value)."""
    value = None
    for i, a in enumerate(argv):
        if a == "--deepspeed":
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif a.startswith("--deepspeed="):
            value = a.split("=", 1)[1]
    return bool(value)


def maybe_setup_cpu_deepspeed(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    if torch.cuda.is_available() or not _wants_deepspeed(argv):
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "--deepspeed on a machine without CUDA needs a launcher that sets RANK/WORLD_SIZE: run with "
            "`deepspeed --num_gpus N ...` (N CPU ranks), or drop --deepspeed to train in one process.")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    os.environ["LLAVA_CPU_DEEPSPEED"] = "1"
    from accelerate import PartialState

    PartialState(backend="gloo")
    return True


def shutdown_distributed() -> None:
    """Tear the process group down before the interpreter exits. Left to interpreter teardown, a gloo rank
    sometimes aborts ("terminate called without an active exception", exit -6) after a finished run, which
    the deepspeed launcher reports as a failure; the barrier keeps one rank from leaving while another still
    saves."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
