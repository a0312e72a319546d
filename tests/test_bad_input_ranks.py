"""A rank that stalls (alive, not dead) ends the run after --ddp_timeout with one clear line, instead of leaving
the other ranks waiting (30 minutes on DeepSpeed's own groups, or forever) with no message."""
import os
import subprocess
import textwrap
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llava.train import cpu_distributed
from llava.train.cpu_distributed import (CollectiveTimeoutError, ddp_timeout_from_argv, explain_collective_timeouts,
                                         maybe_setup_cpu_deepspeed)
from tests.helpers import BIN, ROOT, TINY_FLAGS

GLOO_TIMEOUT = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                            "20000ms for recv operation to complete")


# ---- --ddp_timeout before TrainingArguments exists ---------------------------------------------------------

@pytest.mark.parametrize("argv, seconds", [
    ([], 1800),  # transformers' default, unchanged
    (["--ddp_timeout", "20"], 20),
    (["--ddp_timeout=20"], 20),
    (["--ddp_timeout", "20", "--ddp_timeout", "7"], 7),  # argparse keeps the last value
])
def test_ddp_timeout_is_read_from_argv(argv, seconds):
    assert ddp_timeout_from_argv(argv) == seconds


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", ""])
def test_a_bad_ddp_timeout_is_refused_naming_the_flag(value):
    with pytest.raises(ValueError, match="--ddp_timeout must be a whole number of seconds > 0"):
        ddp_timeout_from_argv([f"--ddp_timeout={value}"])


def test_training_arguments_refuse_a_non_positive_ddp_timeout(tmp_path):
    from llava.train.arguments import TrainingArguments

    with pytest.raises(ValueError, match="--ddp_timeout must be a whole number of seconds > 0, got 0"):
        TrainingArguments(output_dir=str(tmp_path), ddp_timeout=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the helper steps aside")
def test_the_cpu_group_gets_the_timeout(monkeypatch):
    import accelerate

    created = {}
    monkeypatch.setattr(accelerate, "PartialState", lambda **kw: created.update(kw))
    monkeypatch.setattr(dist, "new_group", dist.new_group)  # restored after the test
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("LLAVA_CPU_DEEPSPEED", "0")
    assert maybe_setup_cpu_deepspeed(["--deepspeed", "scripts/zero2.json", "--ddp_timeout", "20"])
    assert created == {"backend": "gloo", "timeout": timedelta(seconds=20)}


def test_later_groups_inherit_the_timeout_unless_given_one(monkeypatch):
    calls = []

    def fake_new_group(ranks=None, timeout=None, backend=None, pg_options=None):
        calls.append((ranks, timeout, backend))

    monkeypatch.setattr(dist, "new_group", fake_new_group)
    cpu_distributed._new_groups_inherit(timedelta(seconds=20))
    dist.new_group([0, 1])  # how DeepSpeed creates its data-parallel group
    dist.new_group([0], timedelta(seconds=5), "gloo")
    dist.new_group(ranks=[1], timeout=timedelta(seconds=6))
    cpu_distributed._new_groups_inherit(timedelta(seconds=30))  # a second setup wraps the original, not a wrapper
    dist.new_group([0])
    assert calls == [([0, 1], timedelta(seconds=20), None), ([0], timedelta(seconds=5), "gloo"),
                     ([1], timedelta(seconds=6), None), ([0], timedelta(seconds=30), None)]


def test_the_dualspeed_entry_hands_ddp_timeout_to_the_forks_train():
    # dualspeed_patch.train parses its own flags and runs the fork's train() on the rest, which sets up the group.
    from dualspeed_patch.train import split_args

    _, rest = split_args(["--dualspeed", "True", "--ddp_timeout", "15", "--deepspeed", "scripts/zero2.json"])
    assert ddp_timeout_from_argv(rest) == 15 and "--deepspeed" in rest


# ---- the error a user sees ---------------------------------------------------------------------------------

def test_a_collective_timeout_becomes_one_clear_line_with_the_cause_chained():
    with pytest.raises(CollectiveTimeoutError) as info:
        with explain_collective_timeouts(["--ddp_timeout", "20"]):
            raise GLOO_TIMEOUT
    assert str(info.value).startswith("rank 0: a collective timed out after --ddp_timeout=20 s (another rank "
                                      "stalled or died); ")
    assert info.value.__cause__ is GLOO_TIMEOUT


def test_a_timeout_deeper_in_the_chain_is_found():
    with pytest.raises(CollectiveTimeoutError):
        with explain_collective_timeouts([]):
            try:
                raise GLOO_TIMEOUT
            except RuntimeError as e:
                raise ValueError("while saving") from e


@pytest.mark.parametrize("error", [RuntimeError("DataLoader timed out after 5 seconds"), ValueError("bad flag"),
                                   RuntimeError("Connection closed by peer")])
def test_other_errors_pass_unchanged(error):
    with pytest.raises(type(error)) as info:
        with explain_collective_timeouts([]):
            raise error
    assert info.value is error


# ---- real gloo groups, two processes -----------------------------------------------------------------------

def _stall_worker(rank, store, result, timeout_s):
    """Rank 1 stalls until rank 0 has reported; rank 0 all-reduces on a group created after the world group,
    as DeepSpeed's data-parallel group is."""
    os.environ["RANK"] = str(rank)
    cpu_distributed._new_groups_inherit(timedelta(seconds=timeout_s))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=timeout_s))
    group = dist.new_group([0, 1])
    if rank == 1:
        deadline = time.time() + 120
        while not os.path.exists(result) and time.time() < deadline:
            time.sleep(0.2)
        os._exit(0)  # the group is broken on the other side; skip its teardown
    start = time.time()
    try:
        with explain_collective_timeouts([f"--ddp_timeout={timeout_s}"]):
            dist.all_reduce(torch.ones(2), group=group)
        message = "no error"
    except CollectiveTimeoutError as e:
        message = str(e)
    with open(result + ".tmp", "w") as f:
        f.write(f"{time.time() - start:.1f}\n{message}")
    os.replace(result + ".tmp", result)
    os._exit(0)


