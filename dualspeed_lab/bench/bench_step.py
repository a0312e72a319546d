#!/usr/bin/env python
"""Time one DualSpeed training micro-batch (baseline / fast / slow) against its FLOP ceiling.

Builds an LlavaLlamaForCausalLM with RANDOM weights in memory (no download: a CLIP vision tower of the
preset's shapes is written to a temporary folder, as dualspeed_lab/tiny/vision.py does), a synthetic batch of
B samples (BOS + text + one <image> + text, labels on the text after the image, random 336x336
images), and times, with warm-up and the median over repeats:

  baseline step     forward + backward on the full sequence (no DualSpeed context)
  fast step         dualspeed_patch.fast_step (forward on the pruned sequence + isolator) + backward
  slow step         dualspeed_patch.slow_step (student on the full sequence + no-grad teacher on
                    the pruned one + KL) + backward
  baseline forward  no-grad forward on the full sequence
  teacher forward   no-grad forward on the pruned sequence, as the slow-mode teacher runs it
  pruner            on the same projected features (B images x N tokens x D), batched vs a per-image loop,
                    and on --pruner-images images (32: the issue's target)

and prints a Markdown table with the FLOP ceiling (dualspeed_lab/bench/flops.py) for the SAME shapes,
read off the model that ran.

    python -m dualspeed_lab.bench.bench_step --preset tiny
    python -m dualspeed_lab.bench.bench_step --preset llava15-7b --layers 1 --vit-layers 2 --batch 2 \\
        --text-tokens 128 --repeats 3 --stage sft
    # GPU, full-depth LLaVA-1.5-7B shapes:
    python -m dualspeed_lab.bench.bench_step --preset llava15-7b --device cuda --dtype bf16 \\
        --attn flash_attention_2 --batch 16 --text-tokens 15 --grad-ckpt --stage pretrain
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import types
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from dualspeed_lab.bench import flops as flop_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
ANYRES_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TABLE_HEADER = ("| measurement | median ms | min-max ms | model GFLOP | GFLOP/s | speedup vs baseline "
                "| FLOP ceiling | measured / ceiling |")

# Preset shapes for the model that is BUILT (LLM + CLIP tower heads included; flops.py does not need heads
# of the ViT). `custom` starts from the tiny shapes; every shape flag overrides any preset.
BUILD = {
    "tiny": dict(hidden=64, ff=128, layers=2, heads=4, kv_heads=2, vocab=128,
                 vit_width=64, vit_ff=128, vit_layers=3, vit_heads=2, anyres=False),
    "llava15-7b": dict(hidden=4096, ff=11008, layers=32, heads=32, kv_heads=32, vocab=32000,
                       vit_width=1024, vit_ff=4096, vit_layers=24, vit_heads=16, anyres=False),
    "llava-next-7b": dict(hidden=4096, ff=11008, layers=32, heads=32, kv_heads=32, vocab=32000,
                          vit_width=1024, vit_ff=4096, vit_layers=24, vit_heads=16, anyres=True),
}
BUILD["custom"] = dict(BUILD["tiny"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time a baseline / DualSpeed fast / DualSpeed slow training step of a randomly initialised "
                    "LLaVA and compare with the FLOP ceiling for the same shapes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(BUILD), default="tiny",
                   help="model shapes: tiny (hidden 64, 2 layers), llava15-7b (Vicuna-7B + CLIP ViT-L/14-336), "
                        "llava-next-7b (same, anyres: 5 crops, 2928 visual tokens for a 672x672 image), custom "
                        "(tiny shapes + the shape flags below)")
    p.add_argument("--layers", type=int, default=None, help="override the LLM depth (e.g. 1-2 on a CPU)")
    p.add_argument("--vit-layers", type=int, default=None, help="override the ViT depth (>= 2: LLaVA reads "
                                                                  "hidden_states[-2])")
    for flag, what in (("hidden", "LLM hidden size"), ("ff", "LLM FFN size"), ("heads", "LLM attention heads"),
                       ("kv-heads", "LLM key/value heads (GQA)"), ("vocab", "vocabulary size"),
                       ("vit-width", "ViT width"), ("vit-ff", "ViT FFN size"), ("vit-heads", "ViT heads")):
        p.add_argument(f"--{flag}", type=int, default=None, help=f"override the {what}")
    p.add_argument("--batch", type=int, default=2, help="samples per micro-batch B")
    p.add_argument("--text-tokens", type=int, default=64,
                   help="text tokens per sample T incl. BOS (the image adds N visual tokens)")
    p.add_argument("--stage", choices=["pretrain", "sft"], default="pretrain",
                   help="pretrain: LLM frozen, projector (+ isolator) trainable; sft: all LLM weights trainable")
    p.add_argument("--pruning-ratio", type=float, default=0.9, help="fraction p of visual tokens dropped")
    p.add_argument("--isolator-len", type=int, default=4, help="mode-isolator tokens (0: no isolator)")
    p.add_argument("--method", default="divprune", help="pruner (dualspeed_patch.pruners.available())")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per measurement")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                   help="LLM attention kernel (flash_attention_2 falls back to sdpa when flash-attn is unusable)")
    p.add_argument("--grad-ckpt", action="store_true",
                   help="gradient checkpointing on the LLM (as the LLaVA scripts); the ceiling counts the recompute")
    p.add_argument("--pruner-images", type=int, default=32,
                   help="images for the extra pruner batched-vs-loop measurement (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the Markdown report to this file")
    args = p.parse_args(argv)
    if args.text_tokens < 2:
        p.error("--text-tokens must be >= 2 (BOS + at least one token after the image)")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    if not 0.0 <= args.pruning_ratio < 1.0:
        p.error("--pruning-ratio must be in [0, 1)")
    if args.vit_layers is not None and args.vit_layers < 2:
        p.error("--vit-layers must be >= 2 (LLaVA selects hidden_states[-2])")
    return args


# ------------------------------------------------------------------------------------------- model
def build_shapes(args) -> dict:
    shp = dict(BUILD[args.preset])
    for key in ("layers", "hidden", "ff", "heads", "kv_heads", "vocab", "vit_width", "vit_ff", "vit_heads",
                "vit_layers"):
        val = getattr(args, key, None)
        if val is not None:
            shp[key] = val
    return shp


def write_clip_folder(folder, shp, dtype):
    """A randomly initialised CLIPVisionModel of the preset's shapes + its PIL image processor."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from dualspeed_lab.tiny.vision import IMAGE_SIZE, PATCH_SIZE, make_image_processor

    config = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3,
                              hidden_size=shp["vit_width"], intermediate_size=shp["vit_ff"],
                              num_hidden_layers=shp["vit_layers"], num_attention_heads=shp["vit_heads"],
                              projection_dim=shp["vit_width"], hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = CLIPVisionModel(config).to(dtype).eval()
    model.save_pretrained(folder)
    make_image_processor().save_pretrained(folder)
    del model
    return folder


