"""The real pipeline on the tiny assets: upstream's shell scripts -> train() -> checkpoints -> load -> generate."""
import os

import pytest
import torch

from tests.helpers import BIN, ROOT, run_script

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def pretrain_dir(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "llava-tiny-pretrain"
    run_script("pretrain.sh", tiny_assets, out)
    return out


def _generate(model_path, model_base, image):
    from llava.eval.run_llava import build_parser, eval_model

    args = build_parser().parse_args(["--model-path", str(model_path), "--image-file", image, "--query",
                                      "What color is the shape?", "--temperature", "0", "--max_new_tokens", "4",
                                      "--device", "cpu", "--conv-mode", "vicuna_v1"]
                                     + (["--model-base", model_base] if model_base else []))
    return eval_model(args)


def _an_image(assets):
    import json

    with open(assets["finetune_data"]) as f:
        record = next(r for r in json.load(f) if "image" in r)
    return os.path.join(assets["image_folder"], record["image"])


def test_pretrain_writes_projector_only(pretrain_dir, tiny_assets):
    files = set(os.listdir(pretrain_dir))
    assert {"config.json", "mm_projector.bin"} <= files
    assert not any(f.endswith(".safetensors") for f in files)
    weights = torch.load(pretrain_dir / "mm_projector.bin", weights_only=True)
    assert sorted(weights) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                               "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    # Projector-only checkpoint + base LLM loads and generates.
    from llava.model.builder import load_pretrained_model

    tok, model, proc, ctx = load_pretrained_model(str(pretrain_dir), tiny_assets["model"], "llava-tiny-pretrain",
                                                  device="cpu")
    torch.testing.assert_close(model.get_model().mm_projector[0].weight, weights["model.mm_projector.0.weight"])
    assert isinstance(_generate(pretrain_dir, tiny_assets["model"], _an_image(tiny_assets)), str)


def test_lora_finetune_then_load_and_generate(pretrain_dir, tiny_assets, tmp_path):
    out = tmp_path / "llava-tiny-lora"
    proc = run_script("finetune_lora.sh", tiny_assets, out,
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain_dir / "mm_projector.bin"))
    assert "'loss'" in proc.stdout + proc.stderr or "loss" in proc.stdout
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json"} <= files
    non_lora = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any("mm_projector" in k for k in non_lora)

    from llava.model.builder import load_pretrained_model

    tok, model, proc_, ctx = load_pretrained_model(str(out), tiny_assets["model"], "llava-tiny-lora", device="cpu")
    key = next(k for k in non_lora if k.endswith("mm_projector.0.weight"))
    torch.testing.assert_close(model.get_model().mm_projector[0].weight, non_lora[key])
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged
    assert isinstance(_generate(out, tiny_assets["model"], _an_image(tiny_assets)), str)

    # scripts/merge_lora_weights.py writes a full checkpoint that loads without a base and answers the same.
    from scripts.merge_lora_weights import main as merge_main

    merged = tmp_path / "llava-tiny-merged"
    merge_main(["--model-path", str(out), "--model-base", tiny_assets["model"], "--save-model-path", str(merged)])
    tok2, model2, _, _ = load_pretrained_model(str(merged), None, "llava-tiny-merged", device="cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        if "vision_tower" not in name:
            torch.testing.assert_close(a, b, msg=name)
    assert _generate(merged, None, _an_image(tiny_assets)) == _generate(out, tiny_assets["model"], _an_image(tiny_assets))


def test_full_finetune_then_load(pretrain_dir, tiny_assets, tmp_path):
    out = tmp_path / "llava-tiny-full"
    run_script("finetune.sh", tiny_assets, out, PRETRAIN_MM_MLP_ADAPTER=str(pretrain_dir / "mm_projector.bin"),
               extra=["--per_device_train_batch_size", "2", "--max_steps", "2"])
    assert (out / "config.json").exists() and any(f.endswith(".safetensors") for f in os.listdir(out))
    from llava.model.builder import load_pretrained_model

    tok, model, proc, ctx = load_pretrained_model(str(out), None, "llava-tiny-full", device="cpu")
    assert model.get_vision_tower().is_loaded and proc is not None
    assert isinstance(_generate(out, None, _an_image(tiny_assets)), str)

    # scripts/extract_mm_projector.py pulls the projector out of the full checkpoint.
    from scripts.extract_mm_projector import main as extract_main

    extract_main(["--model-path", str(out), "--output", str(tmp_path / "projector.bin")])
    projector = torch.load(tmp_path / "projector.bin", weights_only=True)
    torch.testing.assert_close(projector["model.mm_projector.0.weight"], model.get_model().mm_projector[0].weight)

    # llava.serve.cli: a two-turn chat from scripted input.
    from llava.serve.cli import build_parser, main as cli_main

    turns = iter(["What color is the shape?", "And its shape?", ""])
    replies = cli_main(build_parser().parse_args(["--model-path", str(out), "--image-file", _an_image(tiny_assets),
                                                  "--device", "cpu", "--temperature", "0", "--max-new-tokens", "3",
                                                  "--conv-mode", "vicuna_v1"]), read=lambda prompt: next(turns))
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_two_cpu_ranks_lora(pretrain_dir, tiny_assets, tmp_path, zero):
    out = tmp_path / f"llava-tiny-lora-{zero}"
    launcher = f"{os.path.join(BIN, 'deepspeed')} --num_gpus 2 --master_port {29500 + (zero == 'zero3')}"
    proc = run_script("finetune_lora.sh", tiny_assets, out, launcher=launcher,
                      deepspeed=os.path.join(ROOT, "scripts", f"{zero}.json"),
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain_dir / "mm_projector.bin"),
                      extra=["--per_device_train_batch_size", "2", "--max_steps", "2"])
    log = proc.stdout + proc.stderr
    assert "world_size=2" in log, log[-3000:]
    assert {"adapter_model.safetensors", "non_lora_trainables.bin"} <= set(os.listdir(out))
    from llava.model.builder import load_pretrained_model

    tok, model, proc_, ctx = load_pretrained_model(str(out), tiny_assets["model"], "llava-tiny-lora", device="cpu")
    non_lora = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    key = next(k for k in non_lora if k.endswith("mm_projector.0.weight"))
    assert non_lora[key].numel() > 0  # gathered, not a ZeRO-3 placeholder
    torch.testing.assert_close(model.get_model().mm_projector[0].weight, non_lora[key])
