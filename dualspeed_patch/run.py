"""Run any LLaVA eval/serve module with pruned visual tokens (with or without the mode isolator).

    python -m dualspeed_patch.run --pruned --vtp_method divprune --pruning_ratio 0.9 \\
        llava.eval.model_vqa_loader --model-path ./checkpoints/llava-v1.5-7b-dualspeed --question-file ...
    python -m dualspeed_patch.run llava.eval.run_llava ...            # full tokens (same as running it directly)

The isolator is read from `mode_isolator.bin` in the model folder (use --isolator_path to name another
file, --no_isolator to prune without it)."""
from __future__ import annotations

import argparse
import importlib
import logging
import runpy
import sys

from .config import (STAGE_B_FIELDS, check_plugin_options, default, help_of, plugin_option_fields, plugin_options,
                     stage_b_spec)

logger = logging.getLogger("dualspeed_patch.run")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruned", action="store_true", help="prune visual tokens at inference (default: full)")
    p.add_argument("--vtp_method", default=default("vtp_method"),
                   help=f"{help_of('vtp_method')} (default: %(default)s)")
    p.add_argument("--pruning_ratio", type=float, default=default("pruning_ratio"),
                   help="fraction of visual tokens dropped (default: %(default)s)")
    p.add_argument("--no_isolator", action="store_true", help="prune without putting the isolator in front")
    p.add_argument("--isolator_path", default=None, help="mode_isolator.bin to use (default: <model-path>/...)")
    for f in plugin_option_fields():
        p.add_argument(f"--{f.name}", type=int, default=f.default, help=f"{f.metadata['help']} (default: %(default)s)")
    p.add_argument("--duet_stage_b", action="store_true", help=help_of("duet_stage_b"))
    p.add_argument("--duet_stage_b_layers", default=None, help=help_of("duet_stage_b_layers"))
    p.add_argument("--duet_stage_b_ratios", default=None, help=help_of("duet_stage_b_ratios"))
    p.add_argument("--llava_module", default=default("llava_module"),
                   help="the LLaVA package the eval module belongs to (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for stochastic pruners (random)")
    p.add_argument("module", help="the module to run, e.g. llava.eval.model_vqa_loader")
    p.add_argument("module_args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def configure_inference(args):
    """Apply the patch and make every merge of this process pruned as asked. Returns the fork module."""
    import dualspeed_patch
    from dualspeed_patch import context

    fork = importlib.import_module(args.llava_module)
    if not args.pruned:
        given = [flag for flag, value in _reduction_flags(args) if value != _default_of(flag)]
        if given:
            raise SystemExit(f"{', '.join('--' + g for g in given)} given without --pruned: full inference would "
                             "ignore them; add --pruned, or drop them")
        return fork
    try:  # the same validation as training (DualSpeedConfig)
        check_plugin_options(args)
        spec = context.ModeSpec(context.FAST, args.vtp_method, args.pruning_ratio, not args.no_isolator, args.seed,
                                plugin_options(args), stage_b_spec(args))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    inst = dualspeed_patch.apply(fork, training=False)
    if not any(p.endswith("load_pretrained_model") for p in inst.patched) and not args.no_isolator:
        raise SystemExit(f"{fork.__name__} has no model.builder.load_pretrained_model to load the isolator "
                         "through; pass --no_isolator or load mode_isolator.bin yourself")
    inst.set_inference(spec, args.isolator_path)
    logger.warning("Pruned inference: %s, ratio %.2f, isolator %s%s%s", args.vtp_method, args.pruning_ratio,
                   "off" if args.no_isolator else "on",
                   "".join(f", {name}={value}" for name, value in spec.options),
                   "" if spec.stage_b is None else f", DUET stage B {spec.stage_b}")
    return fork


def check_lmms_eval_plugin(args, module_args):
    """`lmms_eval --model llava_dualspeed` under the runner: the plug-in must be visible to that lmms-eval, and
    pruning must be asked for in one place only (the runner's flags or the plug-in's model_args)."""
    from .lmms_eval_plugin import MODEL_ID, PluginUnavailable, check

    if args.module.split(".")[0] != "lmms_eval" or not any(
            a == MODEL_ID or a == f"--model={MODEL_ID}" for a in module_args):
        return
    if args.pruned:
        raise SystemExit(f"--pruned with lmms-eval's --model {MODEL_ID}: the plug-in prunes by its own model_args "
                         "(vtp_method=..., pruning_ratio=..., isolator=...); drop --pruned, or use --model llava")
    try:
        check()
    except PluginUnavailable as e:
        raise SystemExit(f"error: {e}") from None


def _reduction_flags(args):
    names = (["vtp_method", "pruning_ratio", "no_isolator", "isolator_path"] + list(STAGE_B_FIELDS)
             + [f.name for f in plugin_option_fields()])
    return [(name, getattr(args, name)) for name in names]


def _default_of(flag):
    return build_parser().get_default(flag)


def main(argv=None):
    args = build_parser().parse_args(argv)
    module_args = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args
    check_lmms_eval_plugin(args, module_args)
    configure_inference(args)
    sys.argv = [args.module] + module_args
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
