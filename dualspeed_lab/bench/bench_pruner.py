#!/usr/bin/env python
"""Benchmark the visual-token pruners: one batched call vs a per-image Python loop.

For each method, times ``select(features[B, N, D], k, **signals)`` once for the whole batch and as a
loop of B calls on (1, N, D) slices (what the DualSpeed reference does), and prints the median
milliseconds and the speedup. The default shape is a LLaVA-1.5-7B batch: 32 images, 576 tokens,
width 4096, k = budget(576, 0.9) = 57. It also checks that both paths select the same tokens.

Examples::

    python -m dualspeed_lab.bench.bench_pruner --dim 1024
    python -m dualspeed_lab.bench.bench_pruner --device cuda --dtype bfloat16 --methods divprune cdpruner
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_patch import pruners
from dualspeed_patch.pruners import common

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time each pruner batched over B images vs a per-image Python loop.")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                        help="dtype of the features (pruners compute in fp32 anyway; default bfloat16, "
                             "as in LLaVA training)")
    parser.add_argument("--batch", type=int, default=32, help="images per call (default 32)")
    parser.add_argument("--tokens", type=int, default=576, help="tokens per image N (default 576)")
    parser.add_argument("--dim", type=int, default=4096,
                        help="feature width D (default 4096, LLaVA-1.5-7B; 5120 for 13B)")
    parser.add_argument("--ratio", type=float, default=0.9,
                        help="pruning ratio; k = budget(N, ratio) (default 0.9 -> 57 of 576)")
    parser.add_argument("--k", type=int, default=None, help="tokens kept (overrides --ratio)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"pruners to time (default: all registered: {' '.join(pruners.available())})")
    parser.add_argument("--text-tokens", type=int, default=32,
                        help="instruction tokens given to cdpruner as text_embeds (0: unconditional)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--no-finite-check", action="store_true",
                        help="skip the NaN/Inf input check (a host sync on GPU)")
    parser.add_argument("--greedy-only", action="store_true",
                        help="also time only the selection loops of divprune/cdpruner on precomputed "
                             "similarity kernels (where batching over images is what matters)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_signals(method, features, args):
    B, N, D = features.shape
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    sig = {}
    if method == "fastervlm":
        sig["cls_attention"] = torch.softmax(torch.randn(B, N, generator=g), dim=-1).to(features.device)
    elif method == "cdpruner" and args.text_tokens > 0:
        sig["text_embeds"] = torch.randn(B, args.text_tokens, D, generator=g).to(features.device,
                                                                                   features.dtype)
    elif method == "random":
        sig["seed"] = args.seed
    return sig


def slice_signals(sig, i):
    return {key: (val[i:i + 1] if isinstance(val, torch.Tensor) else val) for key, val in sig.items()}


def timed(fn, device, repeats, warmup):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_finite_check:
        common.CHECK_FINITE = False
    methods = args.methods or pruners.available()
    for name in methods:
        pruners.get_pruner(name)                        # fail early on a typo
    B, N, D = args.batch, args.tokens, args.dim
    k = args.k if args.k is not None else pruners.budget(N, args.ratio)

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    features = torch.randn(B, N, D, generator=g).to(device=device, dtype=dtype)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={dev_name} dtype={args.dtype} B={B} N={N} D={D} k={k} "
          f"repeats={args.repeats} warmup={args.warmup} torch={torch.__version__}")
    header = f"{'method':<10} {'batched ms':>11} {'loop ms':>10} {'speedup':>8} {'ms/image':>9}  same"
    print(header)
    print("-" * len(header))
    for name in methods:
        fn = pruners.get_pruner(name)
        sig = make_signals(name, features, args)
        per_image = [slice_signals(sig, i) for i in range(B)]

        def batched():
            return fn(features, k, **sig)

        def looped():
            return torch.cat([fn(features[i:i + 1], k, **per_image[i]) for i in range(B)])

        t_batch, out_batch = timed(batched, device, args.repeats, args.warmup)
        t_loop, out_loop = timed(looped, device, args.repeats, args.warmup)
        # random with a fixed seed draws one (B, N) block vs B (1, N) blocks: equal only when the
        # generator stream is consumed the same way, so "same" is informative, not required, there.
        same = "yes" if torch.equal(out_batch, out_loop) else "no"
        print(f"{name:<10} {t_batch:>11.2f} {t_loop:>10.2f} {t_loop / t_batch:>7.1f}x "
              f"{t_batch / B:>9.3f}  {same}")

    if args.greedy_only:
        from dualspeed_patch.pruners import cdpruner, divprune

        sim = common.cosine_gram(features)
        # greedy_max_min only rewrites the diagonal, whatever it held, so the kernel can be reused
        loops = {"divprune": lambda m: divprune.greedy_max_min(m, k),
                 "cdpruner": lambda m: cdpruner.greedy_map(m, k)}
        print("\nselection loop only (Gram precomputed, excluded from the timings):")
        print(header)
        print("-" * len(header))
        for name, run in loops.items():
            if name not in methods:
                continue
            t_batch, out_batch = timed(lambda: run(sim), device, args.repeats, args.warmup)
            t_loop, out_loop = timed(lambda: torch.cat([run(sim[i:i + 1]) for i in range(B)]), device,
                                     args.repeats, args.warmup)
            same = "yes" if torch.equal(out_batch, out_loop) else "no"
            print(f"{name:<10} {t_batch:>11.2f} {t_loop:>10.2f} {t_loop / t_batch:>7.1f}x "
                  f"{t_batch / B:>9.3f}  {same}")


if __name__ == "__main__":
    main()
