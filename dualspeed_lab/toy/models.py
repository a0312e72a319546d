#!/usr/bin/env python
"""Offline-pretrained tiny components for the toy task: a CLIP-style vision tower and a Vicuna-style LLM.

The toy task (dualspeed_lab/toy/task.py) is barely learnable by LLaVA when the vision tower is random and the LM
starts from scratch. The real recipe starts from a *pretrained* CLIP and a *trained* Vicuna, so this
script gives the tiny stand-ins an offline "pretraining" of their own, on the toy data only:

1. `<out>/clip-vit-toy-patch14-336/`: a small `transformers.CLIPVisionModel` (dualspeed_lab/toy/tower.py)
   trained with dense per-patch supervision from each image's `patch_map` on the pretrain + train images
   (dualspeed_lab/toy/tower_pretrain.py); the LLaVA-unread last layer is an exact identity.
2. `<out>/vicuna-toy/`: a SentencePiece tokenizer and a small `LlamaForCausalLM` given a text warm-up
   (dualspeed_lab/toy/lm_warmup.py), then a scene warm-up (dualspeed_lab/toy/scene_warmup.py).
3. `<out>/build_report.json`: the recipe, configs, versions, losses, timings and per-head val patch accuracies.

Determinism: everything derives from `seed` (torch.manual_seed for the inits, torch.Generators for data
order and crops), sentencepiece trains single-threaded, and torch runs with a fixed thread count
(`--threads`, default 1). Two builds on the same machine with the same arguments and thread count give
identical weights; another thread count or CPU (other BLAS / oneDNN kernels) may change float rounding,
so the weights then differ in the last bits (and drift apart over training), not in quality.
Build times and the speed of 1 vs 2 threads, as measured before: docs/toy_findings.md.

    python -m dualspeed_lab.toy.models --data /tmp/toytask --out /tmp/toymodels
    python -m dualspeed_lab.toy.models --data /tmp/toytask --out /tmp/toymodels --probe    # + the probe
    build_toy_models(data_root, out_root, seed=0)      # from Python: {model, vision_tower, report}

`--probe` (or `probe.probe_tower`) checks that the frozen tower's patch features carry the answers: a tiny
attention-pooling probe is trained on the train questions and scored per question type on val, next to the
image-blind baseline (dualspeed_lab/toy/probe.py); written to `<out>/probe_report.json`.

Sizes and defaults live in dualspeed_lab/toy/config.py; the names of the old single-module layout
(`make_vision_model`, `pretrain_vision`, `build_llm`, ...) are re-exported here.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional, Sequence

import torch

from dualspeed_lab.toy.config import DEFAULTS, LLM_CONFIG, LLM_DIR, VISION_CONFIG, VISION_DIR
from dualspeed_lab.toy.lm_warmup import build_llm, llm_texts
from dualspeed_lab.toy.probe import format_probe, probe_tower
from dualspeed_lab.toy.tower import (LOCAL_SHARPNESS, check_processor, init_from_data, make_vision_model,
                                     save_vision_tower)
from dualspeed_lab.toy.tower_pretrain import (CROP_CYCLE, FULL_FRACTION, GLYPH_WEIGHT, IMAGE_LOSS_WEIGHT, OBJECT_WEIGHT,
                                              PATCH_HEADS, SEGMENT_LAYERS, SEGMENT_LOSS_WEIGHT, VisionHeads,
                                              load_vision_samples, patch_accuracy, pretrain_vision, vision_loss)

# Bumped when the build recipe changes, so that the reproduction driver's model cache is rebuilt.
RECIPE = "toy-models-v2-scene-warmup"

__all__ = ["VISION_DIR", "LLM_DIR", "VISION_CONFIG", "LLM_CONFIG", "DEFAULTS", "RECIPE", "PATCH_HEADS",
           "load_vision_samples", "make_vision_model", "VisionHeads", "vision_loss", "pretrain_vision",
           "patch_accuracy", "save_vision_tower", "llm_texts", "build_llm", "build_toy_models", "probe_tower",
           "format_probe", "main"]


# --------------------------------------------------------------------------------------------- build
def build_toy_models(data_root: str, out_root: str, seed: int = 0, vision_steps: int = DEFAULTS["vision_steps"],
                     vision_batch: int = DEFAULTS["vision_batch"], vision_lr: float = DEFAULTS["vision_lr"],
                     lm_steps: int = DEFAULTS["lm_steps"], lm_batch: int = DEFAULTS["lm_batch"],
                     lm_lr: float = DEFAULTS["lm_lr"], vocab_size: int = DEFAULTS["vocab_size"],
                     threads: Optional[int] = DEFAULTS["threads"], eval_split: Optional[str] = "val",
                     vision_overrides: Optional[dict] = None, llm_overrides: Optional[dict] = None,
                     progress: bool = True, scene_steps: int = DEFAULTS["scene_steps"],
                     scene_lr: float = DEFAULTS["scene_lr"]) -> dict:
    """Build both folders under `out_root`; returns dict(model=<vicuna-toy>, vision_tower=<clip folder>,
    report=<timings, losses, val patch accuracies>) and writes the report to `out_root/build_report.json`."""
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _build(data_root, out_root, seed, vision_steps, vision_batch, vision_lr, lm_steps, lm_batch, lm_lr,
                      vocab_size, eval_split, vision_overrides, llm_overrides, progress, scene_steps, scene_lr)
    finally:
        torch.set_num_threads(prev_threads)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _build(data_root, out_root, seed, vision_steps, vision_batch, vision_lr, lm_steps, lm_batch, lm_lr, vocab_size,
           eval_split, vision_overrides, llm_overrides, progress, scene_steps, scene_lr) -> dict:
    t0 = time.perf_counter()
    out_root = os.path.abspath(out_root)
    os.makedirs(out_root, exist_ok=True)
    vision_dir = os.path.join(out_root, VISION_DIR)
    llm_dir = os.path.join(out_root, LLM_DIR)
    report: dict = {"recipe": RECIPE, "seed": seed, "data": os.path.abspath(data_root), "threads": torch.get_num_threads(),
                    "vision_config": dict(VISION_CONFIG, **(vision_overrides or {})),
                    "llm_config": dict(LLM_CONFIG, **(llm_overrides or {})),
                    "vision": {"steps": vision_steps, "batch": vision_batch, "lr": vision_lr,
                               "recipe": {"crop_cycle": list(CROP_CYCLE), "full_fraction": FULL_FRACTION,
                                          "object_weight": OBJECT_WEIGHT, "glyph_weight": GLYPH_WEIGHT,
                                          "segment_loss_weight": SEGMENT_LOSS_WEIGHT,
                                          "segment_layers": list(SEGMENT_LAYERS),
                                          "image_loss_weight": IMAGE_LOSS_WEIGHT,
                                          "local_sharpness": LOCAL_SHARPNESS}},
                    "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
                    "llm": {"steps": lm_steps, "batch": lm_batch, "lr": lm_lr}}

    samples = load_vision_samples(data_root, ("pretrain", "train"))
    model = make_vision_model(seed, **(vision_overrides or {}))
    init_from_data(model, samples, seed=seed)
    res = pretrain_vision(model, samples, vision_steps, vision_batch, vision_lr, seed=seed, progress=progress)
    report["vision"].update(seconds=round(res["seconds"], 1), images_seen=res["images"],
                            pool_images=len(samples), first_loss=res["history"][0], last_loss=res["history"][-1],
                            last_parts=res["parts"])
    save_vision_tower(model, vision_dir)
    report["vision"]["processor_max_abs_diff"] = check_processor(vision_dir, samples[0]["image"])

    llm = build_llm(llm_dir, data_root, seed=seed, steps=lm_steps, batch_size=lm_batch, lr=lm_lr,
                    vocab_size=vocab_size, progress=progress, scene_steps=scene_steps, scene_lr=scene_lr,
                    **(llm_overrides or {}))
    report["llm"].update(seconds=round(llm["seconds"], 1), n_sequences=llm["n_sequences"],
                         vocab_size=llm["vocab_size"], first_loss=llm["history"][0], last_loss=llm["history"][-1],
                         val_loss=llm["eval_loss"], scene_warmup=llm["scene"])
    report["build_seconds"] = round(time.perf_counter() - t0, 1)

    if eval_split and os.path.exists(os.path.join(data_root, eval_split, "objects.json")):
        t1 = time.perf_counter()
        val = load_vision_samples(data_root, (eval_split,))
        report["vision"][f"{eval_split}_patch_accuracy"] = patch_accuracy(model, res["heads"], val)
        report["eval_seconds"] = round(time.perf_counter() - t1, 1)
    with open(os.path.join(out_root, "build_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return {"model": llm_dir, "vision_tower": vision_dir, "report": report}


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Pretrain the toy CLIP tower and warm up the toy Vicuna LLM offline (dualspeed_lab/toy/task.py data).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="the toy task folder (dualspeed_lab/toy/task.py --out)")
    parser.add_argument("--out", required=True, help=f"output folder: <out>/{VISION_DIR}, <out>/{LLM_DIR}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-steps", type=int, default=DEFAULTS["vision_steps"])
    parser.add_argument("--vision-batch", type=int, default=DEFAULTS["vision_batch"])
    parser.add_argument("--vision-lr", type=float, default=DEFAULTS["vision_lr"])
    parser.add_argument("--lm-steps", type=int, default=DEFAULTS["lm_steps"])
    parser.add_argument("--lm-batch", type=int, default=DEFAULTS["lm_batch"])
    parser.add_argument("--lm-lr", type=float, default=DEFAULTS["lm_lr"])
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS["vocab_size"])
    parser.add_argument("--scene-steps", type=int, default=DEFAULTS["scene_steps"],
                        help="steps of the LLM's scene warm-up (dualspeed_lab/toy/scene_warmup.py; 0: text warm-up only)")
    parser.add_argument("--scene-lr", type=float, default=DEFAULTS["scene_lr"], help="scene warm-up peak lr")
    parser.add_argument("--vision-width", type=int, default=VISION_CONFIG["hidden_size"],
                        help="CLIP hidden size (MLP 4x)")
    parser.add_argument("--vision-layers", type=int, default=VISION_CONFIG["num_hidden_layers"],
                        help="CLIP layers, the last one an identity (LLaVA reads hidden_states[-2])")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch CPU threads")
    parser.add_argument("--no-eval", action="store_true", help="skip the val patch accuracies")
    parser.add_argument("--probe", action="store_true", help="also run the learnability probe (frozen tower)")
    parser.add_argument("--probe-only", action="store_true", help="only run the probe on an existing --out")
    parser.add_argument("--probe-steps", type=int, default=1000)
    parser.add_argument("--probe-train-images", type=int, default=None, help="train images for the probe (all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    out = {"model": os.path.join(os.path.abspath(args.out), LLM_DIR),
           "vision_tower": os.path.join(os.path.abspath(args.out), VISION_DIR)}
    if not args.probe_only:
        vo = {}
        if args.vision_width != VISION_CONFIG["hidden_size"]:
            vo.update(hidden_size=args.vision_width, intermediate_size=4 * args.vision_width,
                      projection_dim=args.vision_width)
        if args.vision_layers != VISION_CONFIG["num_hidden_layers"]:
            vo["num_hidden_layers"] = args.vision_layers
        out = build_toy_models(args.data, args.out, seed=args.seed, vision_steps=args.vision_steps,
                               vision_batch=args.vision_batch, vision_lr=args.vision_lr, lm_steps=args.lm_steps,
                               lm_batch=args.lm_batch, lm_lr=args.lm_lr, vocab_size=args.vocab_size,
                               threads=args.threads, eval_split=None if args.no_eval else "val",
                               vision_overrides=vo, progress=not args.quiet, scene_steps=args.scene_steps,
                               scene_lr=args.scene_lr)
        rep = out["report"]
        print(f"vision tower: {out['vision_tower']}  ({rep['vision']['seconds']} s, "
              f"loss {rep['vision']['first_loss']:.3f} -> {rep['vision']['last_loss']:.3f})")
        print(f"LLM:          {out['model']}  ({rep['llm']['seconds']} s, loss {rep['llm']['first_loss']:.3f} -> "
              f"{rep['llm']['last_loss']:.3f}, val {rep['llm']['val_loss']:.3f}, vocab {rep['llm']['vocab_size']})")
        sw = rep["llm"].get("scene_warmup")
        if sw:
            print(f"scene warm-up: {sw['steps']} steps on {sw['types']} ({sw['seconds']} s, loss "
                  f"{sw['first_loss']:.3f} -> {sw['last_loss']:.3f}), accuracy on fresh scenes {sw['accuracy']}")
        print(f"build: {rep['build_seconds']} s")
        acc = rep["vision"].get("val_patch_accuracy")
        if acc:
            print("val patch accuracy (%):")
            for k, v in acc.items():
                print(f"  {k:28s} {v:6.1f}" if "offset" not in k else f"  {k:28s} {v:6.3f} (mean L1, patches)")
    if args.probe or args.probe_only:
        res = probe_tower(out["vision_tower"], args.data, seed=args.seed, steps=args.probe_steps,
                          train_images=args.probe_train_images, threads=args.threads, progress=not args.quiet)
        print(f"probe: {res['n_train_questions']} train questions ({res['train_images']} images), "
              f"encode {res['encode_seconds']} s, train {res['train_seconds']} s")
        print(format_probe(res))
        with open(os.path.join(args.out, "probe_report.json"), "w") as f:
            json.dump(res, f, indent=1)
        out["probe"] = res
    return out


if __name__ == "__main__":
    main()
