"""Patches on the fork's LLaVATrainer: the fast/slow `compute_loss`, plus the small hooks that keep the isolator
trained (optimizer group), saved (checkpoints, final output) and the loss components logged."""
from __future__ import annotations

import functools
import json
import logging
import os

import torch

from . import context, schedule, settings
from . import isolator as isolator_lib
from .distill import slow_mode_loss

logger = logging.getLogger(__name__)


def _active(model=None):
    args = settings.get()
    if args is None or not args.dualspeed:
        return None
    if model is not None and not model.training:
        return None
    return args


def _llm_frozen(trainer, model) -> bool:
    cached = trainer.__dict__.get("_dualspeed_llm_frozen")
    if cached is None:
        cached = not any(p.requires_grad for n, p in model.named_parameters()
                         if ".layers." in n and "vision_tower" not in n)
        trainer.__dict__["_dualspeed_llm_frozen"] = cached
    return cached


def choose_mode(trainer, model, args) -> tuple:
    """(mode, seed for stochastic pruners) of this micro-batch; identical on every rank."""
    step = int(trainer.state.global_step)
    tracker = trainer.__dict__.setdefault("_dualspeed_micro", [None, 0])
    if tracker[0] != step:
        tracker[0], tracker[1] = step, 0
    micro = tracker[1]
    tracker[1] += 1
    seed = args.slow_mode_seed if args.slow_mode_seed is not None else int(trainer.args.seed)
    # Stochastic pruners (random) draw a new subset every micro-batch, different on every rank.
    rank = int(getattr(trainer.args, "process_index", 0))
    pruner_seed = int(schedule.uniform(seed * 1009 + rank + 1, step, micro) * 2 ** 31)
    if _llm_frozen(trainer, model) and args.pretrain_mode != "fast_slow":
        return (context.FULL if args.pretrain_mode == "full" else context.FAST), step, micro, pruner_seed
    slow = schedule.is_slow(seed, step, micro, args.slow_mode_ratio)
    return (context.SLOW if slow else context.FAST), step, micro, pruner_seed


def wrap_compute_loss(original):
    @functools.wraps(original)
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        args = _active(model)
        if args is None or inputs.get("images") is None:
            return original(self, model, inputs, return_outputs=return_outputs, **kwargs)
        mode, step, micro, pruner_seed = choose_mode(self, model, args)
        spec = context.ModeSpec(mode, args.vtp_method, args.pruning_ratio, args.isolator_active, pruner_seed)
        _trace(self, args, step, micro, mode)
        if mode == context.SLOW:
            loss, outputs = _slow_step(model, inputs, spec, args, self)
        else:
            with context.mode(spec) as state:
                loss, outputs = original(self, model, inputs, return_outputs=True, **kwargs)
            _record(self, mode, loss.detach(), None, state)
        return (loss, outputs) if return_outputs else loss

    compute_loss.__dualspeed_original__ = original
    return compute_loss


def _slow_step(model, inputs, spec, args, trainer):
    with context.mode(spec) as state:
        outputs = model(**inputs)  # student: the full sequence; the wrapper stashes the pruned one
    ce = outputs["loss"]
    loss, kl = ce, None
    if args.use_distillation and args.distill_alpha > 0:
        _, mask, embeds, labels = state.pruned
        with torch.no_grad(), context.mode(context.ModeSpec(context.FULL)):
            teacher = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        loss, kl = slow_mode_loss(ce, outputs["logits"], teacher["logits"], state.extras["full_labels"], labels,
                                  alpha=args.distill_alpha, temperature=args.distill_temperature)
    _record(trainer, context.SLOW, ce.detach(), None if kl is None else kl.detach(), state)
    return loss, outputs


