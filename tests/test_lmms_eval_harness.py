"""The real lmms-eval (0.7.3, in its own venv: tests/lmms_eval/setup_lmms_eval_env.sh) on a tiny checkpoint,
offline, on a local task in lmms-eval's format (tests/lmms_eval/tiny_task): lmms-eval's own `llava` model for
full inference and our `llava_dualspeed` plug-in (entry point) for pruned inference.

The answers we know come from our llava package in this venv (tests/lmms_eval/known_answers.py, the wrapper's
inputs rebuilt without lmms-eval; through `dualspeed_patch.run --pruned` for the pruned ones). The task's targets are the full-inference answers, except
two that no answer matches, so every score lmms-eval writes is predictable. lmms-eval exits 0 even when the
evaluation raised, so each run is judged by the files it writes.

DUALSPEED_SKIP_LMMS_EVAL=1 skips; any venv setup failure fails."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, make_eval_checkpoint

pytestmark = [pytest.mark.lmms_eval, pytest.mark.slow]

HERE = os.path.join(ROOT, "tests", "lmms_eval")
SETUP = os.path.join(HERE, "setup_lmms_eval_env.sh")
TASK_DIR = os.path.join(HERE, "tiny_task")
MAX_NEW_TOKENS = 6  # = tiny_vqa.yaml's generation_kwargs
WRONG = 2           # the last WRONG targets match no answer
QUESTIONS = ["What colour is the square?", "Describe the image.", "Is there a square?", "What shape is shown?",
             "What is the background colour?", "How many objects are there?", "Where is the square?",
             "What is in the picture?"]
PRUNED = "divprune", 0.9


def _offline_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="session")
def lmms_python():
    if os.environ.get("DUALSPEED_SKIP_LMMS_EVAL") == "1":
        pytest.skip("DUALSPEED_SKIP_LMMS_EVAL=1: lmms-eval venv tests disabled")
    proc = subprocess.run(["bash", SETUP], cwd=ROOT, env=_offline_env(), capture_output=True, text=True,
                          timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"{SETUP} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
                    pytrace=False)
    print(proc.stdout)
    venv = os.environ.get("LMMS_EVAL_VENV", ".venv-lmms-eval")
    return os.path.join(venv if os.path.isabs(venv) else os.path.join(ROOT, venv), "bin", "python")


def _images(folder, n):
    """Synthetic pictures of several sizes (non-square among them: the pad path), a square on noise."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        w, h = (64 + 24 * (i % 3), 64 + 16 * (i % 4))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(0, 256, 3, dtype=np.uint8)
        names.append(f"img{i}.png")
        Image.fromarray(pixels).save(os.path.join(folder, names[-1]))
    return names


def _known_answers(ckpt, root, questions, tag, runner=()):
    """What lmms-eval's llava model should answer, from our llava package in this venv (known_answers.py)."""
    out = os.path.join(root, f"answers-{tag}.json")
    cmd = [sys.executable, *(runner or ["-m"]), "tests.lmms_eval.known_answers", "--model-path", ckpt,
           "--questions", questions, "--out", out, "--max_new_tokens", str(MAX_NEW_TOKENS)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_offline_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-4000:]}"
    with open(out) as f:
        return json.load(f)


def _runner(method, ratio, isolator, *extra):
    flags = ["-m", "dualspeed_patch.run", "--pruned", "--vtp_method", method, "--pruning_ratio", str(ratio), *extra]
    return flags + ([] if isolator else ["--no_isolator"])


# DUET's stages A and B on the tiny 2-layer LLM: stage A's merge, then every visual token dropped after layer 1
DUET_B = ("--duet_stage_b", "--duet_stage_b_layers", "1", "--duet_stage_b_ratios", "0.0")


