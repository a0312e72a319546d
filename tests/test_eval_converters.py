"""Submission converters of the evaluation pipeline (SEED-Bench, MMBench, VQAv2), on tiny hand-made files in the
real formats. Every expected number is worked out by hand in the comment next to it.
"""
import csv
import json
import os

import pytest

from scripts import convert_mmbench_for_submission, convert_seed_for_submission, convert_vqav2_for_submission
from tests.eval_files import read_json, write_json, write_jsonl

# ----------------------------------------------------------------------------------------------------------
# SEED-Bench
# ----------------------------------------------------------------------------------------------------------

def test_seed_by_hand(tmp_path, capsys):
    ann = {"question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
           "questions": [
               {"question_id": "101", "answer": "A", "question_type_id": 1, "data_type": "image"},
               {"question_id": "102", "answer": "B", "question_type_id": 1, "data_type": "image"},
               {"question_id": "103", "answer": "D", "question_type_id": 2, "data_type": "image"},
               {"question_id": "v1", "answer": "A", "question_type_id": 10, "data_type": "video"},
               {"question_id": "v2", "answer": "B", "question_type_id": 10, "data_type": "video"},
           ]}
    ann_file = write_json(tmp_path / "SEED-Bench.json", ann)
    # 101 "A"=A ok; 102 "C"!=B; 103 " D " stripped = D ok; v1 "A" ok; v2 no answer -> wrong
    # image 2/3 = 66.67, video 1/2 = 50, total 3/5 = 60; type 1: 1/2 = 50, type 2: 100, type 10: 50
    res = write_jsonl(tmp_path / "merge.jsonl", [
        {"question_id": 101, "prompt": "p", "text": "A"}, {"question_id": 102, "prompt": "p", "text": "C"},
        {"question_id": 103, "prompt": "p", "text": " D "}, {"question_id": "v1", "prompt": "p", "text": "A"},
    ])
    upload = str(tmp_path / "upload" / "exp.jsonl")
    out = convert_seed_for_submission.main(["--annotation-file", ann_file, "--result-file", res,
                                            "--result-upload-file", upload,
                                            "--score-file", str(tmp_path / "seed.score.json")])
    assert out["image"]["accuracy"] == pytest.approx(200 / 3)
    assert out["video"]["accuracy"] == pytest.approx(50.0)
    assert out["overall"]["accuracy"] == pytest.approx(60.0)
    assert out["overall"]["per_type"] == {1: pytest.approx(50.0), 2: pytest.approx(100.0), 10: pytest.approx(50.0)}
    printed = capsys.readouterr().out
    for line in ("Scene Understanding: 50.00%", "Instance Identity: 100.00%", "Action Recognition: 50.00%",
                 "Total accuracy: 60.00%", "image accuracy: 66.67%", "video accuracy: 50.00%"):
        assert line in printed
    with open(upload) as f:
        rows = [json.loads(x) for x in f]
    assert rows == [{"question_id": "101", "prediction": "A"}, {"question_id": "102", "prediction": "C"},
                    {"question_id": "103", "prediction": " D "}, {"question_id": "v1", "prediction": "A"},
                    {"question_id": "v2", "prediction": ""}]
    rec = read_json(tmp_path / "seed.score.json")
    assert rec["benchmark"] == "SEED" and rec["score"] == pytest.approx(200 / 3) and rec["n"] == 3


# ----------------------------------------------------------------------------------------------------------
# MMBench
# ----------------------------------------------------------------------------------------------------------

MMB_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
               "l2-category", "comment", "split"]


def _mmbench_tsv(path, rows):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(MMB_COLUMNS)
        for r in rows:
            writer.writerow([r.get(c, "") for c in MMB_COLUMNS])
    return str(path)


