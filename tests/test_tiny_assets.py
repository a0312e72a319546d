"""The tiny offline assets: deterministic, loadable, and with answers that are right by construction."""
import filecmp
import json
import os
import random

import torch

from dualspeed_lab.tiny.data import SHAPE_COLORS, make_scene, render_scene


def test_two_builds_with_one_seed_are_identical(tiny_assets, tmp_path):
    from dualspeed_lab.tiny.build import build_all

    again = build_all(str(tmp_path / "again"))
    for key in ("pretrain_data", "finetune_data"):
        assert filecmp.cmp(tiny_assets[key], again[key], shallow=False), key
    with open(again["finetune_data"]) as f:
        images = [r["image"] for r in json.load(f) if "image" in r][:5]
    for rel in images:
        assert filecmp.cmp(os.path.join(tiny_assets["image_folder"], rel), os.path.join(again["image_folder"], rel),
                           shallow=False)
    from transformers import AutoTokenizer

    text = "USER: <image>\nWhat color is the circle? ASSISTANT: Red.</s>"
    assert AutoTokenizer.from_pretrained(tiny_assets["model"])(text).input_ids == \
        AutoTokenizer.from_pretrained(again["model"])(text).input_ids


def test_models_load_with_the_expected_shapes(tiny_assets):
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaForCausalLM

    tower = CLIPVisionModel.from_pretrained(tiny_assets["vision_tower"])
    out = tower(torch.zeros(1, 3, 336, 336), output_hidden_states=True)
    assert out.hidden_states[-2].shape[1] == 577  # 24 x 24 patches + CLS
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    lm = LlamaForCausalLM.from_pretrained(tiny_assets["model"])
    assert lm.config.vocab_size == len(tok)
    assert lm(input_ids=torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, len(tok))


def test_data_has_every_kind_of_sample(tiny_assets):
    with open(tiny_assets["finetune_data"]) as f:
        records = json.load(f)
    assert any("image" not in r for r in records)  # text-only
    assert any(len(r["conversations"]) >= 4 for r in records)  # multi-turn
    for r in records:
        if "image" in r:
            assert "<image>" in r["conversations"][0]["value"]
            assert os.path.isfile(os.path.join(tiny_assets["image_folder"], r["image"]))
    with open(tiny_assets["pretrain_data"]) as f:
        captions = json.load(f)
    assert all(len(r["conversations"]) == 2 and "<image>" in r["conversations"][0]["value"] for r in captions)


def test_colours_are_right_by_construction():
    rng = random.Random(3)
    for _ in range(20):
        scene = make_scene(rng)
        image = render_scene(scene)
        for s in scene["shapes"]:
            assert image.getpixel(tuple(s["center"])) == SHAPE_COLORS[s["color"]]


# ---- checks against the files on disk (JPEG round trip included), the processor, the CLI and env.sh ----
def _nearest_colour(rgb):
    return min(SHAPE_COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(SHAPE_COLORS[name], rgb)))


def _colour_at_shape_centre(path):
    """Re-derive the shape colour of a one-shape image from its pixels alone."""
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    background = px[0, 0]
    mask = np.abs(px - background).sum(-1) > 120
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())  # centroid of a convex shape lies inside it
    patch = px[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3).mean(0)
    return _nearest_colour(patch)


def test_answers_match_the_pixels_on_disk(tiny_assets):
    with open(tiny_assets["finetune_data"]) as f:
        records = json.load(f)
    checked = 0
    for r in records:
        conv = r["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            if "What color is the shape?" in q["value"]:
                path = os.path.join(tiny_assets["image_folder"], r["image"])
                assert _colour_at_shape_centre(path) in a["value"].lower(), (r["id"], a["value"])
                checked += 1
    with open(tiny_assets["pretrain_data"]) as f:
        for r in json.load(f):
            caption = r["conversations"][1]["value"]
            named = [c for c in SHAPE_COLORS if c in caption.split() or c + "." in caption.split()]
            if len(named) == 1 and " and " not in caption:
                path = os.path.join(tiny_assets["pretrain_images"], r["image"])
                assert _colour_at_shape_centre(path) == named[0], (r["id"], caption)
                checked += 1
    assert checked >= 5


def test_image_processor_gives_336_crops_without_torchvision(tiny_assets):
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(tiny_assets["vision_tower"])
    assert type(AutoImageProcessor.from_pretrained(tiny_assets["vision_tower"])).__name__ == "CLIPImageProcessorPil"
    assert proc.crop_size["height"] == proc.crop_size["width"] == 336 and proc.size["shortest_edge"] == 336
    wide = Image.new("RGB", (800, 400), (10, 200, 30))
    assert proc.preprocess(wide, return_tensors="pt")["pixel_values"].shape == (1, 3, 336, 336)


def test_rerun_is_skipped_when_the_marker_exists(tiny_assets):
    import time

    from dualspeed_lab.tiny.build import build_all

    before = os.path.getmtime(tiny_assets["finetune_data"])
    t0 = time.time()
    assert build_all(tiny_assets["root"]) == tiny_assets
    assert time.time() - t0 < 1.0
    assert os.path.getmtime(tiny_assets["finetune_data"]) == before


def test_cli_help_and_env_sh(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "scripts/build_tiny_assets.py", "--help"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--out", "--seed", "--num-pretrain", "--num-finetune", "--force"):
        assert flag in out
    env = subprocess.run(["bash", "-c", "source scripts/tiny/env.sh && env"], cwd=repo, capture_output=True,
                         text=True, check=True, env={"PATH": os.environ["PATH"], "TINY_ROOT": "/x"}).stdout
    got = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert got["MODEL_NAME_OR_PATH"] == "/x/models/vicuna-tiny"
    assert got["VISION_TOWER"] == "/x/models/clip-vit-tiny-patch14-336"
    assert got["DATA_PATH"] == "/x/data/llava_v1_5_mix_tiny.json" and got["IMAGE_FOLDER"] == "/x/data"
    assert got["PRETRAIN_DATA_PATH"] == "/x/data/LLaVA-Pretrain/blip_laion_cc_sbu_tiny.json"
    assert got["PRETRAIN_IMAGE_FOLDER"] == "/x/data/LLaVA-Pretrain/images"
