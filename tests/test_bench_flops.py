"""The DualSpeed FLOP model (dualspeed_lab/bench/flops.py) and a smoke run of the step benchmark."""
import os
import subprocess
import sys

import pytest

from dualspeed_lab.bench import flops
from tests.helpers import ROOT

PS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def test_llava15_pretrain_ceiling_is_near_the_published_7x():
    c = flops.ceilings(flops.LLAVA15_7B, T=15, p=0.9, isolator_len=4, stage="pretrain")
    assert c["k"] == 57
    assert 5.0 < c["fast_speedup"] < 9.0
    assert c["fast_speedup"] == pytest.approx(6.99, abs=0.1)   # speed_limits.md, averaged over 558K
    assert c["slow_speedup"] < 1.0                              # slow = full step + teacher forward
    assert c["slow_vs_full_plus_teacher"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("shapes", [flops.LLAVA15_7B, flops.LLAVA_NEXT_7B, flops.TINY], ids=lambda s: s.name)
@pytest.mark.parametrize("stage", flops.STAGES)
def test_fast_flops_decrease_monotonically_with_p(shapes, stage):
    fast = [flops.ceilings(shapes, T=64, p=p, stage=stage)["fast_flops"] for p in PS]
    assert all(a > b for a, b in zip(fast, fast[1:])), fast
    base = flops.ceilings(shapes, T=64, p=0.5, stage=stage)["baseline_flops"]
    assert fast[-1] < base


def test_step_components_and_training_multipliers():
    s = flops.LLAVA15_7B
    fwd = flops.step_flops(s, 15, 576, "pretrain", grad=False)
    pt = flops.step_flops(s, 15, 576, "pretrain", ckpt=False)
    full = flops.step_flops(s, 15, 576, "sft_full", ckpt=False)
    lora = flops.step_flops(s, 15, 576, "sft_lora", ckpt=False)
    assert fwd["vit"] == pytest.approx(381.9e9, rel=1e-3)      # CLIP ViT-L/14-336, one crop
    assert pt["llm_linear"] == pytest.approx(2 * fwd["llm_linear"])   # fwd + dX
    assert full["llm_linear"] == pytest.approx(3 * fwd["llm_linear"])  # fwd + dX + dW
    assert lora["lora"] > 0 and pt["lora"] == 0
    ck = flops.step_flops(s, 15, 576, "pretrain", ckpt=True)
    assert ck["llm_linear"] == pytest.approx(3 * fwd["llm_linear"])     # + recompute
    two = flops.step_flops(s, 15, 576, "pretrain", batch=2)
    assert two["total"] == pytest.approx(2 * ck["total"])
    assert flops.LLAVA_NEXT_7B.visual_tokens == 2928 and flops.LLAVA_NEXT_7B.crops_per_image == 5


def test_from_model_reads_the_shapes(tmp_path):
    from tests.helpers import build_tiny_clip, make_tiny_llava

    model = make_tiny_llava(build_tiny_clip(tmp_path / "clip"))
    shapes = flops.from_model(model)
    assert (shapes.llm.hidden, shapes.llm.layers, shapes.llm.ff, shapes.llm.vocab) == (32, 1, 64, 64)
    assert (shapes.llm.heads, shapes.llm.kv_heads) == (4, 2)
    assert (shapes.vit.width, shapes.vit.layers, shapes.vit.tokens) == (64, 3, 577)
    assert shapes.projector == ((64, 32), (32, 32))
    assert shapes.visual_tokens == 576 and shapes.crops_per_image == 1


def test_bench_step_tiny_prints_the_table():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "dualspeed_lab.bench.bench_step", "--preset", "tiny", "--repeats", "1", "--warmup", "0",
                           "--threads", "1", "--pruner-images", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from dualspeed_lab.bench.bench_step import TABLE_HEADER

    assert TABLE_HEADER in proc.stdout
    for row in ("baseline step", "fast step", "slow step", "pruned teacher forward", "pruner batched"):
        assert row in proc.stdout
    assert "of the ceiling" in proc.stdout


def test_duet_stage_a_flops_need_the_vit_and_projector_shapes():
    from dualspeed_lab.bench import flops as fm

    with pytest.raises(ValueError, match="needs shapes"):
        fm.pruner_flops(576, 57, 4096, "duet")
    s = fm.LLAVA15_7B
    duet = fm.pruner_flops(576, 57, s.llm.hidden, "duet", s)
    # one ViT layer's keys over 577 tokens (1024 wide) plus the projector on 57 tokens, fwd + bwd
    keys = 2.0 * 577 * 1024 * 1024
    projector = sum(fm.projector_flops(s.projector, 57, grad=True))
    assert keys + projector < duet < 1.1 * (keys + projector)
    ceil = fm.ceilings(s, T=128, method="duet")
    assert ceil["fast_speedup"] == pytest.approx(fm.ceilings(s, T=128, method="divprune")["fast_speedup"], rel=0.02)
