"""Offline-pretrained toy components (dualspeed_lab/toy/models.py, tower.py, tower_pretrain.py, lm_warmup.py):
folders load, shapes, and pretraining learns.

Tiny task (a dozen images) and tiny step counts: this checks the plumbing, not the quality (the full
build's val accuracies are in <out>/build_report.json).
"""
import os
import subprocess
import sys

import pytest
import torch

from dualspeed_lab.toy import lm_warmup, task, tower, tower_pretrain
from dualspeed_lab.toy import models as toy_models

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
    clip = CLIPVisionModel.from_pretrained(built["vision_tower"]).eval()
    cfg = clip.config
    assert (cfg.image_size, cfg.patch_size) == (336, 14)
    proc = load_clip_image_processor(built["vision_tower"])
    assert proc.crop_size == {"height": 336, "width": 336}
    image = os.path.join(toy_data, "val", "images", "000", "000000.jpg")
    from PIL import Image

    with Image.open(image) as im:
        pixels = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    # Training reads the same pixels as the processor (square 336 images: resize / crop are the identity).
    assert torch.allclose(pixels.float(), tower.load_pixels([image]), atol=1e-5)
    with torch.no_grad():
        out = clip(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 577, cfg.hidden_size)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    # The last layer is an exact identity: what LLaVA reads (hidden_states[-2]) is the final state too.
    assert torch.equal(out.hidden_states[-2], out.last_hidden_state)
    assert torch.allclose(out.hidden_states[-2], tower.read_layer(clip, pixels), atol=1e-5)

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

    corpus = lm_warmup.llm_texts(toy_data)
    prompts = corpus["prompts"]
    assert any(p.startswith("<image>") and p.endswith("\n") for p in prompts)  # plain captions
    qa = [p for p in prompts if "Answer the question using a single word or phrase." in p]
    assert qa and all(p.startswith("A chat between") and "USER: <image>\n" in p and p.endswith("</s>") for p in qa)
    tok = AutoTokenizer.from_pretrained(built["model"])
    ids = lm_warmup.tokenize_without_image(qa[0], tok)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and all(i >= 0 for i in ids)


def test_crops_match_full_forward():
    model = tower.make_vision_model(0)
    x = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        full = model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        ids = torch.arange(576).unsqueeze(0)
        assert torch.allclose(tower.read_layer(model, x, ids), full, atol=1e-5)
        # A 1-cell crop (6x6 patches) at cell (1, 2) sees the position embeddings of those patches.
        crop = x[:, :, 84:168, 168:252]
        ids = torch.arange(576).view(24, 24)[6:12, 12:18].reshape(1, -1)
        assert tower.read_layer(model, crop, ids).shape == (1, 37, model.config.hidden_size)


def test_pretraining_reduces_patch_loss(toy_data):
    samples = tower_pretrain.load_vision_samples(toy_data, ("pretrain",))[:2]
    lab = samples[0]["labels"]
    assert lab["color"].shape == (576,) and lab["offset"].shape == (576, 2)
    assert (lab["color"] > 0).sum() == (lab["owner"] >= 0).sum() > 0
    model = tower.make_vision_model(0)
    tower.init_from_data(model, samples, n_images=2)
    heads = tower_pretrain.VisionHeads(model.config.hidden_size)
    pixels = tower.load_pixels([s["image"] for s in samples])
    labels = tower_pretrain.stack_labels(samples)

    def patch_loss():
        with torch.no_grad():
            _, parts = tower_pretrain.vision_loss(model, heads, pixels, labels, return_parts=True)
        return sum(parts[k] for k in tower_pretrain.PATCH_HEADS)

    before = patch_loss()
    tower_pretrain.pretrain_vision(model, samples, steps=8, batch_size=2, lr=2e-3, heads=heads, progress=False,
                                   crop_cycle=(4,), full_fraction=0.0)
    after = patch_loss()
    assert after < 0.7 * before, (before, after)
    # Only the layers up to the one LLaVA reads are trained; the last stays an exact identity.
    last = tower.vision_body(model).encoder.layers[-1]
    assert float(last.self_attn.out_proj.weight.abs().sum()) == 0.0 and float(last.mlp.fc2.bias.abs().sum()) == 0.0


def test_pretraining_is_deterministic(toy_data):
    # One thread, as the build runs by default (DEFAULTS["threads"]): with 2 threads the patch / position
    # embeddings' gradients were seen to differ in the last bits (~5e-9) in about 1 run in 15, old code too.
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples = tower_pretrain.load_vision_samples(toy_data, ("pretrain",))
        states = []
        for _ in range(2):
            model = tower.make_vision_model(3)
            tower_pretrain.pretrain_vision(model, samples, steps=2, batch_size=1, seed=3, progress=False)
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(prev_threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_no_import_cycles():
    """The toy / tiny modules import one another without a cycle (function-level imports included): scene_warmup
    takes its schedule / optimiser / step from toy.optim, not from toy.models."""
    import ast

    pkg = os.path.join(ROOT, "dualspeed_lab")
    graph = {}
    for sub in ("toy", "tiny"):
        for f in os.listdir(os.path.join(pkg, sub)):
            if f.endswith(".py") and f != "__init__.py":
                graph[f"dualspeed_lab.{sub}.{f[:-3]}"] = os.path.join(pkg, sub, f)
    edges = {}
    for mod, path in graph.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        edges[mod] = deps & set(graph)
    done, path = set(), []

    def visit(mod):
        assert mod not in path, f"import cycle: {' -> '.join(path[path.index(mod):] + [mod])}"
        if mod in done:
            return
        path.append(mod)
        for dep in sorted(edges[mod]):
            visit(dep)
        path.pop()
        done.add(mod)

    for mod in sorted(graph):
        visit(mod)
    assert "dualspeed_lab.toy.models" not in edges["dualspeed_lab.toy.scene_warmup"]
    # What the reproduction driver imports from models.
    from dualspeed_lab.toy.models import RECIPE, build_toy_models

    assert RECIPE == toy_models.RECIPE and callable(build_toy_models)


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "dualspeed_lab.toy.models", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--vision-steps" in res.stdout and "--lm-steps" in res.stdout
