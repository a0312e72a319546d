"""The tiny offline assets: deterministic, loadable, and with answers that are right by construction."""
import filecmp
import json
import os
import random

import torch

from scripts.tiny.data import SHAPE_COLORS, make_scene, render_scene


def test_two_builds_with_one_seed_are_identical(tiny_assets, tmp_path):
    from scripts.build_tiny_assets import build_all

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
