"""Run any LLaVA eval/serve module with pruned visual tokens (with or without the mode isolator).

    python -m dualspeed_patch.run --pruned --vtp_method divprune --pruning_ratio 0.9 \\
        llava.eval.model_vqa_loader --model-path ./checkpoints/llava-v1.5-7b-dualspeed --question-file ...
    python -m dualspeed_patch.run llava.eval.run_llava ...            # full tokens (same as running it directly)

The isolator is read from `mode_isolator.bin` in the model folder (use --isolator_path to name another
file, --no_isolator to prune without it)."""
from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import runpy
import sys

logger = logging.getLogger("dualspeed_patch.run")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruned", action="store_true", help="prune visual tokens at inference (default: full)")
    p.add_argument("--vtp_method", default="divprune", help="pruning method (default: divprune)")
    p.add_argument("--pruning_ratio", type=float, default=0.9, help="fraction of visual tokens dropped (0.9)")
    p.add_argument("--no_isolator", action="store_true", help="prune without putting the isolator in front")
    p.add_argument("--isolator_path", default=None, help="mode_isolator.bin to use (default: <model-path>/...)")
    p.add_argument("--llava_module", default="llava", help="the LLaVA package the eval module belongs to")
    p.add_argument("--seed", type=int, default=0, help="seed for stochastic pruners (random)")
    p.add_argument("module", help="the module to run, e.g. llava.eval.model_vqa_loader")
    p.add_argument("module_args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def _wrap_loader(original, isolator_path, want_isolator):
    from . import isolator

    @functools.wraps(original)
    def load_pretrained_model(model_path, *args, **kwargs):
        tokenizer, model, image_processor, context_len = original(model_path, *args, **kwargs)
        if want_isolator:
            path = isolator_path or os.path.join(model_path, isolator.FILENAME)
            if not isolator.load(model, path):
                raise FileNotFoundError(f"{path} not found: pruned inference with the isolator needs the "
                                        "mode_isolator.bin saved by DualSpeed training (or pass --no_isolator)")
            isolator.get(model).to(device=model.device, dtype=model.dtype)
        return tokenizer, model, image_processor, context_len

    return load_pretrained_model


def configure_inference(args):
    """Apply the patch and make every merge of this process pruned as asked. Returns the fork module."""
    import dualspeed_patch
    from dualspeed_patch import context
    from dualspeed_patch.args import validate

    fork = importlib.import_module(args.llava_module)
    if not args.pruned:
        return fork
    if not 0.0 <= args.pruning_ratio < 1.0:
        raise SystemExit(f"--pruning_ratio must be in [0, 1), got {args.pruning_ratio}")
    from dualspeed_patch.pruners import available

    if args.vtp_method not in available():
        raise SystemExit(f"--vtp_method {args.vtp_method!r} unknown; available: {available()}")
    dualspeed_patch.apply(fork, training=False)
    builder = importlib.import_module(f"{fork.__name__}.model.builder")
    builder.load_pretrained_model = _wrap_loader(builder.load_pretrained_model, args.isolator_path,
                                                 not args.no_isolator)
    context.set_default(context.ModeSpec(context.FAST, args.vtp_method, args.pruning_ratio, not args.no_isolator,
                                         args.seed))
    logger.warning("Pruned inference: %s, ratio %.2f, isolator %s", args.vtp_method, args.pruning_ratio,
                   "off" if args.no_isolator else "on")
    return fork


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_inference(args)
    module_args = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args
    sys.argv = [args.module] + module_args
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
