"""dualspeed_lab/toy/scene_warmup.py: the toy LLM's second warm-up stage (questions about scenes written in word
embeddings). Layouts, LLaVA tokenisation, held-out scenes, and a few training steps on a tiny LLM."""
import json
import os
import random

import pytest
import torch

from dualspeed_lab.toy import lm_warmup, render, scenes, task
from dualspeed_lab.toy import scene_warmup as sw

TYPES = ["color", "shape"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scene_warmup")
    data = str(root / "task")
    task.build_task(data, seed=0, sizes={"pretrain": 0, "train": 6, "val": 0, "test": 4}, types=TYPES)
    res = lm_warmup.build_llm(str(root / "llm"), data, steps=0, progress=False, hidden_size=32,
                              intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2)
    from transformers import AutoTokenizer, LlamaForCausalLM

    return {"task": data, "tok": AutoTokenizer.from_pretrained(res["path"]),
            "lm": LlamaForCausalLM.from_pretrained(res["path"]).float()}


def test_layouts(setup):
    tok, emb = setup["tok"], setup["lm"].get_input_embeddings().weight.detach()
    word = sw.WordVectors(emb, tok)
    scene = scenes.make_scene(random.Random(3))
    gt = render.ground_truth(scene)
    grid = sw.scene_tokens(scene["objects"], gt["patch_map"], word, "grid")
    compact = sw.scene_tokens(scene["objects"], None, word, "compact")
    assert grid.shape == (scenes.GRID * scenes.GRID, emb.shape[1])
    assert compact.shape == (len(scene["objects"]), emb.shape[1])
    for k, o in enumerate(scene["objects"]):
        ids = lambda w: tok(" " + w, add_special_tokens=False).input_ids  # noqa: E731
        want = sum(emb[ids(w)].mean(0) for w in (o["color"], o["shape"], o["size"], o["glyph"] or "none")) / 2
        assert torch.allclose(compact[k], want)
    for p, ch in enumerate("".join(gt["patch_map"])):
        assert torch.equal(grid[p], torch.zeros_like(grid[p]) if ch == "." else compact[int(ch)])
    with pytest.raises(ValueError, match="layout"):
        sw.scene_tokens(scene["objects"], None, word, "rows")


def test_conversation_matches_the_task_records(setup):
    """The warm-up's conversation is tokenised exactly as SFT tokenises the task's train.json record."""
    from llava import conversation as conversation_lib
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.train.preprocess import preprocess

    sample = next(task.iter_split("train", 1, seed=0, questions_per_image=2, types=TYPES))
    ids, labels = sw.conversation_ids(sample["questions"], setup["tok"])
    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    want = preprocess([task._llava_record(sample)["conversations"]], setup["tok"], has_image=True)
    assert torch.equal(ids, want["input_ids"][0]) and torch.equal(labels, want["labels"][0])
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1

    x, y = sw.splice(ids, labels, torch.zeros(5, setup["lm"].config.hidden_size), setup["lm"].get_input_embeddings())
    assert x.shape[0] == len(ids) - 1 + 5 and y.shape[0] == x.shape[0]
    p = int((ids == IMAGE_TOKEN_INDEX).nonzero())
    assert (y[p:p + 5] == IGNORE_INDEX).all()
    assert int((y != IGNORE_INDEX).sum()) == int((labels != IGNORE_INDEX).sum())


def test_draw_skips_held_out_scenes(setup):
    held = sw.held_out_keys(setup["task"])
    truth = json.load(open(os.path.join(setup["task"], "test", "objects.json")))
    assert held == {scenes.scene_key(gt) for gt in truth.values()} and len(held) == 4
    first, _ = sw.draw(random.Random("x"), TYPES, set())
    again, qs = sw.draw(random.Random("x"), TYPES, {scenes.scene_key(first)})
    assert scenes.scene_key(again) != scenes.scene_key(first)
    assert qs and {q["type"] for q in qs} <= set(TYPES)


def test_training_steps_and_accuracy(setup):
    lm = setup["lm"]
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    hist = sw.scene_warmup(lm, setup["tok"], 4, TYPES, lr=1e-3, batch_size=2, compact_batch=3, grid_fraction=0.5,
                           noise=0.1, data_root=setup["task"], progress=False)
    assert [h["step"] for h in hist] == [0, 1, 2, 3]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert {h["layout"] for h in hist} <= set(sw.LAYOUTS)
    assert any(not torch.equal(before[k], v) for k, v in lm.state_dict().items())
    acc = sw.scene_accuracy(lm, setup["tok"], TYPES, n=6, data_root=setup["task"])
    assert set(acc) <= set(TYPES) | {"all"} and 0 <= acc["all"] <= 100
    with pytest.raises(ValueError, match="types"):
        sw.scene_warmup(lm, setup["tok"], 1, ["colour"], progress=False)
