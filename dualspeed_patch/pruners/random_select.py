"""Random baseline: a uniform random k-subset of the visual tokens per image (registered as "random").

Batched as ``u ~ U(0, 1)^(B x N)``, ``idx = sort(topk(u, k).indices)``, which has the distribution of
``randperm(N)[:k]`` for every image. See spec ``vtp_methods.md`` section 2.

Signals (others are ignored):

* ``generator``: a ``torch.Generator``; its state advances, so successive calls differ. For
  reproducible training seed it from (seed, global step, rank, micro-step) so ranks do not share a
  subset pattern by accident.
* ``seed``: an int; a fresh generator seeded with it is used (same seed -> same subsets).
* neither: a fresh generator seeded with :data:`DEFAULT_SEED` (0), so the call is deterministic and
  never touches the global RNG. Note that this gives the same subset for equal (B, N, k) on every
  call; pass ``generator`` or ``seed`` to vary it.

The uniforms are drawn on the generator's device (CPU for ``seed`` and the default) and moved to the
features' device, so the result for a given seed does not depend on the device.
"""
from __future__ import annotations

import operator

import torch

from .common import check_features, serial_on_cpu, sort_indices

__all__ = ["select", "DEFAULT_SEED"]

#: Seed used when neither ``generator`` nor ``seed`` is given.
DEFAULT_SEED = 0


@torch.no_grad()
def select(features: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
           seed: int | None = None, **signals) -> torch.Tensor:
    """Indices (B, k) of a uniform random k-subset per image, sorted ascending.

    Args:
        features: (B, N, D); only its shape and device are used.
        k: tokens to keep, ``1 <= k <= N``.
        generator: optional ``torch.Generator`` (takes precedence over ``seed``).
        seed: optional int seed.
        **signals: ignored.
    """
    B, N, _, k = check_features(features, k, "random")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"random: generator must be a torch.Generator, got {type(generator).__name__}")
    else:
        if seed is None:
            seed = DEFAULT_SEED
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)
        except TypeError:
            raise TypeError(f"random: seed must be an int, got {type(seed).__name__}") from None
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
    with serial_on_cpu(generator.device):
        u = torch.rand(B, N, generator=generator, device=generator.device)
        idx = torch.topk(u, k, dim=1, sorted=False).indices
        idx = sort_indices(idx)
    return idx.to(features.device)
