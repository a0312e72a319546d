"""Slow-mode loss: CE(student) + alpha * tau^2 * KL(teacher || student) on the answer positions.

The teacher (pruned sequence) and the student (full sequence) hold the same text tokens in the same order,
so the logits that predict each supervised token line up one to one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that predict a supervised token: [M, V] in sequence order."""
    predicts = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][predicts]


def kl_divergence(student_logits, teacher_logits, student_labels, teacher_labels, temperature: float = 1.0):
    """Mean over answer tokens of KL(softmax(t/tau) || softmax(s/tau)), times tau^2, in fp32."""
    s = answer_logits(student_logits, student_labels).float()
    t = answer_logits(teacher_logits, teacher_labels).float()
    if s.shape[0] != t.shape[0]:
        raise RuntimeError(f"teacher and student disagree on the answer positions ({t.shape[0]} vs {s.shape[0]}): "
                           "the pruned and full sequences must carry the same supervised tokens")
    if s.shape[0] == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def slow_mode_loss(ce, student_logits, teacher_logits, student_labels, teacher_labels, alpha=1.0, temperature=1.0):
    """Returns (loss, kl)."""
    kl = kl_divergence(student_logits, teacher_logits, student_labels, teacher_labels, temperature)
    return ce + alpha * kl.to(ce.dtype), kl