def _mmbench_fixture(tmp_path, name="mmbench_dev_20230712.tsv"):
    # Question 7 and its circular shift 1000007 (options rotated in the TSV: the answer moves from A to C);
    # question 8 and its shift 1000008 (answer B -> A).
    rows = [
        {"index": 7, "question": "Color?", "hint": "a, \"quoted\" hint", "A": "red", "B": "green", "C": "blue",
         "answer": "A", "category": "c", "image": "aGVsbG8=", "split": "dev"},
        {"index": 1000007, "question": "Color?", "A": "green", "B": "blue", "C": "red", "answer": "C",
         "category": "c", "image": "aGVsbG8=", "split": "dev"},
        {"index": 8, "question": "Shape?", "A": "round", "B": "square", "answer": "B", "image": "aGVsbG8=",
         "split": "dev"},
        {"index": 1000008, "question": "Shape?", "A": "square", "B": "round", "answer": "A", "image": "aGVsbG8=",
         "split": "dev"},
    ]
    tsv = _mmbench_tsv(tmp_path / name, rows)
    # 7: "A" right; 1000007: "B" wrong (answer C) -> question 7 incorrect under CircularEval
    # 8: "B. square" right; 1000008: "square" (the option text of A) right -> question 8 correct
    # CircularEval = 1/2 = 50.00%; plain accuracy on the first-shift rows (7, 8) = 2/2 = 100.00%
    answers = [{"question_id": 7, "round_id": 0, "prompt": "p", "text": "A", "options": ["red", "green", "blue"],
                "option_char": ["A", "B", "C"]},
               {"question_id": 1000007, "round_id": 0, "prompt": "p", "text": "B"},
               {"question_id": 8, "round_id": 0, "prompt": "p", "text": "B. square"},
               {"question_id": 1000008, "round_id": 0, "prompt": "p", "text": "square"}]
    result_dir = tmp_path / "answers" / "mmbench_dev_20230712"
    write_jsonl(result_dir / "exp.jsonl", answers)
    return tsv, str(result_dir)


def test_mmbench_circular_eval_by_hand(tmp_path, capsys):
    tsv, result_dir = _mmbench_fixture(tmp_path)
    out = convert_mmbench_for_submission.main([
        "--annotation-file", tsv, "--result-dir", result_dir, "--upload-dir", str(tmp_path / "up"),
        "--experiment", "exp", "--skip-upload", "--score-file", str(tmp_path / "mmb.score.json")])
    local = out["local"]
    assert local["questions"] == 2 and local["correct"] == 1
    assert local["circular_accuracy"] == pytest.approx(50.0) and local["plain_accuracy"] == pytest.approx(100.0)
    assert "not the official server number" in capsys.readouterr().out
    rec = read_json(tmp_path / "mmb.score.json")
    assert rec["benchmark"] == "MMB" and rec["score"] == pytest.approx(50.0) and rec["official"] is False


def test_mmbench_all_rounds_and_extraction():
    row = {"index": "3", "answer": "B", "A": "x", "B": "y", "C": "z", "D": ""}
    # round 1 of --all-rounds: options rotated to [y, z, x], option_char [B, C, A]: "y" (orig. B) is now "A"
    rotated = {"question_id": 3, "round_id": 1, "text": "A", "options": ["y", "z", "x"],
               "option_char": ["B", "C", "A"]}
    assert convert_mmbench_for_submission._answer_correct(rotated, row)
    assert not convert_mmbench_for_submission._answer_correct(dict(rotated, text="B"), row)
    # a question whose rounds are all right counts; one wrong round sinks it
    rows = [row]
    r0 = {"question_id": 3, "round_id": 0, "text": "B", "options": ["x", "y", "z"], "option_char": ["A", "B", "C"]}
    assert convert_mmbench_for_submission.circular_eval(rows, [r0, rotated])["correct"] == 1
    assert convert_mmbench_for_submission.circular_eval(rows, [r0, dict(rotated, text="C")])["correct"] == 0
    ex = convert_mmbench_for_submission.extract_choice
    opts = {"A": "red", "B": "green"}
    assert ex("(B)", opts) == "B" and ex("B.", opts) == "B" and ex("The answer is A.", opts) == "A"
    assert ex("Green", opts) == "B" and ex("A cat", opts) is None and ex("C", opts) is None


