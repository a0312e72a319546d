"""Visual-token reduction plug-ins and their registry.

Two kinds of plug-in, both called once per group of equal-length image spans, batched over B::

    kind="select":  fn(features: Tensor[B, N, D], k: int, **signals) -> LongTensor[B, k]
                    k distinct token indices in ``[0, N)``, sorted ascending, computed without autograd
                    (the caller gathers ``features[b, idx[b]]`` with grad);
    kind="merge":   fn(features: Tensor[B, N, D], k: int, **signals) -> Tensor[B, k, D]
                    k new tokens computed from the span (keep the graph: the projector learns through them).

A plug-in declares the signals it needs (``signals=("cls_attention",)``); the merge wrapper computes exactly
those and passes them by keyword (``dualspeed_patch.signals.available()`` lists what can be asked for). The
mode isolator is put in front of the reduced span either way.

Built-in plug-ins (all ``select``):

=============  ====================================================  =========================
name           keeps                                                 signals declared
=============  ====================================================  =========================
``divprune``   greedy max-min cosine diversity                       none
``cdpruner``   greedy MAP of a relevance-conditioned DPP             ``relevance``
``fastervlm``  top-k [CLS] attention of the selected vision layer    ``cls_attention``
``random``     a uniform random subset                               ``seed``
``uniform``    centred strides in raster order                       none
=============  ====================================================  =========================

and one ``merge``: ``duet`` (DUET-VLM stage A: [CLS] + dominant patches by [CLS] attention + contextual tokens
merged onto anchors by key similarity, before the projector; signals ``vision_layer``, ``projector``).

Public API: :func:`register`, :func:`unregister`, :func:`get_reducer`, :func:`get_pruner`, :func:`available`,
:func:`budget`.

Example::

    from dualspeed_patch import pruners

    @pruners.register("norm", signals=("cls_attention",))      # a selection plug-in
    def select_by_norm(features, k, cls_attention, **_):
        return (features.float().norm(dim=-1) * cls_attention).topk(k, dim=1).indices.sort(dim=1).values

    @pruners.register("avgpool", kind="merge")                  # a merging plug-in
    def avg_pool(features, k, **_):
        return torch.nn.functional.adaptive_avg_pool1d(features.transpose(1, 2), k).transpose(1, 2)
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from . import cdpruner, divprune, duet, fastervlm, random_select, uniform
from .common import MissingSignalError

__all__ = ["Reducer", "get_reducer", "get_pruner", "register", "unregister", "available", "budget",
           "MissingSignalError", "UnknownPrunerError", "KINDS"]

Pruner = Callable[..., "object"]
KINDS = ("select", "merge")


@dataclass(frozen=True)
class Reducer:
    """A registered plug-in: its function, what it returns (``kind``) and the signals it declares."""
    name: str
    fn: Pruner
    kind: str = "select"
    signals: Tuple[str, ...] = ()
    options: Tuple[str, ...] = ()        # keywords of fn a user may set (ModeSpec.options)
    budget: Optional[Callable] = None    # (n, pruning_ratio, **options) -> k; default: budget(n, pruning_ratio)


_REGISTRY: dict[str, Reducer] = {}


class UnknownPrunerError(ValueError):
    """``get_pruner`` was asked for a name that is not registered."""


def _key(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"pruner name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def available() -> list[str]:
    """Names of the registered pruners, sorted."""
    return sorted(_REGISTRY)


def get_reducer(name: str) -> Reducer:
    """The plug-in registered under ``name`` (case-insensitive)."""
    key = _key(name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise UnknownPrunerError(
            f"unknown pruner {name!r}; available: {', '.join(available())}") from None


def get_pruner(name: str) -> Pruner:
    """The function registered under ``name`` (case-insensitive)."""
    return get_reducer(name).fn


def register(name: str, fn: Pruner | None = None, *, kind: str = "select", signals=(), options=(),
             budget_fn: Callable | None = None, override: bool = False):
    """Register ``fn`` as plug-in ``name`` (case-insensitive); usable as a decorator.

    ``@register("mine")``, ``register("mine", fn, kind="merge", signals=("relevance",))``. The function must
    follow its kind's contract (see the module docstring; :func:`dualspeed_patch.pruners.common.check_indices`
    checks a selection). ``signals`` must name signals the merge wrapper can compute
    (``dualspeed_patch.signals.available()``). Registering a name that exists raises ``ValueError`` unless
    ``override=True``. Returns ``fn`` unchanged.
    """
    key = _key(name)
    if kind not in KINDS:
        raise ValueError(f"plug-in {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if isinstance(signals, str):
        signals = (signals,)
    signals = tuple(signals)
    from ..signals import available as known_signals  # the providers live beside the merge wrapper

    unknown = [s for s in signals if s not in known_signals()]
    if unknown:
        raise ValueError(f"plug-in {name!r} declares unknown signals {unknown}; available: {known_signals()}")

    def _do(func: Pruner) -> Pruner:
        if not callable(func):
            raise TypeError(f"pruner {name!r} must be callable, got {type(func).__name__}")
        if key in _REGISTRY and not override:
            raise ValueError(f"a pruner named {key!r} is already registered; "
                             "pass override=True to replace it")
        _REGISTRY[key] = Reducer(key, func, kind, signals, tuple(options), budget_fn)
        return func

    return _do if fn is None else _do(fn)


def unregister(name: str) -> Pruner:
    """Remove plug-in ``name`` from the registry and return its function."""
    key = _key(name)
    if key not in _REGISTRY:
        raise UnknownPrunerError(f"unknown pruner {name!r}; available: {', '.join(available())}")
    return _REGISTRY.pop(key).fn


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


for _name, _module, _signals in (("divprune", divprune, ()), ("cdpruner", cdpruner, ("relevance",)),
                                 ("fastervlm", fastervlm, ("cls_attention",)), ("random", random_select, ("seed",)),
                                 ("uniform", uniform, ())):
    register(_name, _module.select, signals=_signals)
del _name, _module, _signals
register("duet", duet.merge, kind="merge", signals=duet.SIGNALS, options=duet.OPTIONS, budget_fn=duet.budget)
