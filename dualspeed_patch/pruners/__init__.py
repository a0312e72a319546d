"""Visual-token pruners and their registry.

A pruner is a function ::

    select(features: Tensor[B, N, D], k: int, **signals) -> LongTensor[B, k]

returning, for every image b, k distinct token indices in ``[0, N)`` sorted ascending, on the device
of ``features``, computed without autograd (the caller gathers ``features[b, idx[b]]`` with grad).
Pruners are batched over B. They ignore signals they do not use and raise
:class:`~dualspeed_patch.pruners.common.MissingSignalError` for a required signal that is missing.

Built-in pruners:

=============  ====================================================  =========================
name           keeps                                                 signals
=============  ====================================================  =========================
``divprune``   greedy max-min cosine diversity                       none
``cdpruner``   greedy MAP of a relevance-conditioned DPP             ``relevance`` or
                                                                     ``text_embeds`` (optional)
``fastervlm``  top-k [CLS] attention of the selected vision layer    ``cls_attention`` (required)
``random``     a uniform random subset                               ``generator`` / ``seed``
``uniform``    centred strides in raster order                       none
=============  ====================================================  =========================

Public API: :func:`get_pruner`, :func:`register`, :func:`unregister`, :func:`available`,
:func:`budget`.

Example::

    from dualspeed_patch import pruners

    k = pruners.budget(576, 0.9)                        # 57
    idx = pruners.get_pruner("divprune")(feats, k)      # (B, 57)
    kept = feats.gather(1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))

    @pruners.register("norm")                           # a user's own pruner
    def select_by_norm(features, k, **signals):
        idx = features.detach().float().norm(dim=-1).topk(k, dim=1).indices
        return idx.sort(dim=1).values
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Callable

from . import cdpruner, common, divprune, fastervlm, random_select, uniform
from .common import MissingSignalError

__all__ = ["get_pruner", "register", "unregister", "available", "budget", "MissingSignalError",
           "UnknownPrunerError"]

Pruner = Callable[..., "object"]

_REGISTRY: dict[str, Pruner] = {}


class UnknownPrunerError(ValueError):
    """``get_pruner`` was asked for a name that is not registered."""


def _key(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"pruner name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def available() -> list[str]:
    """Names of the registered pruners, sorted."""
    return sorted(_REGISTRY)


def get_pruner(name: str) -> Pruner:
    """The ``select`` function registered under ``name`` (case-insensitive)."""
    key = _key(name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise UnknownPrunerError(
            f"unknown pruner {name!r}; available: {', '.join(available())}") from None


def register(name: str, fn: Pruner | None = None, *, override: bool = False):
    """Register ``fn`` as pruner ``name`` (case-insensitive); usable as a decorator.

    ``@register("mine")`` or ``register("mine", fn)``. The function must follow the pruner contract
    (see the module docstring; :func:`dualspeed_patch.pruners.common.check_indices` checks an
    output). Registering a name that exists raises ``ValueError`` unless ``override=True``.
    Returns ``fn`` unchanged.
    """
    key = _key(name)

    def _do(func: Pruner) -> Pruner:
        if not callable(func):
            raise TypeError(f"pruner {name!r} must be callable, got {type(func).__name__}")
        if key in _REGISTRY and not override:
            raise ValueError(f"a pruner named {key!r} is already registered; "
                             "pass override=True to replace it")
        _REGISTRY[key] = func
        return func

    return _do if fn is None else _do(fn)


def unregister(name: str) -> Pruner:
    """Remove pruner ``name`` from the registry and return its function."""
    key = _key(name)
    if key not in _REGISTRY:
        raise UnknownPrunerError(f"unknown pruner {name!r}; available: {', '.join(available())}")
    return _REGISTRY.pop(key)


def budget(num_tokens: int, pruning_ratio: float) -> int:
    """Tokens kept out of ``num_tokens`` at ``pruning_ratio``: ``max(1, min(N, floor((1-p)*N + 1e-6)))``.

    This is DualSpeed's ``int((1 - p) * N)`` (57 of 576 at p = 0.9), made robust to float error and
    clamped to ``[1, N]`` (the unclamped rule gives 0 for N < 10).
    """
    if isinstance(num_tokens, bool):
        raise TypeError("num_tokens must be an int, got a bool")
    try:
        n = operator.index(num_tokens)
    except TypeError:
        raise TypeError(f"num_tokens must be an integer, got {num_tokens!r}") from None
    if n < 1:
        raise ValueError(f"num_tokens must be >= 1, got {n}")
    if isinstance(pruning_ratio, bool) or not isinstance(pruning_ratio, numbers.Real):
        raise TypeError(f"pruning_ratio must be a real number in [0, 1), got {pruning_ratio!r}")
    p = float(pruning_ratio)
    if not (math.isfinite(p) and 0.0 <= p < 1.0):
        raise ValueError(f"pruning_ratio must satisfy 0 <= p < 1 (fraction of tokens dropped), got {p}")
    return max(1, min(n, math.floor((1.0 - p) * n + 1e-6)))


for _name, _module in (("divprune", divprune), ("cdpruner", cdpruner), ("fastervlm", fastervlm),
                       ("random", random_select), ("uniform", uniform)):
    register(_name, _module.select)
del _name, _module
