"""The CPU multi-rank helpers: which argv asks for DeepSpeed, and the process-group teardown at the end of train()."""
import pytest
import torch
import torch.distributed as dist

from llava.train.cpu_distributed import _wants_deepspeed, maybe_setup_cpu_deepspeed, shutdown_distributed


@pytest.mark.parametrize("argv,wanted", [
    (["--deepspeed", "scripts/zero2.json"], True),
    (["--deepspeed=scripts/zero3.json"], True),
    (["--deepspeed", "a.json", "--deepspeed", ""], False),  # argparse keeps the last value
    (["--lora_enable", "True"], False),
])
def test_wants_deepspeed(argv, wanted):
    assert _wants_deepspeed(argv) is wanted


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the helper steps aside")
def test_deepspeed_without_a_launcher_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="deepspeed --num_gpus"):
        maybe_setup_cpu_deepspeed(["--deepspeed", "scripts/zero2.json"])


def test_shutdown_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    shutdown_distributed()  # nothing initialised: no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_distributed()
    assert not dist.is_initialized()
