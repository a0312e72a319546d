"""The nine LLaVA-1.5 eval scripts end to end on tiny offline fixtures: generate -> merge -> convert/score,
with full and with pruned inference (PRUNED=1, through dualspeed_patch.run), on CPU.

The tiny model is untrained: the checks are on where the answers land, their structure, and the score
files (benchmark, count, range), not on accuracy."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import BIN, ROOT, make_eval_checkpoint

pytestmark = pytest.mark.slow

EVAL_SCRIPTS = os.path.join(ROOT, "scripts", "v1_5", "eval")
SCRIPTS = ["vqav2", "gqa", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed"]
# MMBench reads its TSV with pandas and writes the upload .xlsx with openpyxl (the optional `eval` extra).
HAVE_EVAL_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("pandas", "openpyxl"))
needs_eval_extra = pytest.mark.skipif(not HAVE_EVAL_EXTRA, reason="needs pandas and openpyxl (the eval extra)")
CKPT = "llava-tiny-eval"
PRUNED_NAME = CKPT + "_pruned-divprune-r0.9"
SQA_SUFFIX = "Answer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def eval_setup(tiny_assets, tmp_path_factory):
    from dualspeed_lab.tiny.eval_fixtures import build_eval_fixtures

    root = tmp_path_factory.mktemp("eval_e2e")
    fixtures = build_eval_fixtures(str(root / "eval"))
    ckpt = make_eval_checkpoint(tiny_assets, root / CKPT)
    assert os.path.isfile(os.path.join(ckpt, "mode_isolator.bin"))
    return fixtures, ckpt


def run_eval(script, fixtures, ckpt, *args, check=True, **env_overrides):
    env = dict(os.environ)
    env.pop("SCORE_FILE", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(MODEL_PATH=ckpt, EVAL_DIR=fixtures["root"], DEVICE="cpu", MAX_NEW_TOKENS="3", NUM_WORKERS="0",
               PYTHON=sys.executable, PATH=BIN + os.pathsep + env.get("PATH", ""), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(env_overrides)
    proc = subprocess.run(["bash", os.path.join(EVAL_SCRIPTS, f"{script}.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script}.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_score(path, benchmark, n, source=None, top=100.0):
    with open(path) as f:
        score = json.load(f)
    assert score["benchmark"] == benchmark
    assert score["n"] == n
    assert 0.0 <= score["score"] <= top
    assert isinstance(score["official"], bool)
    if source is not None:
        assert os.path.samefile(score["source"], source)
    return score


def question_ids(path):
    return [row["question_id"] for row in read_jsonl(path)]


# ------------------------------------------------------------------------------------- per-benchmark checks
# Each returns the answers file(s) whose content must survive the other mode's run.

def check_vqav2(fx, name, chunks):
    d = fx["vqav2"]["dir"]
    split = "llava_vqav2_mscoco_test-dev2015"
    answers = os.path.join(d, "answers", split, name)
    assert sorted(os.listdir(answers)) == sorted([f"{chunks}_{i}.jsonl" for i in range(chunks)] + ["merge.jsonl"])
    merge = os.path.join(answers, "merge.jsonl")
    assert question_ids(merge) == question_ids(fx["vqav2"]["question_file"])
    with open(os.path.join(d, "answers_upload", split, f"{name}.json")) as f:
        upload = json.load(f)
    assert len(upload) == fx["vqav2"]["test_questions"]  # every test2015 id, "" for those outside test-dev
    assert {"question_id", "answer"} <= set(upload[0])
    score = read_score(os.path.join(d, "scores", f"{name}.score.json"), "VQAv2", fx["vqav2"]["questions"], merge)
    assert score["official"] is False
    return [merge]


def check_gqa(fx, name, chunks):
    d = fx["gqa"]["dir"]
    answers = os.path.join(d, "answers", "llava_gqa_testdev_balanced", name)
    merge = os.path.join(answers, "merge.jsonl")
    assert question_ids(merge) == question_ids(fx["gqa"]["question_file"])
    assert os.path.isfile(os.path.join(answers, f"{chunks}_{chunks - 1}.jsonl"))
    predictions = os.path.join(answers, "testdev_balanced_predictions.json")
    with open(predictions) as f:
        preds = json.load(f)
    assert sorted(p["questionId"] for p in preds) == sorted(fx["gqa"]["answers"])
    assert all(p["prediction"] == p["prediction"].lower() for p in preds)
    assert os.path.isfile(os.path.join(d, "data", "testdev_balanced_predictions.json"))  # upstream's place
    read_score(os.path.join(d, "scores", f"{name}.score.json"), "GQA", fx["gqa"]["questions"], predictions)
    return [merge, predictions]


def check_sqa(fx, name, chunks):
    d = fx["scienceqa"]["dir"]
    result = os.path.join(d, "answers", f"{name}.jsonl")
    rows = read_jsonl(result)
    with open(fx["scienceqa"]["question_file"]) as f:
        questions = json.load(f)
    assert [r["question_id"] for r in rows] == [q["id"] for q in questions]
    for row, q in zip(rows, questions):
        assert row["prompt"].startswith("<image>\n") == ("image" in q)
        assert row["prompt"].endswith("\n" + SQA_SUFFIX)
        assert {"text", "answer_id", "model_id", "metadata"} <= set(row)
    assert os.path.isfile(os.path.join(d, "answers", f"{name}_output.jsonl"))
    assert os.path.isfile(os.path.join(d, "answers", f"{name}_result.json"))
    read_score(os.path.join(d, "scores", f"{name}.score.json"), "SQA-IMG", fx["scienceqa"]["image_questions"], result)
    return [result]


def check_textvqa(fx, name, chunks):
    d = fx["textvqa"]["dir"]
    result = os.path.join(d, "answers", f"{name}.jsonl")
    rows = read_jsonl(result)
    assert [r["question_id"] for r in rows] == question_ids(fx["textvqa"]["question_file"])
    assert any("Reference OCR token: " in r["prompt"] for r in rows)
    read_score(os.path.join(d, "scores", f"{name}.score.json"), "TextVQA", fx["textvqa"]["questions"], result)
    return [result]


def check_pope(fx, name, chunks):
    d = fx["pope"]["dir"]
    result = os.path.join(d, "answers", f"{name}.jsonl")
    assert question_ids(result) == question_ids(fx["pope"]["question_file"])  # labels are paired by position
    score = read_score(os.path.join(d, "scores", f"{name}.score.json"), "POPE", fx["pope"]["questions"], result)
    assert score["official"] is True
    return [result]


def check_mme(fx, name, chunks):
    d = fx["MME"]["dir"]
    result = os.path.join(d, "answers", f"{name}.jsonl")
    assert question_ids(result) == question_ids(fx["MME"]["question_file"])
    tool = os.path.join(d, "eval_tool", "answers", name)
    assert sorted(os.listdir(tool)) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]
    with open(os.path.join(tool, "artwork.txt"), encoding="utf-8") as f:
        assert all(len(line.rstrip("\n").split("\t")) == 4 for line in f)  # image, question, gt, answer
    score = read_score(os.path.join(d, "scores", f"{name}.score.json"), "MME", fx["MME"]["perception_questions"],
                       result, top=2000.0)
    assert score["official"] is False  # the fixture has 3 of the 14 subtasks
    return [result]


def _check_mmbench(fx, key, benchmark, name, lang_marker):
    d = fx[key]["dir"]
    split = fx[key]["split"]
    result = os.path.join(d, "answers", split, f"{name}.jsonl")
    rows = read_jsonl(result)
    assert [r["question_id"] for r in rows] == sorted(fx[key]["answers"])
    assert [len(r["options"]) for r in rows] == [4, 2, 3]  # options stop at the first empty cell
    assert all(r["round_id"] == 0 and r["option_char"] == list("ABCD")[:len(r["options"])] for r in rows)
    assert lang_marker in rows[0]["prompt"] and rows[0]["prompt"].endswith(f"\nD. {rows[0]['options'][3]}")
    assert rows[2]["options"] == ["1", "2", "3"]  # numeric options stay text
    assert os.path.isfile(os.path.join(d, "answers_upload", split, f"{name}.xlsx"))
    read_score(os.path.join(d, "scores", f"{name}.score.json"), benchmark, fx[key]["questions"], result)
    return [result]


def check_mmbench(fx, name, chunks):
    return _check_mmbench(fx, "mmbench", "MMB", name, "What color is the square?")


def check_mmbench_cn(fx, name, chunks):
    return _check_mmbench(fx, "mmbench_cn", "MMB-CN", name, "图中正方形是什么颜色？")


def check_seed(fx, name, chunks):
    d = fx["seed_bench"]["dir"]
    answers = os.path.join(d, "answers", name)
    merge = os.path.join(answers, "merge.jsonl")
    assert question_ids(merge) == question_ids(fx["seed_bench"]["question_file"])
    assert os.path.isfile(os.path.join(answers, f"{chunks}_{chunks - 1}.jsonl"))
    upload = read_jsonl(os.path.join(d, "answers_upload", f"{name}.jsonl"))
    assert len(upload) == fx["seed_bench"]["questions"] and {"question_id", "prediction"} <= set(upload[0])
    read_score(os.path.join(d, "scores", f"{name}.score.json"), "SEED", fx["seed_bench"]["image_questions"], merge)
    return [merge]


CHECKS = {name: globals()[f"check_{name}"] for name in SCRIPTS}
CHUNKED = {"vqav2", "gqa", "seed"}


def _snapshot(paths):
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            out[p] = f.read()
    return out


@pytest.mark.parametrize("script", [pytest.param(s, marks=needs_eval_extra) if s.startswith("mmbench") else s
                                    for s in SCRIPTS])
def test_script_full_then_pruned(eval_setup, script):
    fixtures, ckpt = eval_setup
    extra = {"VQAV2_ANNOTATION": fixtures["vqav2"]["annotation_file"]} if script == "vqav2" else {}

    full = run_eval(script, fixtures, ckpt, **extra)
    assert "dualspeed_patch.run" not in full.stderr and "Pruned inference" not in full.stderr
    kept = _snapshot(CHECKS[script](fixtures, CKPT, 1))

    # pruned, with the isolator; the chunked scripts split the work over a two-entry "GPU" list, in parallel
    chunks = 2 if script in CHUNKED else 1
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"} if chunks == 2 else {}
    pruned = run_eval(script, fixtures, ckpt, **extra, **gpus, PRUNED="1")
    assert "dualspeed_patch.run --pruned --vtp_method divprune --pruning_ratio 0.9" in pruned.stderr
    assert "Pruned inference: divprune, ratio 0.90, isolator on" in pruned.stderr
    CHECKS[script](fixtures, PRUNED_NAME, chunks)
    assert _snapshot(kept) == kept, "the pruned run overwrote the full run's answers"


def test_flags_select_pruning_and_model(eval_setup):
    """--pruned/--vtp_method/--pruning_ratio/--no_isolator/--ckpt and a positional model path."""
    fixtures, ckpt = eval_setup
    proc = run_eval("pope", fixtures, "unused", ckpt, "--pruned", "--vtp_method", "random", "--pruning_ratio",
                    "0.5", "--no_isolator", "--ckpt", "tiny")
    assert "Pruned inference: random, ratio 0.50, isolator off" in proc.stderr
    name = "tiny_pruned-random-r0.5-noiso"
    check_pope(fixtures, name, 1)


def test_vqav2_test_dev_without_answers_writes_upload_only(eval_setup):
    fixtures, ckpt = eval_setup
    proc = run_eval("vqav2", fixtures, ckpt, CKPT="noanswers")
    d = fixtures["vqav2"]["dir"]
    assert "no local score" in proc.stderr
    assert os.path.isfile(os.path.join(d, "answers_upload", "llava_vqav2_mscoco_test-dev2015", "noanswers.json"))
    assert not os.path.exists(os.path.join(d, "scores", "noanswers.score.json"))


def test_failed_chunk_fails_the_script(eval_setup, tmp_path):
    fixtures, _ = eval_setup
    proc = run_eval("gqa", fixtures, str(tmp_path / "no-such-llava"), check=False, CHUNKS="2", CKPT="broken")
    assert proc.returncode != 0
    assert "chunk 0 of 2 failed" in proc.stderr and "chunk 1 of 2 failed" in proc.stderr
    answers = os.path.join(fixtures["gqa"]["dir"], "answers", "llava_gqa_testdev_balanced", "broken")
    assert not os.path.exists(os.path.join(answers, "merge.jsonl"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    proc = subprocess.run(["bash", os.path.join(EVAL_SCRIPTS, f"{script}.sh"), "--help"], capture_output=True,
                          text=True, timeout=30, cwd="/")
    assert proc.returncode == 0
    assert proc.stdout.startswith(("VQAv2", "GQA", "ScienceQA", "TextVQA", "POPE", "MME", "MMBench", "SEED"))
    assert "PRUNED" in proc.stdout and "EVAL_DIR" in proc.stdout and "--pruned" in proc.stdout


def _run_module(module, *args):
    cmd = [sys.executable, "-m", module, *args, "--temperature", "0", "--conv-mode", "vicuna_v1",
           "--max_new_tokens", "3", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@needs_eval_extra
def test_mmbench_all_rounds_and_chunks(eval_setup, tmp_path):
    fixtures, ckpt = eval_setup
    rows = []
    for idx in range(2):
        out = tmp_path / f"2_{idx}.jsonl"
        _run_module("llava.eval.model_vqa_mmbench", "--model-path", ckpt, "--question-file",
                    fixtures["mmbench"]["question_file"], "--answers-file", str(out), "--all-rounds",
                    "--single-pred-prompt", "--num-chunks", "2", "--chunk-idx", str(idx))
        rows += read_jsonl(out)
    assert [(r["question_id"], r["round_id"]) for r in rows] == \
        [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    first = [r for r in rows if r["question_id"] == 0]
    assert first[1]["option_char"] == ["B", "C", "D", "A"]
    assert first[1]["options"] == first[0]["options"][1:] + first[0]["options"][:1]
    # the option shown as "A." in round 1 is the original B
    assert f"\nA. {first[0]['options'][1]}\n" in first[1]["prompt"]


def test_model_vqa_open_ended(eval_setup, tmp_path):
    fixtures, ckpt = eval_setup
    out = tmp_path / "answers.jsonl"
    _run_module("llava.eval.model_vqa", "--model-path", ckpt, "--question-file", fixtures["vqav2"]["question_file"],
                "--image-folder", fixtures["vqav2"]["image_folder"], "--answers-file", str(out))
    rows = read_jsonl(out)
    assert [r["question_id"] for r in rows] == question_ids(fixtures["vqav2"]["question_file"])
    assert all(set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for r in rows)
    assert rows[0]["prompt"] == read_jsonl(fixtures["vqav2"]["question_file"])[0]["text"]