def _record(trainer, mode, ce, kl, state):
    """Keep the components on device; they are averaged (one host sync) only when the Trainer logs."""
    buf = trainer.__dict__.setdefault("_dualspeed_buffer", {"ce": [], "kl": [], "slow": 0, "steps": 0,
                                                            "kept": 0, "total": 0})
    buf["ce"].append(ce.float())
    if kl is not None:
        buf["kl"].append(kl.float())
    buf["slow"] += int(mode == context.SLOW)
    buf["steps"] += 1
    if mode != context.SLOW:  # tokens the LLM saw in a pruned step
        buf["kept"] += state.visual_kept
        buf["total"] += state.visual_total


def summarize(buf) -> dict:
    out = {}
    if buf["ce"]:
        out["dualspeed/ce"] = torch.stack(buf["ce"]).mean().item()
    if buf["kl"]:
        out["dualspeed/kl"] = torch.stack(buf["kl"]).mean().item()
    if buf["steps"]:
        out["dualspeed/slow_frac"] = buf["slow"] / buf["steps"]
    if buf["total"]:
        out["dualspeed/visual_kept_frac"] = buf["kept"] / buf["total"]
        out["dualspeed/visual_kept_per_step"] = buf["kept"] / max(1, buf["steps"] - buf["slow"])
    return out


def _trace(trainer, args, step, micro, mode):
    if not args.mode_log:
        return
    rank = int(getattr(trainer.args, "process_index", 0))
    path = args.mode_log.replace("{rank}", str(rank))
    with open(path, "a") as f:
        f.write(json.dumps({"rank": rank, "step": step, "micro": micro, "mode": mode}) + "\n")


def wrap_log(original):
    @functools.wraps(original)
    def log(self, logs, *args, **kwargs):
        buf = self.__dict__.get("_dualspeed_buffer")
        if buf and buf["steps"] and "loss" in logs:
            logs = {**logs, **summarize(buf)}
            buf.update({"ce": [], "kl": [], "slow": 0, "steps": 0, "kept": 0, "total": 0})
        return original(self, logs, *args, **kwargs)

    log.__dualspeed_original__ = original
    return log


def wrap_create_optimizer(original):
    @functools.wraps(original)
    def create_optimizer(self, *args, **kwargs):
        iso = isolator_lib.get(self.model) if _active() is not None else None
        if iso is not None:
            iso.weight.requires_grad_(True)  # a frozen-LLM stage froze everything but the projector
        optimizer = original(self, *args, **kwargs)
        if iso is not None:
            _to_projector_lr(optimizer, iso.weight, getattr(self.args, "mm_projector_lr", None))
        return optimizer

    create_optimizer.__dualspeed_original__ = original
    return create_optimizer


def _to_projector_lr(optimizer, param, projector_lr):
    """Train the isolator at the projector's learning rate, whatever the fork's grouping by name did."""
    if optimizer is None or projector_lr is None:
        return
    source = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if source is None or source.get("lr") == projector_lr:
        return
    source["params"] = [p for p in source["params"] if p is not param]
    target = next((g for g in optimizer.param_groups
                   if g.get("lr") == projector_lr and g.get("weight_decay") == source.get("weight_decay")), None)
    if target is not None:
        target["params"].append(param)
    else:
        optimizer.add_param_group({"params": [param], "lr": projector_lr,
                                   "weight_decay": source.get("weight_decay", 0.0)})


def wrap_save_checkpoint(original):
    @functools.wraps(original)
    def _save_checkpoint(self, model, trial, *args, **kwargs):
        result = original(self, model, trial, *args, **kwargs)
        if _active() is not None and isolator_lib.get(self.model) is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            isolator_lib.save(self.model, folder, self.args.should_save)
        return result

    _save_checkpoint.__dualspeed_original__ = original
    return _save_checkpoint


def wrap_train(original):
    @functools.wraps(original)
    def train(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if _active() is not None and isolator_lib.get(self.model) is not None:
            path = isolator_lib.save(self.model, self.args.output_dir, self.args.should_save)
            if path:
                logger.info("Saved the mode isolator to %s", path)
        return result

    train.__dualspeed_original__ = original
    return train
