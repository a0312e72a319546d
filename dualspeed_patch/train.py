"""Train a LLaVA fork with DualSpeed: the fork's own arguments plus DualSpeedConfig's flags.

    deepspeed dualspeed_patch/train.py --dualspeed True --vtp_method divprune ... <the fork's usual flags>
    python -m dualspeed_patch.train --help

Our flags are parsed first; everything else is handed to the fork's `train()` untouched, so any LLaVA fork
whose `llava.train.train.train()` reads sys.argv works (ours, upstream llava-torch, ...)."""
from __future__ import annotations

import importlib
import sys


def split_args(argv):
    """(DualSpeedConfig, the fork's remaining argv)."""
    from transformers import HfArgumentParser

    from dualspeed_patch.config import DualSpeedConfig

    parser = HfArgumentParser(DualSpeedConfig)
    parser.allow_abbrev = False  # a fork flag must never be taken for an abbreviation of ours
    ds_args, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    return ds_args, remaining


def main(argv=None, attn_implementation=None):
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
    train_module = importlib.import_module(f"{fork.__name__}.train.train")
    sys.argv = [sys.argv[0]] + remaining + (["--help"] if wants_help else [])
    if attn_implementation is None:
        return train_module.train()
    return train_module.train(attn_implementation=attn_implementation)


if __name__ == "__main__":
    main()
