"""Checks and small numeric helpers shared by the pruners.

Every pruner follows one contract::

    select(features: Tensor[B, N, D], k: int, **signals) -> LongTensor[B, k]

The returned indices are distinct, sorted ascending, lie in ``[0, N)`` and live on the device of
``features``. They are computed under ``torch.no_grad()``; the caller gathers ``features[b, idx[b]]``
itself, and that gather keeps the gradient of the features.

Signals are passed by keyword. A pruner ignores the names it does not use (the caller hands the same
set of signals to whichever pruner is configured) and raises :class:`MissingSignalError` when a
signal it needs is absent (``None`` counts as absent).
"""
from __future__ import annotations

import contextlib
import operator

import torch

__all__ = [
    "CHECK_FINITE",
    "NORM_EPS",
    "MissingSignalError",
    "all_finite",
    "check_features",
    "check_token_signal",
    "check_indices",
    "l2_normalize",
    "cosine_gram",
    "row_gather",
    "serial_on_cpu",
    "sort_indices",
]

#: When True, :func:`check_features` and the signal checks also look at the *values* (finite; for
#: cdpruner's ``relevance`` also >= 0). On a GPU each such check is a device-to-host synchronisation;
#: a training loop that has already validated its inputs may set
#: ``dualspeed_patch.pruners.common.CHECK_FINITE = False`` (shapes and k are always checked).
CHECK_FINITE = True

#: Lower bound on a row norm before dividing by it, so zero (padding) rows give zero vectors, not NaN.
NORM_EPS = 1e-6


class MissingSignalError(ValueError):
    """A pruner was called without a signal it cannot work without."""


def _as_int(k, name: str = "k") -> int:
    if isinstance(k, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    if isinstance(k, torch.Tensor):
        if k.numel() != 1 or k.is_floating_point() or k.is_complex():
            raise TypeError(f"{name} must be an integer scalar, got a tensor of shape {tuple(k.shape)} "
                            f"and dtype {k.dtype}")
        return int(k.item())
    try:
        return operator.index(k)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(k).__name__} {k!r}") from None


def all_finite(t: torch.Tensor) -> bool:
    """True if ``t`` has no NaN or Inf (one fused min/max reduction, NaN propagates; no bool copy)."""
    if t.numel() == 0:
        return True
    if not t.is_floating_point():
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_features(features: torch.Tensor, k, method: str = "pruner") -> tuple[int, int, int, int]:
    """Validate the common inputs; return ``(B, N, D, k)`` with ``k`` as a Python int.

    ``features`` must be a floating tensor of shape (B, N, D) with N >= 1, ``1 <= k <= N``, and (if
    :data:`CHECK_FINITE`) every value finite.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{method}: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"{method}: features must be 3-D (B, N, D), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{method}: features must be a real floating tensor, got {features.dtype}")
    B, N, D = features.shape
    if N < 1:
        raise ValueError(f"{method}: features have no tokens (N = 0), shape {tuple(features.shape)}")
    k = _as_int(k)
    if not 1 <= k <= N:
        raise ValueError(f"{method}: k must satisfy 1 <= k <= N = {N}, got k = {k}")
    if CHECK_FINITE and not all_finite(features):
        raise ValueError(f"{method}: features contain NaN or Inf values")
    return B, N, D, k


def check_token_signal(value, name: str, B: int, N: int, device, method: str) -> torch.Tensor:
    """Validate a per-token score of shape (B, N) (a (N,) vector is broadcast when B == 1).

    Returns it as fp32 on ``device``.
    """
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    if value.dim() == 1 and B == 1:
        value = value.unsqueeze(0)
    if tuple(value.shape) != (B, N):
        raise ValueError(f"{method}: signal '{name}' must have shape (B, N) = ({B}, {N}), "
                         f"got {tuple(value.shape)}")
    value = value.detach().to(device=device, dtype=torch.float32)
    if CHECK_FINITE and not all_finite(value):
        raise ValueError(f"{method}: signal '{name}' contains NaN or Inf values")
    return value


def check_indices(idx: torch.Tensor, B: int, N: int, k: int, method: str = "pruner") -> torch.Tensor:
    """Check that ``idx`` honours the pruner contract (used for user-registered pruners and in tests).

    Raises ``ValueError`` with the first violation found; returns ``idx`` unchanged.
    """
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{method}: must return a torch.Tensor, got {type(idx).__name__}")
    if idx.dtype != torch.long:
        raise ValueError(f"{method}: indices must be torch.long, got {idx.dtype}")
    if tuple(idx.shape) != (B, k):
        raise ValueError(f"{method}: indices must have shape (B, k) = ({B}, {k}), got {tuple(idx.shape)}")
    if idx.numel():
        if bool((idx < 0).any()) or bool((idx >= N).any()):
            raise ValueError(f"{method}: indices out of range [0, {N})")
        if k > 1 and not bool((idx[:, 1:] > idx[:, :-1]).all()):
            raise ValueError(f"{method}: indices must be distinct and sorted ascending in every row")
    return idx


def l2_normalize(features: torch.Tensor, eps: float = NORM_EPS, return_norm: bool = False):
    """Rows divided by ``max(||row||_2, eps)``, computed and returned in fp32 (a new tensor).

    With ``return_norm=True`` also returns the unclamped row norms (..., 1) in fp32.
    """
    x = features.detach()
    copied = x.dtype != torch.float32
    x = x.float()                              # a copy unless the input is fp32 already
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inv = norm.clamp_min(eps).reciprocal_()
    unit = x.mul_(inv) if copied else x * inv  # never write into the caller's tensor
    return (unit, norm) if return_norm else unit


def cosine_gram(features: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Cosine-similarity matrix (B, N, N) in fp32 with one batched matmul."""
    xn = l2_normalize(features, eps)
    return torch.bmm(xn, xn.transpose(1, 2))


def row_gather(mat: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``mat[b, j[b], :]`` for every b, as one gather kernel: (B, N, M), (B,) -> (B, M)."""
    B, _, M = mat.shape
    return mat.gather(1, j.view(B, 1, 1).expand(B, 1, M)).squeeze(1)


def sort_indices(idx: torch.Tensor) -> torch.Tensor:
    """The final step of every pruner: indices as int64, sorted ascending along the last dim."""
    return torch.sort(idx.long(), dim=-1).values


@contextlib.contextmanager
def serial_on_cpu(device):
    """Run the block with one intra-op thread when ``device`` is the CPU (no-op elsewhere).

    The greedy loops issue a few hundred tiny ops on (B, N) tensors. On CPU, fanning those out to
    the OpenMP pool costs more than it saves, and when other processes compete for the cores each
    barrier can stall for milliseconds (docs/benchmarks.md, "Threads in the greedy loops"). The big
    Gram ``bmm`` runs outside this block with all threads.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
