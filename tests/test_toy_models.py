"""Offline-pretrained toy components (dualspeed_lab/toy/models.py): folders load, shapes, and pretraining learns.

Tiny task (a dozen images) and tiny step counts: this checks the plumbing, not the quality (the full
build's val accuracies are in <out>/build_report.json).
"""
import os
import subprocess
import sys

import pytest
import torch

from dualspeed_lab.toy import models as toy_models
from dualspeed_lab.toy import task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"pretrain": 6, "train": 6, "val": 3, "test": 0}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy_task"))
    task.build_task(root, seed=0, sizes=SIZES)
    return root


@pytest.fixture(scope="module")
def built(toy_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy_models"))
    res = toy_models.build_toy_models(toy_data, out, seed=0, vision_steps=3, vision_batch=1, lm_steps=3,
                                      lm_batch=4, threads=None, progress=False, scene_steps=2)
    return res


def test_folders_load(built, toy_data):
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaForCausalLM

    from llava.model.multimodal_encoder.clip_encoder import load_clip_image_processor

    assert set(built) >= {"model", "vision_tower"}
    assert os.path.basename(built["vision_tower"]) == toy_models.VISION_DIR
    assert os.path.basename(built["model"]) == toy_models.LLM_DIR
    tower = CLIPVisionModel.from_pretrained(built["vision_tower"]).eval()
    cfg = tower.config
    assert (cfg.image_size, cfg.patch_size) == (336, 14)
    proc = load_clip_image_processor(built["vision_tower"])
    assert proc.crop_size == {"height": 336, "width": 336}
    image = os.path.join(toy_data, "val", "images", "000", "000000.jpg")
    from PIL import Image

    with Image.open(image) as im:
        pixels = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    # Training reads the same pixels as the processor (square 336 images: resize / crop are the identity).
    assert torch.allclose(pixels.float(), toy_models._pixels([image]), atol=1e-5)
    with torch.no_grad():
        out = tower(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 577, cfg.hidden_size)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    # The last layer is an exact identity: what LLaVA reads (hidden_states[-2]) is the final state too.
    assert torch.equal(out.hidden_states[-2], out.last_hidden_state)
    assert torch.allclose(out.hidden_states[-2], toy_models._read_layer(tower, pixels), atol=1e-5)

    tok = AutoTokenizer.from_pretrained(built["model"])
    llm = LlamaForCausalLM.from_pretrained(built["model"]).eval()
    assert llm.config.vocab_size == len(tok)
    assert llm.config.max_position_embeddings == 2048
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    ids = tok("USER: What color is the square? ASSISTANT: Blue</s>").input_ids
    assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids
    with torch.no_grad():
        logits = llm(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))

    report = built["report"]
    assert os.path.exists(os.path.join(os.path.dirname(built["model"]), "build_report.json"))
    assert report["vision"]["processor_max_abs_diff"] < 1e-5
    assert "val_patch_accuracy" in report["vision"]
    sw = report["llm"]["scene_warmup"]  # the task's question types (all 7 here), 2 steps
    assert sw["steps"] == 2 and sw["types"] == list(task.QUESTION_TYPES) and 0 <= sw["accuracy"]["all"] <= 100
    assert report["recipe"] == toy_models.RECIPE


def test_warmup_text_is_llava_rendering(built, toy_data):
    from transformers import AutoTokenizer

    corpus = toy_models.llm_texts(toy_data)
    prompts = corpus["prompts"]
    assert any(p.startswith("<image>") and p.endswith("\n") for p in prompts)  # plain captions
    qa = [p for p in prompts if "Answer the question using a single word or phrase." in p]
    assert qa and all(p.startswith("A chat between") and "USER: <image>\n" in p and p.endswith("</s>") for p in qa)
    tok = AutoTokenizer.from_pretrained(built["model"])
    ids = toy_models._tokenize_without_image(qa[0], tok)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and all(i >= 0 for i in ids)


def test_crops_match_full_forward():
    model = toy_models.make_vision_model(0)
    x = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        full = model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        ids = torch.arange(576).unsqueeze(0)
        assert torch.allclose(toy_models._read_layer(model, x, ids), full, atol=1e-5)
        # A 1-cell crop (6x6 patches) at cell (1, 2) sees the position embeddings of those patches.
        crop = x[:, :, 84:168, 168:252]
        ids = torch.arange(576).view(24, 24)[6:12, 12:18].reshape(1, -1)
        assert toy_models._read_layer(model, crop, ids).shape == (1, 37, model.config.hidden_size)


def test_pretraining_reduces_patch_loss(toy_data):
    samples = toy_models.load_vision_samples(toy_data, ("pretrain",))[:2]
    lab = samples[0]["labels"]
    assert lab["color"].shape == (576,) and lab["offset"].shape == (576, 2)
    assert (lab["color"] > 0).sum() == (lab["owner"] >= 0).sum() > 0
    model = toy_models.make_vision_model(0)
    toy_models.init_from_data(model, samples, n_images=2)
    heads = toy_models.VisionHeads(model.config.hidden_size)
    pixels = toy_models._pixels([s["image"] for s in samples])
    labels = toy_models._stack_labels(samples)

    def patch_loss():
        with torch.no_grad():
            _, parts = toy_models.vision_loss(model, heads, pixels, labels, return_parts=True)
        return sum(parts[k] for k in toy_models.PATCH_HEADS)

    before = patch_loss()
    toy_models.pretrain_vision(model, samples, steps=8, batch_size=2, lr=2e-3, heads=heads, progress=False,
                               crop_cycle=(4,), full_fraction=0.0)
    after = patch_loss()
    assert after < 0.7 * before, (before, after)
    # Only the layers up to the one LLaVA reads are trained; the last stays an exact identity.
    last = toy_models._vm(model).encoder.layers[-1]
    assert float(last.self_attn.out_proj.weight.abs().sum()) == 0.0 and float(last.mlp.fc2.bias.abs().sum()) == 0.0


def test_pretraining_is_deterministic(toy_data):
    samples = toy_models.load_vision_samples(toy_data, ("pretrain",))
    states = []
    for _ in range(2):
        model = toy_models.make_vision_model(3)
        toy_models.pretrain_vision(model, samples, steps=2, batch_size=1, seed=3, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "dualspeed_lab.toy.models", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--vision-steps" in res.stdout and "--lm-steps" in res.stdout
