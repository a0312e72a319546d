"""`--model llava_dualspeed` for lmms-eval: lmms-eval's own `llava` model (which imports this environment's
`llava` package) with DualSpeed's pruned inference switched on for every forward of the run.

Its model_args are the `llava` model's plus:
    pruned        true (default) | false: false evaluates full sequences, the same as `--model llava`
    vtp_method    the reduction plug-in (default: DualSpeedConfig's, divprune)
    pruning_ratio fraction of visual tokens dropped, in [0, 1) (default: DualSpeedConfig's, 0.9)
    isolator      true (default) | false: put the mode isolator in front of the kept tokens
    isolator_path the mode_isolator.bin to use (default: <pretrained>/mode_isolator.bin)
    seed          seed of stochastic plug-ins (random), default 0
    duet_dominant, duet_contextual, duet_cluster_width   the duet plug-in's options (as the training flags)

Imported only by lmms-eval (through the path in lmms_eval_plugin.py), never by the rest of the package."""
from __future__ import annotations

import logging
import types

from lmms_eval.models.simple.llava import Llava

import dualspeed_patch
from dualspeed_patch import context, hooks
from dualspeed_patch.config import (check_plugin_options, default, plugin_option_fields, plugin_options,
                                    stage_b_spec)
from dualspeed_patch.lmms_eval_plugin import MODEL_ID

logger = logging.getLogger(__name__)
# The package lmms-eval's llava model imports (`from llava.model.builder import load_pretrained_model`).
LLAVA_MODULE = "llava"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _switch(name: str, value) -> bool:
    """lmms-eval turns 'true'/'false' into booleans and '1'/'0' into ints; anything else is a typo, and a
    typo must not quietly mean 'on'."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--model {MODEL_ID}: {name}={value!r} is not a switch; use {name}=true or {name}=false")


class LlavaDualSpeed(Llava):
    """lmms-eval's `llava` model, evaluated with pruned visual tokens (see the module docstring)."""

    def __init__(self, pretrained: str = "liuhaotian/llava-v1.5-7b", pruned=True,
                 vtp_method: str = default("vtp_method"), pruning_ratio: float = default("pruning_ratio"),
                 isolator=True, isolator_path=None, seed: int = 0, **kwargs) -> None:
        pruned, isolator = _switch("pruned", pruned), _switch("isolator", isolator)
        settings = types.SimpleNamespace(vtp_method=str(vtp_method), pruning_ratio=float(pruning_ratio), **{
            f.name: kwargs.pop(f.name, f.default) for f in plugin_option_fields()})
        settings.duet_stage_b = _switch("duet_stage_b", kwargs.pop("duet_stage_b", False))
        for name in ("duet_stage_b_layers", "duet_stage_b_ratios"):  # '16;24': model_args split on commas
            setattr(settings, name, kwargs.pop(name, None))
        spec = None
        if not pruned and settings.duet_stage_b:
            raise ValueError(f"--model {MODEL_ID}: duet_stage_b=true with pruned=false would do nothing (stage B "
                             "runs in reduced forwards); set pruned=true")
        if pruned:
            try:  # the checks training and dualspeed_patch.run apply to the same settings
                check_plugin_options(settings)
                spec = context.ModeSpec(context.FAST, settings.vtp_method, settings.pruning_ratio, isolator,
                                        int(seed), plugin_options(settings), stage_b_spec(settings))
            except ValueError as e:
                raise ValueError(f"--model {MODEL_ID}: {e}") from None
        inst = dualspeed_patch.apply(LLAVA_MODULE, training=False)
        if inst.inference_spec is not None:
            raise RuntimeError(f"--model {MODEL_ID}: pruned inference is already set for this process "
                               f"({inst.inference_spec}), e.g. by `dualspeed_patch.run --pruned`; set it in one "
                               "place: the runner with --model llava, or this model's arguments")
        inst.set_inference(spec, isolator_path)
        super().__init__(pretrained=pretrained, **kwargs)
        # lmms-eval's module bound load_pretrained_model before the patch existed, so its loader may not have
        # read the isolator: read it here (the same file; reading it twice is harmless).
        path = hooks.load_inference_isolator(self.model, pretrained, inst)
        if spec is None:
            logger.warning("%s: full visual tokens (pruned=false)", MODEL_ID)
        else:
            logger.warning("%s: pruned inference, %s at ratio %.2f, isolator %s%s", MODEL_ID, spec.method,
                           spec.pruning_ratio, f"on ({path})" if path else "off",
                           "" if spec.stage_b is None else f", DUET stage B {spec.stage_b}")
