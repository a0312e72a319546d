"""dualspeed_lab/toy/lm_probe.py on a tiny toy task with untrained tiny models: plumbing, cache, determinism."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dualspeed_lab.toy import config, lm_probe, lm_warmup, task, tower

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_probe")
    data = str(root / "task")
    task.build_task(data, seed=0, sizes={"pretrain": 0, "train": 6, "val": 0, "test": 4})
    tower_dir = str(root / "tower")
    tower.make_vision_model(0).save_pretrained(tower_dir)
    # build_llm trains a tokenizer on the toy text (the toy words must be in its vocabulary); 0 LM steps.
    llm = lm_warmup.build_llm(str(root / "llm"), data, steps=0, progress=False, hidden_size=32,
                              intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2)["path"]
    return {"root": root, "task": data, "tower": tower_dir, "llm": llm}


def _run(setup, name, *extra):
    out = str(setup["root"] / f"{name}.json")
    argv = ["--task", setup["task"], "--vision-tower", setup["tower"], "--llm", setup["llm"],
            "--features", str(setup["root"] / "feats.pt"), "--steps", "2", "--eval-every", "2", "--batch", "4",
            "--json", out, "--quiet", *extra]
    res = lm_probe.main(argv)
    with open(out) as f:
        assert json.load(f)["losses"] == res["losses"]
    return res


def test_curve_cache_and_determinism(setup):
    first = _run(setup, "a")
    (point,) = first["curve"]
    assert point["step"] == 2 and len(first["losses"]) == 2
    present = {json.loads(line)["type"] for line in open(os.path.join(setup["task"], "test", "questions.jsonl"))}
    assert set(point["acc"]) == present | {"all"} == set(first["chance"])
    assert all(0.0 <= v <= 100.0 for v in point["acc"].values())
    assert all(torch.isfinite(torch.tensor(first["losses"])))

    cache = torch.load(str(setup["root"] / "feats.pt"))
    for split, n in (("train", 6), ("test", 4)):
        images, feats = cache[split]
        assert len(images) == n and feats.shape == (n, 576, config.VISION_CONFIG["hidden_size"])
    again = _run(setup, "b")  # same seed, features now read from the cache
    assert again["losses"] == first["losses"] and again["curve"][0]["acc"] == point["acc"]
    other = _run(setup, "c", "--seed", "1")
    assert other["losses"] != first["losses"]


def test_variants_run(setup):
    # Multi-turn re-derives the train scenes (it raises if they do not match the built task), LoRA,
    # question-first layout, a subset of the visual tokens and a type filter, all in one run.
    res = _run(setup, "d", "--turns", "3", "--lora", "2", "--question-first", "--keep", "0.25",
               "--types", "color,shape,exists,count")
    assert res["n_train"] == 6 and set(res["curve"][0]["acc"]) <= {"color", "shape", "exists", "count", "all"}
    assert all(0.0 <= v <= 100.0 for v in res["curve"][0]["acc"].values())


def test_help():
    res = subprocess.run([sys.executable, "-m", "dualspeed_lab.toy.lm_probe", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--features" in res.stdout and "--turns" in res.stdout


def test_oracle_features_are_the_objects_word_embeddings(setup):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(setup["llm"])
    lm = LlamaForCausalLM.from_pretrained(setup["llm"])
    feats = lm_probe.oracle_features(setup["task"], tok, lm)
    images, x = feats["test"]
    truth = json.load(open(os.path.join(setup["task"], "test", "objects.json")))[images[0]]
    emb = lm.get_input_embeddings().weight.detach()

    def word(w):
        return emb[tok(" " + w, add_special_tokens=False).input_ids].mean(0)

    flat = "".join(truth["patch_map"])
    for p, ch in enumerate(flat):
        if ch == ".":
            assert not x[0, p].any()
        else:
            o = truth["objects"][int(ch)]
            want = (word(o["color"]) + word(o["shape"]) + word(o["size"]) + word(o["glyph"] or "none")) / 2
            assert torch.allclose(x[0, p].float(), want, atol=1e-3)
    res = lm_probe.main(["--task", setup["task"], "--llm", setup["llm"], "--oracle", "--steps", "2",
                         "--eval-every", "2", "--batch", "4", "--quiet"])
    assert len(res["losses"]) == 2 and all(0.0 <= v <= 100.0 for v in res["curve"][0]["acc"].values())
