"""Train a LLaVA fork with DualSpeed: the fork's own arguments plus DualSpeedConfig's flags.

    deepspeed dualspeed_patch/train.py --dualspeed True --vtp_method divprune ... <the fork's usual flags>
    python -m dualspeed_patch.train --help

Our flags are parsed first; everything else is handed to the fork's `train()` untouched, so any LLaVA fork
whose `llava.train.train.train()` reads sys.argv works (ours, upstream llava-torch, ...)."""
from __future__ import annotations

import importlib
import os
import sys


def split_args(argv):
    """(DualSpeedConfig, the fork's remaining argv)."""
    from transformers import HfArgumentParser

    from dualspeed_patch.config import DualSpeedConfig

    parser = HfArgumentParser(DualSpeedConfig)
    parser.allow_abbrev = False  # a fork flag must never be taken for an abbreviation of ours
    ds_args, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    return ds_args, remaining


def _last_value(argv, flag):
    """The value of the last `--flag V` / `--flag=V` (argparse keeps the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def warn_if_resuming_a_dualspeed_run_without_it(ds_args, fork_argv) -> None:
    """With --dualspeed False the patch (and its resume check) is not installed, so compare here: resuming a
    DualSpeed checkpoint as a plain run is a change of flags worth one warning line."""
    from . import hooks

    value = _last_value(fork_argv, "--resume_from_checkpoint")
    if value is None or value.lower() in ("", "false", "none") or os.environ.get("RANK", "0") != "0":
        return
    resume = True if value.lower() in ("true", "auto", "last") else value
    folder = hooks.resume_folder(resume, _last_value(fork_argv, "--output_dir") or ".")
    if folder is not None and os.path.isfile(os.path.join(folder, hooks.CONFIG_FILENAME)):
        hooks.check_resumed_flags(ds_args, folder)


def main(argv=None, attn_implementation=None, end_process=False):
    """Train with the fork's train(); `end_process` (the script entry) then lets the fork end a CPU DeepSpeed
    rank its own way when it has one (ours: llava.train.cpu_distributed.end_cpu_rank_process)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    if wants_help:
        from transformers import HfArgumentParser

        from dualspeed_patch.config import DualSpeedConfig

        print("DualSpeed arguments (the fork's own training arguments follow):\n")
        HfArgumentParser(DualSpeedConfig).print_help()
        print("\n" + "=" * 100 + "\nThe LLaVA fork's arguments:\n")
        argv = [a for a in argv if a not in ("-h", "--help")]
    ds_args, remaining = split_args(argv)
    import dualspeed_patch

    fork = importlib.import_module(ds_args.llava_module)
    if ds_args.dualspeed:
        dualspeed_patch.apply(fork, config=ds_args)
    else:
        warn_if_resuming_a_dualspeed_run_without_it(ds_args, remaining)
    train_module = importlib.import_module(f"{fork.__name__}.train.train")
    sys.argv = [sys.argv[0]] + remaining + (["--help"] if wants_help else [])
    if attn_implementation is None:
        trainer = train_module.train()
    else:
        trainer = train_module.train(attn_implementation=attn_implementation)
    end = getattr(train_module, "end_cpu_rank_process", None)
    if end_process and callable(end):
        end()
    return trainer


if __name__ == "__main__":
    main(end_process=True)