def test_a_stalled_rank_times_out_a_later_group_after_ddp_timeout(tmp_path):
    result = str(tmp_path / "result")
    mp.start_processes(_stall_worker, args=(str(tmp_path / "store"), result, 3), nprocs=2, start_method="spawn")
    elapsed, message = open(result).read().split("\n", 1)
    # torch's own default for such a group is 30 minutes; here it follows --ddp_timeout.
    assert 2.5 <= float(elapsed) < 20, elapsed
    assert message.startswith("rank 0: a collective timed out after --ddp_timeout=3 s"), message


# ---- the real launcher: deepspeed, 2 CPU ranks, one stalls at step 2 -----------------------------------------

STALL_ENTRY = textwrap.dedent('''
    """Train as usual, but rank 1 sleeps far past --ddp_timeout before step 2."""
    import os
    import sys
    import time

    from transformers import TrainerCallback

    import llava.train.train as entry


    class StallRank1(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if args.process_index == 1 and state.global_step == 2:
                print("rank 1: stalling", flush=True)
                time.sleep(float(os.environ["STALL_SECONDS"]))


    class StallingTrainer(entry.LLaVATrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StallRank1())


    entry.LLaVATrainer = StallingTrainer  # train() builds its trainer from this module name
    if os.environ.get("STALL_VIA_DUALSPEED") == "1":
        from dualspeed_patch.train import main

        main()
    else:
        entry.train()
''')


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the CPU gloo setup")
@pytest.mark.parametrize("dualspeed", [False, True], ids=["llava", "dualspeed"])
def test_deepspeed_run_with_a_stalled_rank_fails_fast_and_says_why(tiny_assets, tmp_path, dualspeed):
    entry = tmp_path / "stall_entry.py"
    entry.write_text(STALL_ENTRY)
    stall_s, timeout_s = 600, 15
    env = dict(os.environ, MODEL_NAME_OR_PATH=tiny_assets["model"], VISION_TOWER=tiny_assets["vision_tower"],
               PRETRAIN_DATA_PATH=tiny_assets["pretrain_data"], PRETRAIN_IMAGE_FOLDER=tiny_assets["pretrain_images"],
               OUTPUT_DIR=str(tmp_path / "out"), DEEPSPEED_CONFIG=os.path.join(ROOT, "scripts", "zero2.json"),
               LAUNCHER=f"{os.path.join(BIN, 'deepspeed')} --num_gpus 2 --master_port {29520 + dualspeed}",
               TRAIN_ENTRY=str(entry), DUALSPEED_TRAIN_ENTRY=str(entry), DUALSPEED="1" if dualspeed else "0",
               STALL_VIA_DUALSPEED="1" if dualspeed else "0", STALL_SECONDS=str(stall_s), REPORT_TO="none",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    cmd = ["bash", os.path.join(ROOT, "scripts", "v1_5", "pretrain.sh"), *TINY_FLAGS,
           "--per_device_train_batch_size", "2", "--max_steps", "4", "--ddp_timeout", str(timeout_s)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=stall_s - 60)
    wall = time.time() - start
    log = proc.stdout + proc.stderr
    print(f"stalled run ({'dualspeed' if dualspeed else 'llava'}): rc={proc.returncode}, wall {wall:.0f} s")
    assert proc.returncode != 0, log[-4000:]
    assert "rank 1: stalling" in log, log[-4000:]
    if dualspeed:  # the patch really trained (its loss parts are logged) through the same train()
        assert "'dualspeed/ce'" in log, log[-4000:]
    assert f"rank 0: a collective timed out after --ddp_timeout={timeout_s} s (another rank stalled or died)" in log, \
        log[-6000:]
    assert "Timed out waiting" in log  # gloo's own error, chained below ours
    assert wall < stall_s / 2, wall  # ended by the timeout, not by the sleeping rank waking up


def test_an_abbreviated_ddp_timeout_is_refused_not_ignored(monkeypatch, tmp_path):
    # argparse accepts --ddp_time for --ddp_timeout; the groups were made from argv before parsing, which
    # cannot see the abbreviation: the run must not go on with another timeout than the one asked for.
    import transformers

    from llava.train import cpu_distributed
    from llava.train.arguments import TrainingArguments

    argv = ["--output_dir", str(tmp_path), "--ddp_time", "20"]
    (args,) = transformers.HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(args=argv)
    assert args.ddp_timeout == 20
    monkeypatch.setattr(cpu_distributed, "_group_timeout_s", cpu_distributed.ddp_timeout_from_argv(argv))
    with pytest.raises(ValueError, match=r"--ddp_timeout parsed as 20 s, but the CPU process groups were created "
                                         r"with 1800 s .*write the flag in full: --ddp_timeout 20"):
        cpu_distributed.check_group_timeout(args)
    monkeypatch.setattr(cpu_distributed, "_group_timeout_s", 20)
    cpu_distributed.check_group_timeout(args)  # the same value: nothing to say
    monkeypatch.setattr(cpu_distributed, "_group_timeout_s", None)
    cpu_distributed.check_group_timeout(args)  # no CPU groups were made (CUDA, or a single process)