def test_mmbench_cn_upload_xlsx(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("openpyxl")
    tsv, result_dir = _mmbench_fixture(tmp_path, name="mmbench_dev_cn_20231003.tsv")
    upload_dir = tmp_path / "mmbench_cn" / "answers_upload" / "mmbench_dev_cn_20231003"  # does not exist yet
    out = convert_mmbench_for_submission.main([
        "--annotation-file", tsv, "--result-dir", result_dir, "--upload-dir", str(upload_dir),
        "--experiment", "exp", "--score-file", str(tmp_path / "cn.score.json")])
    assert out["upload_file"] == str(upload_dir / "exp.xlsx")
    df = pd.read_excel(out["upload_file"])
    assert list(df.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert list(df["prediction"]) == ["A", "B", "B. square", "square"]
    assert read_json(tmp_path / "cn.score.json")["benchmark"] == "MMB-CN"


# ----------------------------------------------------------------------------------------------------------
# VQAv2
# ----------------------------------------------------------------------------------------------------------

def _vqav2_layout(tmp_path, split, answers, questions, name="llava_vqav2_mscoco_test2015.jsonl"):
    d = tmp_path / "vqav2"
    src = d / "answers" / split / "ckpt" / "merge.jsonl"
    write_jsonl(src, answers)
    with open(src, "a") as f:
        f.write("{not json\n")   # a truncated line is counted and skipped
    write_jsonl(d / name, questions)
    return d


def test_vqav2_converter_val_local_score_by_hand(tmp_path, capsys):
    # q1: 10 x "two", prediction "Two." -> "2" = "2": k = 10 -> 1.0
    # q2: 1 x "yes" + 9 x "no", prediction "yes": k = 1 -> 0.3
    # q3: no answer line -> "" -> 0
    # local accuracy = (1.0 + 0.3 + 0) / 3 = 43.33%
    questions = [{"question_id": 1, "image": "a.jpg", "text": "How many?", "answers": ["two"] * 10},
                 {"question_id": 2, "image": "a.jpg", "text": "Is it?",
                  "answers": [{"answer": "yes"}] + [{"answer": "no"}] * 9},
                 {"question_id": 3, "image": "b.jpg", "text": "Color?", "answers": ["red"] * 10}]
    answers = [{"question_id": 1, "text": "Two."}, {"question_id": 2, "text": "yes"}]
    d = _vqav2_layout(tmp_path, "llava_vqav2_mscoco_val2014", answers, questions, name="val.jsonl")
    out = convert_vqav2_for_submission.main([
        "--dir", str(d), "--split", "llava_vqav2_mscoco_val2014", "--ckpt", "ckpt",
        "--question-file", str(d / "val.jsonl"), "--score-file", str(tmp_path / "vqav2.score.json")])
    assert out["local_accuracy"] == pytest.approx(130 / 3)
    printed = capsys.readouterr().out
    assert "error_line: 1" in printed
    assert ("VQA accuracy: 43.33% over 3 questions -- local score on llava_vqav2_mscoco_val2014 (has answers), "
            "not the official test-dev number") in printed
    upload = read_json(d / "answers_upload" / "llava_vqav2_mscoco_val2014" / "ckpt.json")
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"},
                      {"question_id": 3, "answer": ""}]
    rec = read_json(tmp_path / "vqav2.score.json")
    assert rec["benchmark"] == "VQAv2" and rec["official"] is False and rec["score"] == pytest.approx(130 / 3)


def test_vqav2_converter_test_split_covers_all_ids(tmp_path, capsys):
    questions = [{"question_id": i, "image": "x.jpg", "text": "q"} for i in (10, 11, 12)]
    d = _vqav2_layout(tmp_path, "llava_vqav2_mscoco_test-dev2015", [{"question_id": 11, "text": "The Dog"}],
                      questions)
    out = convert_vqav2_for_submission.main(["--dir", str(d), "--split", "llava_vqav2_mscoco_test-dev2015",
                                             "--ckpt", "ckpt"])
    assert out["local_accuracy"] is None
    upload = read_json(d / "answers_upload" / "llava_vqav2_mscoco_test-dev2015" / "ckpt.json")
    assert upload == [{"question_id": 10, "answer": ""}, {"question_id": 11, "answer": "dog"},
                      {"question_id": 12, "answer": ""}]
