"""DualSpeed through the real scripts: the switch, checkpoints with the isolator, ranks that agree on modes,
and pruned inference through the runner."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dualspeed_patch import schedule
from tests.helpers import BIN, ROOT, run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ds_pretrain(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("dsckpt") / "llava-tiny-pretrain-dualspeed"
    proc = run_script("pretrain.sh", tiny_assets, out, DUALSPEED="1")
    return out, proc.stdout + proc.stderr


def test_pretrain_switch_prunes_every_step_and_saves_the_isolator(ds_pretrain):
    out, log = ds_pretrain
    assert "[dualspeed] on" in log
    assert {"mm_projector.bin", "mode_isolator.bin", "config.json"} <= set(os.listdir(out))
    assert torch.load(out / "mode_isolator.bin", weights_only=True)["weight"].shape[0] == 4
    assert "'dualspeed/slow_frac': '0'" in log and "'dualspeed/visual_kept_frac': '0.09896'" in log


def test_without_the_switch_nothing_changes(tiny_assets, tmp_path):
    proc = run_script("pretrain.sh", tiny_assets, tmp_path / "plain", extra=["--max_steps", "1"])
    assert "dualspeed" not in (proc.stdout + proc.stderr)
    assert "mode_isolator.bin" not in os.listdir(tmp_path / "plain")


def _modes(path):
    with open(path) as f:
        return [(r["step"], r["micro"], r["mode"]) for r in map(json.loads, f)]


@pytest.mark.parametrize("zero,method", [("zero2", "divprune"), ("zero3", "divprune"), ("zero3", "duet")])
def test_two_cpu_ranks_agree_on_every_mode(ds_pretrain, tiny_assets, tmp_path, zero, method):
    """duet on ZeRO-3, with both of DUET's stages: stage A's merge calls the (partitioned) projector inside the
    merge wrapper, and stage B's ranking calls the next decoder layer's norm and q/k projections outside that
    layer's forward."""
    pretrain, _ = ds_pretrain
    stage_b = ["--duet_stage_b", "True", "--duet_stage_b_layers", "1", "--duet_stage_b_ratios", "0.5"] \
        if method == "duet" else []
    out = tmp_path / f"lora-{zero}-{method}"
    port = 29600 + (zero == "zero3") + 2 * (method == "duet")
    launcher = f"{os.path.join(BIN, 'deepspeed')} --num_gpus 2 --master_port {port}"
    config = "zero3_no_inflight.json" if zero == "zero3" else "zero2.json"
    log_path = str(tmp_path / "modes.{rank}.jsonl")
    proc = run_script("finetune_lora.sh", tiny_assets, out, launcher=launcher,
                      deepspeed=os.path.join(ROOT, "scripts", config),
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain / "mm_projector.bin"),
                      extra=["--dualspeed", "True", "--slow_mode_ratio", "0.5", "--mode_log", log_path,
                             "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                             "--max_steps", "3", "--vtp_method", method, *stage_b])
    assert "world_size=2" in proc.stdout + proc.stderr
    assert ("dualspeed/visual_layer_avg_frac" in proc.stdout + proc.stderr) == bool(stage_b)
    rank0, rank1 = _modes(log_path.format(rank=0)), _modes(log_path.format(rank=1))
    assert rank0 == rank1 and len(rank0) == 6
    expected = ["slow" if schedule.is_slow(42, s, m, 0.5) else "fast" for s in range(3) for m in range(2)]
    assert [m for _, _, m in rank0] == expected  # --seed defaults to 42 in TrainingArguments
    assert "slow" in expected and "fast" in expected
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "non_lora_trainables.bin", "mode_isolator.bin"} <= files
    assert torch.load(out / "mode_isolator.bin", weights_only=True)["weight"].numel() > 0  # gathered


def test_sft_then_pruned_inference(ds_pretrain, tiny_assets, tmp_path):
    pretrain, _ = ds_pretrain
    out = tmp_path / "llava-tiny-lora-dualspeed"
    proc = run_script("finetune_lora.sh", tiny_assets, out, DUALSPEED="1",
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain / "mm_projector.bin"),
                      extra=["--slow_mode_ratio", "0.5", "--max_steps", "4"])
    log = proc.stdout + proc.stderr
    assert "Loaded mode isolator" in log and "'dualspeed/kl'" in log
    with open(tiny_assets["finetune_data"]) as f:
        image = next(os.path.join(tiny_assets["image_folder"], r["image"]) for r in json.load(f) if "image" in r)
    question = tmp_path / "q.jsonl"
    question.write_text(json.dumps({"question_id": 1, "image": os.path.basename(image), "text": "Color?"}) + "\n")
    for flags in ([], ["--pruned"], ["--pruned", "--no_isolator"]):
        answers = tmp_path / f"answers{len(flags)}.jsonl"
        cmd = [sys.executable, "-m", "dualspeed_patch.run", *flags, "llava.eval.model_vqa_loader",
               "--model-path", str(out), "--model-base", tiny_assets["model"], "--image-folder",
               os.path.dirname(image), "--question-file", str(question), "--answers-file", str(answers),
               "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "3", "--num-workers", "0",
               "--device", "cpu"]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]})
        assert run.returncode == 0, run.stderr[-3000:]
        assert ("Pruned inference" in run.stderr) == bool(flags)
        row = json.loads(answers.read_text())
        assert row["question_id"] == 1 and isinstance(row["text"], str)