def build_model(args, shp, device, dtype, clip_dir):
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.attention import pick_attn_implementation

    attn = pick_attn_implementation(args.attn) if device.type == "cuda" else (
        "sdpa" if args.attn == "flash_attention_2" else args.attn)
    cfg = LlavaConfig(vocab_size=shp["vocab"], hidden_size=shp["hidden"], intermediate_size=shp["ff"],
                      num_hidden_layers=shp["layers"], num_attention_heads=shp["heads"],
                      num_key_value_heads=shp["kv_heads"], max_position_embeddings=8192,
                      attn_implementation=attn)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # random init directly in the run dtype, on the run device
    try:
        with torch.device(device):
            model = LlavaLlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    merge = "spatial_unpad" if shp["anyres"] else "flat"
    margs = types.SimpleNamespace(vision_tower=clip_dir, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                  pretrain_mm_mlp_adapter=None, mm_patch_merge_type=merge,
                                  mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(margs)
    if shp["anyres"]:
        model.config.image_aspect_ratio = "anyres"
        model.config.image_grid_pinpoints = ANYRES_PINPOINTS
    model.to(device=device, dtype=dtype)
    return model, attn


def set_stage(model, stage, iso):
    if stage == "pretrain":       # LLaVA's tune_mm_mlp_adapter: everything frozen but the projector
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
    else:                         # full fine-tuning of the LLM (+ projector); the vision tower stays frozen
        model.requires_grad_(True)
        model.get_vision_tower().requires_grad_(False)
    if iso is not None:
        iso.weight.requires_grad_(True)


def make_batch(args, shp, device, dtype):
    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.text_tokens
    pre = T // 2                                  # BOS + first half of the text, then <image>, then the rest
    post = T - pre
    rows, labs = [], []
    for _ in range(B):
        before = torch.randint(3, shp["vocab"], (pre - 1,), generator=g)
        after = torch.randint(3, shp["vocab"], (post,), generator=g)
        ids = torch.cat([torch.tensor([1]), before, torch.tensor([IMAGE_TOKEN_INDEX]), after])
        lab = torch.full_like(ids, IGNORE_INDEX)
        lab[pre + 1:] = after                     # supervise the text after the image
        rows.append(ids)
        labs.append(lab)
    input_ids = torch.stack(rows).to(device)
    inputs = dict(input_ids=input_ids, labels=torch.stack(labs).to(device),
                  attention_mask=torch.ones_like(input_ids))
    if shp["anyres"]:                             # one 672x672 image per sample: base + 2x2 crops
        inputs["images"] = torch.randn(B, 5, 3, 336, 336, generator=g).to(device=device, dtype=dtype)
        inputs["image_sizes"] = [[672, 672]] * B
    else:
        inputs["images"] = torch.randn(B, 3, 336, 336, generator=g).to(device=device, dtype=dtype)
    return inputs


# ------------------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, device, repeats, warmup):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.peak = {}
        self.spread = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, name, fn, setup=None):
        """Median milliseconds of fn() over `repeats` runs after `warmup` runs; setup() runs untimed before each."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for i in range(self.warmup + self.repeats):
            if setup is not None:
                setup()
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            if i >= self.warmup:
                times.append((time.perf_counter() - start) * 1e3)
        if self.device.type == "cuda":
            self.peak[name] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        free(self.device)
        self.spread[name] = (min(times), max(times))
        return statistics.median(times)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def pruner_signals(method, B, N, device, seed, model=None):
    g = torch.Generator().manual_seed(seed + 1)
    if method == "fastervlm":
        return {"cls_attention": torch.softmax(torch.randn(B, N, generator=g), dim=-1).to(device)}
    if method == "duet":  # random signals of the real shapes; the projector is the model's own
        from dualspeed_patch.pruners.duet import VisionLayer

        projector = model.get_model().mm_projector
        dv, dtype = projector[0].in_features, projector[0].weight.dtype
        layer = VisionLayer(torch.softmax(torch.randn(B, N, generator=g), dim=-1).to(device),
                            torch.randn(B, N, 64, generator=g).to(device),
                            torch.randn(B, N + 1, dv, generator=g).to(device, dtype))
        return {"vision_layer": layer, "projector": projector}
    return {"seed": seed}


def _slice(sig, i):
    from dualspeed_patch.pruners.duet import VisionLayer

    def one(val):
        if isinstance(val, torch.Tensor):
            return val[i:i + 1]
        if isinstance(val, VisionLayer):
            return VisionLayer(val.cls_attention[i:i + 1], val.keys[i:i + 1], val.hidden[i:i + 1])
        return val
    return {key: one(val) for key, val in sig.items()}


# -------------------------------------------------------------------------------------------- main
def run(args):
    import dualspeed_patch
    from dualspeed_patch import context, pruners
    from dualspeed_patch import isolator as isolator_lib
    from dualspeed_patch.config import DualSpeedConfig
    from dualspeed_patch.context import FAST, FULL, SLOW, ModeSpec

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    if args.threads:
        torch.set_num_threads(args.threads)
    pruners.get_pruner(args.method)               # fail early on a typo
    torch.manual_seed(args.seed)
    dualspeed_patch.apply("llava", training=False)
    t_start = time.perf_counter()

    shp = build_shapes(args)
    clip_dir = tempfile.mkdtemp(prefix="bench_clip_")
    try:
        write_clip_folder(clip_dir, shp, dtype)
        model, attn = build_model(args, shp, device, dtype, clip_dir)
    finally:
        shutil.rmtree(clip_dir, ignore_errors=True)
    use_iso = args.isolator_len > 0
    iso = isolator_lib.attach(model, args.isolator_len) if use_iso else None
    set_stage(model, args.stage, iso)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    build_s = time.perf_counter() - t_start

    inputs = make_batch(args, shp, device, dtype)
    B, T, p = args.batch, args.text_tokens, args.pruning_ratio
    fast_spec = ModeSpec(FAST, args.method, p, use_iso, args.seed)
    slow_spec = ModeSpec(SLOW, args.method, p, use_iso, args.seed)
    ds_cfg = DualSpeedConfig(dualspeed=True, vtp_method=args.method, pruning_ratio=p,
                                 isolator_len=args.isolator_len)

    # The pruned sequence the slow-mode teacher sees (and the visual-token count N the LLM sees).
    with torch.no_grad(), context.mode(slow_spec) as state:
        model.prepare_inputs_labels_for_multimodal(inputs["input_ids"], None, inputs["attention_mask"], None,
                                                   inputs["labels"], inputs["images"], inputs.get("image_sizes"))
        feats = model._image_features_per_image(inputs["images"], inputs.get("image_sizes"))
    t_mask, t_embeds, t_labels = state.teacher.attention_mask, state.teacher.inputs_embeds, state.teacher.labels
    N = state.visual_total // B
    k = pruners.budget(N, p)
    feats = torch.stack([f.detach() for f in feats])          # (B, N, D): the pruner's input
    crops = inputs["images"].shape[1] if inputs["images"].dim() == 5 else 1
    del state

    shapes = flop_model.from_model(model, visual_tokens=N, crops_per_image=crops, name=args.preset)
    fstage = "pretrain" if args.stage == "pretrain" else "sft_full"
    fattn = "eager" if attn == "eager" else "flash"
    ceil = flop_model.ceilings(shapes, T=T, N=N, p=p, isolator_len=args.isolator_len, stage=fstage, batch=B,
                               ckpt=args.grad_ckpt, attn=fattn, method=args.method, answer_tokens=T - T // 2)
    base_fwd_flops = flop_model.step_flops(shapes, T, N, fstage, batch=B, ckpt=args.grad_ckpt, attn=fattn,
                                           grad=False)["total"]
    # what one timed call of the plug-in runs (duet's ViT-layer hook runs inside the vision pass, not here)
    prune_flops = flop_model.pruner_flops(N, k, shapes.llm.hidden, args.method, shapes, call_only=True)

    timer = Timer(device, args.repeats, args.warmup)

    def zero():
        model.zero_grad(set_to_none=True)

    def baseline_step():
        model(**inputs).loss.backward()

    def fast_step():
        dualspeed_patch.fast_step(model, inputs, fast_spec).loss.backward()

    def slow_step():
        dualspeed_patch.slow_step(model, inputs, slow_spec, ds_cfg).loss.backward()

    def baseline_forward():
        with torch.no_grad():
            model(**inputs)

    def teacher_forward():
        with torch.no_grad(), context.mode(ModeSpec(FULL)):
            model(inputs_embeds=t_embeds, attention_mask=t_mask, labels=t_labels)

    select = pruners.get_pruner(args.method)
    sig = pruner_signals(args.method, B, N, device, args.seed, model)

    def pruner_batched(x=feats, s=sig):
        return lambda: select(x, k, **s)

    def pruner_loop(x=feats, s=sig):
        parts = [_slice(s, i) for i in range(x.shape[0])]
        return lambda: [select(x[i:i + 1], k, **parts[i]) for i in range(x.shape[0])]

    ms = {}
    ms["baseline forward"] = timer("baseline forward", baseline_forward)
    ms["teacher forward"] = timer("teacher forward", teacher_forward)
    ms["pruner batched"] = timer("pruner batched", pruner_batched())
    ms["pruner loop"] = timer("pruner loop", pruner_loop())
    ms["baseline step"] = timer("baseline step", baseline_step, setup=zero)
    ms["fast step"] = timer("fast step", fast_step, setup=zero)
    ms["slow step"] = timer("slow step", slow_step, setup=zero)
    zero()
    del feats
    free(device)
    many = args.pruner_images
    if many:
        g = torch.Generator().manual_seed(args.seed + 2)
        big = torch.randn(many, N, shapes.llm.hidden, generator=g).to(device=device, dtype=dtype)
        big_sig = pruner_signals(args.method, many, N, device, args.seed, model)
        ms[f"pruner batched x{many}"] = timer(f"pruner batched x{many}", pruner_batched(big, big_sig))
        ms[f"pruner loop x{many}"] = timer(f"pruner loop x{many}", pruner_loop(big, big_sig))
        del big
        free(device)
    total_s = time.perf_counter() - t_start

    report = format_report(args, device, dtype_name, attn, shp, shapes, N, k, crops, ceil, base_fwd_flops,
                           prune_flops, ms, timer, build_s, total_s)
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(report + "\n")
    return ms, ceil


def _pct(x):
    return f"{100 * x:.1f}%"


def format_report(args, device, dtype_name, attn, shp, shapes, N, k, crops, ceil, base_fwd_flops, prune_flops,
                  ms, timer, build_s, total_s):
    B, T = args.batch, args.text_tokens
    llm, vit = shapes.llm, shapes.vit
    peak, spread = timer.peak, timer.spread
    proj = " -> ".join([str(shapes.projector[0][0])] + [str(o) for _, o in shapes.projector])
    S_full, S_fast = T + N, T + k + args.isolator_len
    lines = [
        f"### bench_step: preset `{args.preset}`, stage `{args.stage}`, {device.type}",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; device: {device_name(device)}; "
        f"torch {torch.__version__}; dtype {dtype_name}; attention `{attn}`; "
        f"gradient checkpointing {'on' if args.grad_ckpt else 'off'}",
        f"- LLM: hidden {llm.hidden}, layers {llm.layers}, FF {llm.ff}, vocab {llm.vocab}, heads {llm.heads} "
        f"(kv {llm.kv_heads}); ViT: width {vit.width}, layers {vit.layers}, FF {vit.ff}, {vit.tokens} tokens/crop, "
        f"{crops} crop(s)/image; projector {proj}",
        f"- batch B={B}, text tokens T={T}, visual tokens N={N} -> LLM sequence {S_full} (baseline) / {S_fast} "
        f"(fast: k={k} kept + {args.isolator_len} isolator); pruner `{args.method}`, p={args.pruning_ratio}; "
        f"repeats {args.repeats} (median), warm-up {args.warmup}",
        "",
        TABLE_HEADER + (" peak GiB |" if device.type == "cuda" else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if device.type == "cuda" else ""),
    ]
    base = ms["baseline step"]
    model_flops = {
        "baseline step": ceil["baseline_flops"], "fast step": ceil["fast_flops"], "slow step": ceil["slow_flops"],
        "baseline forward": base_fwd_flops, "teacher forward": ceil["teacher_flops"],
        "pruner batched": B * prune_flops, "pruner loop": B * prune_flops,
    }
    ceilings = {"baseline step": 1.0, "fast step": ceil["fast_speedup"], "slow step": ceil["slow_speedup"]}
    labels = {"baseline step": "baseline step (fwd+bwd)", "fast step": "fast step (fwd+bwd, pruned)",
              "slow step": "slow step (slow_step + bwd)", "baseline forward": "baseline forward (no grad)",
              "teacher forward": "pruned teacher forward (no grad)",
              "pruner batched": f"pruner batched ({B} images)", "pruner loop": f"pruner per-image loop ({B} images)"}
    many = args.pruner_images
    for key in ("baseline step", "fast step", "slow step", "baseline forward", "teacher forward", "pruner batched",
                "pruner loop"):
        t = ms[key]
        gf = model_flops[key] / 1e9
        row = [labels[key], f"{t:.1f}", "{:.1f}-{:.1f}".format(*spread[key]), f"{gf:.1f}", f"{gf / (t / 1e3):.1f}"]
        if key in ceilings:
            speed = base / t
            row += [f"{speed:.2f}x", f"{ceilings[key]:.2f}x", _pct(speed / ceilings[key])]
        else:
            row += ["", "", ""]
        if device.type == "cuda":
            row.append(f"{peak.get(key, float('nan')):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    if many:
        for key, label in ((f"pruner batched x{many}", f"pruner batched ({many} images)"),
                           (f"pruner loop x{many}", f"pruner per-image loop ({many} images)")):
            t = ms[key]
            gf = many * prune_flops / 1e9
            row = [label, f"{t:.1f}", "{:.1f}-{:.1f}".format(*spread[key]), f"{gf:.1f}", f"{gf / (t / 1e3):.1f}",
                   "", "", ""]
            if device.type == "cuda":
                row.append(f"{peak.get(key, float('nan')):.1f}")
            lines.append("| " + " | ".join(row) + " |")

    fast_frac = (base / ms["fast step"]) / ceil["fast_speedup"]
    prune_share = ms["pruner batched"] / ms["fast step"]
    slow_ratio = ms["slow step"] / (base + ms["teacher forward"])
    lines += [
        "",
        f"- fast step: {base / ms['fast step']:.2f}x measured vs {ceil['fast_speedup']:.2f}x FLOP ceiling = "
        f"**{_pct(fast_frac)} of the ceiling** (target >= 90%)",
        f"- pruner ({args.method}, {B} images x {N} tokens x {llm.hidden}): batched {ms['pruner batched']:.2f} ms vs "
        f"loop {ms['pruner loop']:.2f} ms = **{ms['pruner loop'] / ms['pruner batched']:.1f}x**",
    ]
    if many:
        lines.append(f"- pruner on {many} images: batched {ms[f'pruner batched x{many}']:.1f} ms vs loop "
                     f"{ms[f'pruner loop x{many}']:.1f} ms = "
                     f"**{ms[f'pruner loop x{many}'] / ms[f'pruner batched x{many}']:.1f}x** (target >= 20x)")
    lines += [
        f"- pruner time = **{_pct(prune_share)} of the fast step** (target < 1% at LLaVA-1.5-7B shapes; "
        f"its FLOP share is {100 * ceil['pruner_share_of_fast']:.2f}%)",
        f"- slow step / (baseline step + pruned teacher forward) = **{_pct(slow_ratio)}** (target <= 100%; "
        f"FLOP ratio {_pct(ceil['slow_vs_full_plus_teacher'])})",
        f"- model build {build_s:.1f} s, whole run {total_s:.1f} s",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "llava", "dualspeed_patch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    run(args)


if __name__ == "__main__":
    main()
