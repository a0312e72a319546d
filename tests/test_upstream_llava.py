"""Upstream LLaVA (llava-torch==1.2.2.post1, transformers 4.37.2) in its own venv: the base for running
dualspeed_patch through upstream's own classes.

The session fixture builds/reuses ``.venv-upstream`` with tests/upstream/setup_upstream_env.sh (~1 min the
first time, ~0.2 s after). Set DUALSPEED_SKIP_UPSTREAM=1 to skip; any other setup failure fails the tests.
Patch tests can reuse ``upstream_env`` by importing it: ``from tests.test_upstream_llava import upstream_env``,
or call ``upstream.helpers.ensure_upstream_env()`` in their own fixture.
"""
import os

import pytest

from tests.upstream import helpers

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

pytestmark = [pytest.mark.upstream, pytest.mark.slow]


@pytest.fixture(scope="session")
def upstream_env():
    """Path of the upstream venv's python (setup run once per session)."""
    if helpers.skip_requested():
        pytest.skip(f"{helpers.SKIP_ENV}=1: upstream LLaVA venv tests disabled")
    try:
        python = helpers.ensure_upstream_env()
    except helpers.UpstreamEnvError as e:
        pytest.fail(f"could not set up the upstream LLaVA venv:\n{e}", pytrace=False)
    print(helpers.setup_log())  # timings; shown with -s / -rP
    return python


def test_upstream_env_is_isolated(upstream_env):
    """`llava` is upstream's from the venv's site-packages; our repo's llava/ is not importable."""
    proc = helpers.run_upstream(
        "import os, sys, importlib.util as u\n"
        "import llava, transformers, torch\n"
        "print('LLAVA', os.path.realpath(llava.__file__))\n"
        "print('PREFIX', os.path.realpath(sys.prefix))\n"
        "print('VERSIONS', transformers.__version__, torch.__version__, torch.version.cuda)\n"
        "s = u.find_spec('dualspeed_patch')\n"
        "print('PATCH', os.path.realpath(s.submodule_search_locations[0]) if s else None)\n"
        "import tiny_upstream; print('TINY', os.path.realpath(tiny_upstream.__file__))\n",
        check=True)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    venv = os.path.realpath(str(helpers.venv_dir()))
    assert out["PREFIX"] == venv, out
    site = os.path.join(venv, "lib")
    assert out["LLAVA"].startswith(site) and "site-packages" in out["LLAVA"], out["LLAVA"]
    assert not out["LLAVA"].startswith(os.path.join(os.path.realpath(str(helpers.REPO_ROOT)), "llava")), out["LLAVA"]
    version, torch_version, cuda = out["VERSIONS"].split()
    assert version == "4.37.2" and torch_version.startswith("2.13.0") and cuda == "None", out["VERSIONS"]
    ours = os.path.realpath(str(helpers.REPO_ROOT / helpers.PATCH_PACKAGE))
    if os.path.isdir(ours):
        assert out["PATCH"] == ours, out["PATCH"]
    else:
        assert out["PATCH"] == "None", out["PATCH"]
    assert out["TINY"] == os.path.realpath(str(helpers.TINY_SCRIPT)), out["TINY"]


def test_tiny_upstream_llava(upstream_env):
    """Tiny upstream LlavaLlamaForCausalLM: forward+backward, LLaVATrainer 2 steps, generate, LoRA, train()."""
    proc = helpers.run_upstream(helpers.TINY_SCRIPT, timeout=600)
    output = proc.stdout + "\n" + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    for name in ("build", "forward_backward", "trainer", "generate", "lora", "train_e2e"):
        assert any(line.startswith(f"PASS {name} ") for line in proc.stdout.splitlines()), (name, output[-8000:])
    assert "ALL PASS" in proc.stdout, output[-8000:]
    assert "tokenization mismatch" not in output, output[-8000:]


def test_dualspeed_patch_on_upstream_llava(upstream_env):
    """Fast and slow DualSpeed steps, a training run, pruned generation, DUET stages A and B and our training entry, all
    through upstream's own classes with the patch applied (tests/upstream/dualspeed_upstream.py)."""
    proc = helpers.run_upstream(os.path.join(TESTS_DIR, "upstream", "dualspeed_upstream.py"), check=True)
    passed = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PASS ")}
    assert passed == {"fast_step", "slow_step", "trainer_train", "pruned_generate", "duet_stage_a",
                      "duet_stage_b", "train_entry"}, \
        proc.stdout
