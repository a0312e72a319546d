"""One DualSpeed training step, as data flows: choose the mode, run the fast or the slow step, return the parts.

    spec = ModeSpec.from_config(cfg, FAST)
    result = fast_step(model, inputs, spec)              # pruned sequence + isolator, CE
    result = slow_step(model, inputs, spec, cfg)         # full sequence: CE + alpha * tau^2 * KL(teacher || student)
    result.loss.backward()

`choose_mode` is the schedule's pure function of (seed, global step, micro-step): every rank derives the same
mode without talking, and a resumed run repeats its modes.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import context, decoder_loop, schedule
from .config import DualSpeedConfig
from .distill import slow_mode_loss
from .lm_forward import plain_language_model


@dataclass
class StepResult:
    loss: torch.Tensor          # what backward() runs on
    ce: torch.Tensor            # cross-entropy of the sequence the step trained on (detached)
    kl: Optional[torch.Tensor]  # slow step's distillation term (detached), None otherwise
    mode: str
    outputs: Any                # the model outputs of the trained forward (student's in a slow step)
    state: context.StepState    # what the merge reported (visual tokens kept / total, teacher inputs)


def fast_step(model, inputs: dict, spec: context.ModeSpec,
              loss_fn: Optional[Callable[[Any, dict], tuple]] = None) -> StepResult:
    """Forward the reduced sequence. `loss_fn(model, inputs) -> (loss, outputs)` is the fork's own loss
    (e.g. its Trainer's compute_loss); by default the model's `loss` output."""
    with context.mode(spec) as state:
        if loss_fn is None:
            outputs = model(**inputs)
            loss = outputs["loss"]
        else:
            loss, outputs = loss_fn(model, inputs)
    return StepResult(loss, loss.detach(), None, spec.mode, outputs, state)


def slow_step(model, inputs: dict, spec: context.ModeSpec, cfg: DualSpeedConfig) -> StepResult:
    """Student on the full sequence (with grad); teacher, without grad, on the reduced sequence that the same
    merge built from the same features (one vision pass)."""
    if spec.mode != context.SLOW:
        spec = dataclasses.replace(spec, mode=context.SLOW)
    with context.mode(spec) as state:
        outputs = model(**inputs)
    ce = outputs["loss"]
    loss, kl = ce, None
    if cfg.use_distillation:  # validation refuses alpha <= 0 while distillation is on
        teacher_in = state.teacher
        # Through the transformers LM class, not the fork's forward (lm_forward.py says why).
        with torch.no_grad(), context.mode(context.ModeSpec(context.FULL)), plain_language_model(model) as inner:
            if teacher_in.layer_drop is not None:  # the teacher's fast mode drops in the decoder too
                decoder_loop.set_plan(inner.get_model(), teacher_in.layer_drop)
            teacher = model(inputs_embeds=teacher_in.inputs_embeds, attention_mask=teacher_in.attention_mask,
                            labels=teacher_in.labels)
        loss, kl = slow_mode_loss(ce, outputs["logits"], teacher["logits"], state.full_labels, teacher_in.labels,
                                  alpha=cfg.distill_alpha, temperature=cfg.distill_temperature)
        kl = kl.detach()
    return StepResult(loss, ce.detach(), kl, context.SLOW, outputs, state)


def choose_mode(cfg: DualSpeedConfig, seed: int, global_step: int, micro_step: int, llm_frozen: bool) -> str:
    """FAST / SLOW (or FULL in a frozen-LLM stage with --pretrain_mode full) of one micro-batch."""
    if llm_frozen and cfg.pretrain_mode != "fast_slow":
        return context.FULL if cfg.pretrain_mode == "full" else context.FAST
    return context.SLOW if schedule.is_slow(seed, global_step, micro_step, cfg.slow_mode_ratio) else context.FAST


def plugin_seed(seed: int, rank: int, global_step: int, micro_step: int) -> int:
    """Seed of stochastic plug-ins (random): a new subset every micro-batch, different on every rank."""
    return int(schedule.uniform(seed * 1009 + rank + 1, global_step, micro_step) * 2 ** 31)