@pytest.fixture(scope="module")
def harness(tiny_assets, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lmms_eval_harness"))
    ckpt = make_eval_checkpoint(tiny_assets, os.path.join(root, "llava-tiny"))
    names = _images(root, len(QUESTIONS))
    questions = os.path.join(root, "questions.jsonl")
    with open(questions, "w") as f:
        for i, (name, q) in enumerate(zip(names, QUESTIONS)):
            f.write(json.dumps({"question_id": i, "image": os.path.join(root, name), "question": q}) + "\n")
    known = {"full": _known_answers(ckpt, root, questions, "full"),
             "pruned": _known_answers(ckpt, root, questions, "pruned", _runner(*PRUNED, True)),
             "no_isolator": _known_answers(ckpt, root, questions, "no_isolator", _runner(*PRUNED, False)),
             "duet_a": _known_answers(ckpt, root, questions, "duet_a", _runner("duet", 0.9, True)),
             "duet_ab": _known_answers(ckpt, root, questions, "duet_ab", _runner("duet", 0.9, True, *DUET_B))}
    # Otherwise a plug-in that ignored its arguments would pass.
    assert known["pruned"] != known["full"] and known["no_isolator"] != known["pruned"], known
    assert known["duet_ab"] != known["duet_a"] and known["duet_ab"] != known["pruned"], known
    targets = known["full"][:-WRONG] + [f"no answer is this {i}" for i in range(WRONG)]
    with open(os.path.join(root, "tiny_vqa.jsonl"), "w") as f:
        for i, (name, q) in enumerate(zip(names, QUESTIONS)):
            f.write(json.dumps({"question_id": i, "image": os.path.join(root, name), "question": q,
                                "answer": targets[i]}) + "\n")
    return {"root": root, "ckpt": ckpt, "known": known, "targets": targets}


def run_lmms_eval(python, harness, name, model, *model_args):
    """python -m lmms_eval from the task's data folder; returns (process, exact_match, {doc_id: prediction})."""
    out = os.path.join(harness["root"], f"out-{name}")
    args = ",".join([f"pretrained={harness['ckpt']}", "conv_template=vicuna_v1", "device=cpu", "device_map=auto",
                     *model_args])
    cmd = [python, "-m", "lmms_eval", "--model", model, "--model_args", args, "--tasks", "tiny_vqa",
           "--include_path", TASK_DIR, "--batch_size", "1", "--output_path", out, "--log_samples"]
    proc = subprocess.run(cmd, cwd=harness["root"], capture_output=True, text=True, timeout=900,
                          env=_offline_env(HF_HOME=os.path.join(harness["root"], "hf_home")))
    results = glob.glob(os.path.join(out, "**", "*results.json"), recursive=True)
    samples = glob.glob(os.path.join(out, "**", "*samples_tiny_vqa.jsonl"), recursive=True)
    if len(results) != 1 or len(samples) != 1:
        return proc, None, None
    with open(results[0]) as f:
        score = json.load(f)["results"]["tiny_vqa"]["exact_match,none"]
    with open(samples[0]) as f:
        rows = [json.loads(line) for line in f]
    return proc, score, {row["doc_id"]: _first_text(row["filtered_resps"]).strip() for row in rows}


def _first_text(resps):
    """0.7.3 logs the filtered response as a string; older releases as a (nested) list."""
    while isinstance(resps, list):
        resps = resps[0]
    return resps


def _check(proc, score, predictions, known, targets):
    log = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert predictions is not None, f"lmms-eval wrote no results/samples:\n{log}"
    assert [predictions[i] for i in range(len(known))] == known, log
    assert score == pytest.approx(np.mean([a == t for a, t in zip(known, targets)])), log
    return log


def test_lmms_eval_llava_model_full(lmms_python, harness):
    """lmms-eval's own `llava` model answers as our eval CLI does, and scores what we compute."""
    proc, score, predictions = run_lmms_eval(lmms_python, harness, "llava", "llava")
    _check(proc, score, predictions, harness["known"]["full"], harness["targets"])
    assert score == pytest.approx((len(QUESTIONS) - WRONG) / len(QUESTIONS))


def test_lmms_eval_plugin_pruned_with_isolator(lmms_python, harness):
    method, ratio = PRUNED
    proc, score, predictions = run_lmms_eval(lmms_python, harness, "pruned", "llava_dualspeed",
                                             f"vtp_method={method}", f"pruning_ratio={ratio}")
    log = _check(proc, score, predictions, harness["known"]["pruned"], harness["targets"])
    iso = os.path.join(harness["ckpt"], "mode_isolator.bin")
    assert f"llava_dualspeed: pruned inference, divprune at ratio 0.90, isolator on ({iso})" in proc.stderr, log


def test_lmms_eval_plugin_pruned_without_isolator(lmms_python, harness):
    method, ratio = PRUNED
    proc, score, predictions = run_lmms_eval(lmms_python, harness, "no_isolator", "llava_dualspeed",
                                             f"vtp_method={method}", f"pruning_ratio={ratio}", "isolator=false")
    log = _check(proc, score, predictions, harness["known"]["no_isolator"], harness["targets"])
    assert "isolator off" in proc.stderr, log


def test_lmms_eval_plugin_duet_both_stages(lmms_python, harness):
    """DUET's stage B through model_args (a list would be written 16;24: model_args are split on commas)."""
    proc, score, predictions = run_lmms_eval(lmms_python, harness, "duet_ab", "llava_dualspeed", "vtp_method=duet",
                                             "pruning_ratio=0.9", "duet_stage_b=true", "duet_stage_b_layers=1",
                                             "duet_stage_b_ratios=0.0")
    log = _check(proc, score, predictions, harness["known"]["duet_ab"], harness["targets"])
    assert "llava_dualspeed: pruned inference, duet at ratio 0.90, isolator on" in proc.stderr, log
    assert "DUET stage B LayerDropSpec(layers=(1,), ratios=(0.0,))" in proc.stderr, log


def test_lmms_eval_plugin_refuses_a_typo(lmms_python, harness):
    """A switch lmms-eval cannot read as a boolean stops the run, naming it, instead of meaning 'on'."""
    proc, _, predictions = run_lmms_eval(lmms_python, harness, "typo", "llava_dualspeed", "isolator=of")
    assert predictions is None
    assert "llava_dualspeed: isolator='of' is not a switch; use isolator=true or isolator=false" in \
        proc.stdout + proc.stderr, proc.stderr[-4000:]
