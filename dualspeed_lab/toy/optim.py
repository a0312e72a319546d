"""Optimisation pieces shared by the toy builds: the learning-rate schedule (linear warm-up, cosine decay to
10 %), and the LLM warm-ups' AdamW and optimisation step (the text warm-up in dualspeed_lab/toy/lm_warmup.py and
the scene warm-up in dualspeed_lab/toy/scene_warmup.py use the same ones, so they train alike).

    opt = lm_adamw(params, lr)
    for step in range(steps):
        loss = lm_step(model, opt, params, lr_at(step, steps, lr, warmup), input_ids=..., labels=...)
"""
from __future__ import annotations

import math

import torch

__all__ = ["lr_at", "lm_adamw", "lm_step"]


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """The learning rate at `step` of `steps`: linear warm-up over `warmup` steps to `lr`, then a cosine decay
    from `lr` to 0.1 `lr` (the vision pretraining, both LLM warm-ups and the tower probe use it)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def lm_adamw(params, lr: float):
    """The LLM warm-ups' optimiser: AdamW (0.9, 0.98), weight decay 0.01 on matrices only."""
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98))


def lm_step(model, opt, params, lr: float, **inputs) -> float:
    """One optimisation step of an LLM warm-up: set the LR, forward, backward, clip at 1.0, step; the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(**inputs).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()
