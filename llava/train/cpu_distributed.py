"""Make HF Trainer + DeepSpeed work with several ranks on a machine without CUDA.

Out of the box each CPU rank believes it is alone: accelerate enables DeepSpeed only outside CPU mode and
TrainingArguments passes no backend, so DeepSpeed then rejects the batch sizes. Creating the process group
ourselves (gloo) before TrainingArguments exists, and telling accelerate to use it, fixes that.
On a CUDA machine this does nothing.

That group, and every group created after it, honours --ddp_timeout, and `explain_collective_timeouts` turns
the resulting gloo timeout into one line naming the rank and the flag. Before, --ddp_timeout reached no group:
the world group had DeepSpeed's default (10 min) and ZeRO's gradient reduce ran on a group with torch's (30 min
for gloo), so a rank that stalled (alive, not dead) left the others waiting that long, then failing with gloo's
bare "Timed out waiting ...ms for recv operation"."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from datetime import timedelta

import torch


def _flag_value(argv, flag):
    """The value of the last `--flag V` / `--flag=V` in argv (argparse keeps the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _wants_deepspeed(argv) -> bool:
    """True when the last --deepspeed flag names a config (argparse keeps the last value)."""
    return bool(_flag_value(argv, "--deepspeed"))


def ddp_timeout_from_argv(argv) -> int:
    """--ddp_timeout in seconds, read before TrainingArguments exists (the group must be created first);
    without the flag, TrainingArguments' own default (1800 s in transformers 5)."""
    value = _flag_value(argv, "--ddp_timeout")
    if value is None:
        import transformers

        return transformers.TrainingArguments.__dataclass_fields__["ddp_timeout"].default
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ValueError(f"--ddp_timeout must be a whole number of seconds > 0, got {value!r}")
    return seconds


def _new_groups_inherit(timeout: timedelta) -> None:
    """Make process groups created without a timeout use `timeout`. torch gives such groups its own default
    (30 min for gloo), not the world group's, and DeepSpeed creates its data-parallel group (the one ZeRO's
    gradient reduce runs on) with `torch.distributed.new_group(ranks)`: without this a stall there would still
    wait 30 minutes whatever --ddp_timeout says."""
    import torch.distributed as dist

    original = getattr(dist.new_group, "_llava_original", dist.new_group)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def new_group(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)  # timeout may come by position or by name
        if bound.arguments.get("timeout") is None:
            bound.arguments["timeout"] = timeout
        return original(*bound.args, **bound.kwargs)

    new_group._llava_original = original
    dist.new_group = new_group


def maybe_setup_cpu_deepspeed(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    if torch.cuda.is_available() or not _wants_deepspeed(argv):
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "--deepspeed on a machine without CUDA needs a launcher that sets RANK/WORLD_SIZE: run with "
            "`deepspeed --num_gpus N ...` (N CPU ranks), or drop --deepspeed to train in one process.")
    global _group_timeout_s
    _group_timeout_s = ddp_timeout_from_argv(argv)
    timeout = timedelta(seconds=_group_timeout_s)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    os.environ["LLAVA_CPU_DEEPSPEED"] = "1"
    from accelerate import PartialState

    # accelerate hands the timeout to deepspeed.comm.init_distributed, which creates the world group with it
    # (DeepSpeed's own default would be 10 min). Later, TrainingArguments (use_configured_state) and
    # deepspeed.initialize find this group and create no other world group.
    _new_groups_inherit(timeout)
    PartialState(backend="gloo", timeout=timeout)
    return True


_group_timeout_s = None  # what maybe_setup_cpu_deepspeed gave the process groups, once it ran


def check_group_timeout(training_args) -> None:
    """The groups were created from argv before parsing; refuse a parsed --ddp_timeout that differs (argparse
    also accepts an abbreviation such as --ddp_time, which the pre-parse cannot see), instead of running with
    another timeout than the one asked for."""
    if _group_timeout_s is not None and int(training_args.ddp_timeout) != _group_timeout_s:
        raise ValueError(
            f"--ddp_timeout parsed as {training_args.ddp_timeout} s, but the CPU process groups were created with "
            f"{_group_timeout_s} s (read from the command line before parsing); write the flag in full: "
            f"--ddp_timeout {training_args.ddp_timeout}")


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


def end_cpu_rank_process(code: int = 0) -> None:
    """End a CPU DeepSpeed rank (the launcher's gloo test bed) right after a finished run: flush what was
    written and leave with os._exit, skipping the interpreter's teardown. Even after shutdown_distributed, that
    teardown sometimes aborts one rank in C++ ("terminate called without an active exception", exit -6), and
    the launcher then reports a finished, saved run as failed. Elsewhere (GPU ranks, a single process) this
    does nothing and the interpreter exits as usual."""
    if os.environ.get("LLAVA_CPU_DEEPSPEED") != "1":
        return
    import logging as _logging

    _logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class CollectiveTimeoutError(RuntimeError):
    """A collective waited --ddp_timeout for another rank; raised from the backend's own error."""


_TIMEOUT_WORDS = ("timed out", "timeout")


def _is_collective_timeout(exc: BaseException) -> bool:
    """A timeout of the process group (gloo: "Timed out waiting 20000ms for recv operation to complete";
    torch's store and NCCL errors: DistError subclasses), looked for along the exception chain. Other
    RuntimeErrors that mention a timeout (the DataLoader's, say) are left alone."""
    import torch.distributed as dist

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if any(w in text for w in _TIMEOUT_WORDS) and (
                isinstance(exc, getattr(dist, "DistError", ())) or "gloo" in text or "ms for " in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _rank() -> str:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return str(dist.get_rank())
    return os.environ.get("RANK", "0")


@contextlib.contextmanager
def explain_collective_timeouts(argv=None):
    """Turn a process-group timeout into one line that says what happened and which flag governs it, with the
    backend's error chained below: the raw gloo message names neither the flag nor the likely cause."""
    try:
        yield
    except Exception as e:
        if not _is_collective_timeout(e):
            raise
        argv = sys.argv[1:] if argv is None else argv
        raise CollectiveTimeoutError(
            f"rank {_rank()}: a collective timed out after --ddp_timeout={ddp_timeout_from_argv(argv)} s "
            "(another rank stalled or died); look at the other ranks' output for the cause, or raise "
            "--ddp_timeout if one rank legitimately works alone that long (saving, evaluation, a slow first "
            "step)") from e
