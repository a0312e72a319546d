"""Offline scorers of the evaluation pipeline (and the GQA converter), on tiny hand-made files in the real formats.

Every expected number is worked out by hand in the comment next to it.
"""
import csv
import os

import pytest

from llava.eval import eval_gqa, eval_mme, eval_pope, eval_science_qa, eval_textvqa, summarize
from llava.eval.m4c_evaluator import (EvalAIAnswerProcessor, STVQAAccuracyEvaluator, STVQAANLSEvaluator,
                                      levenshtein, vqa_soft_score)
from scripts import convert_gqa_for_eval
from tests.eval_files import SUFFIX, read_json, write_json, write_jsonl

# ----------------------------------------------------------------------------------------------------------
# m4c_evaluator
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"),                 # lowercase, final period dropped, number word -> digit
    ("the cat's", "cat 's"),       # possessive split off, article dropped
    ("no,", "no"),                 # commas are deleted outright
    ("1,000", "1000"),             # ... also between digits
    ("Yes!", "yes"),               # "!" touches no space -> becomes a space -> stripped
    ("t-shirt", "t shirt"),        # "-" touches no space -> becomes a space
    ("yes - no", "yes no"),        # "-" touches a space -> deleted; whitespace collapsed
    ("3.5", "3.5"),                # a period followed by a digit stays
    ("dont", "don't"),             # contraction gets its apostrophe
    ("An Apple.", "apple"),        # article "an" dropped
    ("none", "0"),                 # "none" counts as zero
    ("What?", "what"),             # "?" deleted
    ("(red)", "red"),              # brackets touch no space -> spaces -> stripped
    ("ten\tdogs", "10 dogs"),      # tab -> space, number word
    ("well... ok", "well ok"),     # every period not followed by a digit goes
])
def test_evalai_answer_processor(raw, expected):
    assert EvalAIAnswerProcessor()(raw) == expected


def test_vqa_soft_score_by_hand():
    # 10 answers, k of them equal to the prediction: leave-one-out mean of min(matches/3, 1).
    # k=1: the matching answer left out -> 0 others; 9 others left out -> 1/3 each: 9/3/10 = 0.3
    # k=2: 2 * (1/3) + 8 * (2/3) = 6 -> /10 = 0.6;  k=3: 3 * (2/3) + 7 * 1 = 9 -> 0.9;  k=4: 1.0
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        gts = ["a"] * k + ["b"] * (10 - k)
        assert vqa_soft_score("a", gts) == pytest.approx(expected)


def test_stvqa_evaluators_by_hand():
    preds = [{"pred_answer": "Coca Cola", "gt_answers": ["coca cola", "coke"]},
             {"pred_answer": "pepsi", "gt_answers": ["coke"]}]
    assert STVQAAccuracyEvaluator().eval_pred_list(preds) == pytest.approx(0.5)   # 1 of 2 exact
    assert levenshtein("kitten", "sitting") == 3
    # ANLS: "stop" vs "stops": 1 - 1/5 = 0.8; "abc" vs "xyz": 1 - 3/3 = 0 -> 0; mean 0.4
    anls = STVQAANLSEvaluator().eval_pred_list([{"pred_answer": "Stop", "gt_answers": ["abc", "stops"]},
                                               {"pred_answer": "abc", "gt_answers": ["xyz"]}])
    assert anls == pytest.approx(0.4)


# ----------------------------------------------------------------------------------------------------------
# TextVQA
# ----------------------------------------------------------------------------------------------------------

def test_textvqa_by_hand(tmp_path, capsys):
    # Two questions on the same image (so the question text has to disambiguate).
    # Q1: 2 x "stop" + 8 x "stop sign", prediction "Stop." -> "stop", k = 2 -> 0.6
    # Q2: 3 x "Nike" + 7 x "adidas", prediction "nike", k = 3 -> 0.9
    # accuracy = (0.6 + 0.9) / 2 = 75.00%
    ann = {"data": [
        {"image_id": "img1", "question_id": 11, "question": "What does the sign say?",
         "answers": ["stop"] * 2 + ["stop sign"] * 8},
        {"image_id": "img1", "question_id": 12, "question": "What brand is the shoe?",
         "answers": ["Nike"] * 3 + ["adidas"] * 7},
        {"image_id": "img2", "question_id": 13, "question": "Unused?", "answers": ["x"] * 10},
    ]}
    ann_file = write_json(tmp_path / "TextVQA_0.5.1_val.json", ann)
    res = write_jsonl(tmp_path / "answers" / "exp.jsonl", [
        {"question_id": "img1", "prompt": "What does the sign say?\nReference OCR token: STOP" + SUFFIX,
         "text": "Stop.", "answer_id": "a", "model_id": "m", "metadata": {}},
        {"question_id": "img1", "prompt": "what brand is the shoe?" + SUFFIX, "text": "nike"},
    ])
    score_file = str(tmp_path / "scores" / "textvqa.score.json")
    out = eval_textvqa.main(["--annotation-file", ann_file, "--result-file", res, "--score-file", score_file])
    acc, n = out[res]
    assert n == 2 and acc == pytest.approx(75.0)
    printed = capsys.readouterr().out
    assert "exp\nSamples: 2\nAccuracy: 75.00%" in printed
    rec = read_json(score_file)
    assert rec["benchmark"] == "TextVQA" and rec["score"] == pytest.approx(75.0) and rec["n"] == 2
    assert rec["official"] is True and rec["metric"] == "accuracy"

    # --result-dir: every .jsonl in the folder; the score-file path becomes a folder
    eval_textvqa.main(["--annotation-file", ann_file, "--result-dir", str(tmp_path / "answers"),
                       "--score-file", str(tmp_path / "dirscores")])
    assert read_json(tmp_path / "dirscores" / "exp" / "textvqa.score.json")["score"] == pytest.approx(75.0)


def test_textvqa_prompt_processor_layouts():
    assert eval_textvqa.prompt_processor("Q?\nReference OCR token: a, b" + SUFFIX) == "q?"
    assert eval_textvqa.prompt_processor("Reference OCR token: a\nQ?" + SUFFIX) == "q?"
    assert eval_textvqa.prompt_processor("Q?" + SUFFIX) == "q?"
    assert eval_textvqa.prompt_processor("OCR tokens: a b Question: Why? Short answer:") == "why?"


# ----------------------------------------------------------------------------------------------------------
# POPE
# ----------------------------------------------------------------------------------------------------------

def test_pope_matches_by_question_id_by_hand(tmp_path, capsys):
    # LLaVA's question file numbers random with a 10000000 offset; each label file restarts at 1.
    img = "COCO_val2014_000000000001.jpg"
    questions = [{"question_id": i, "image": img, "text": f"Is there a {o} in the image?" + SUFFIX,
                  "category": "adversarial"} for i, o in [(1, "dog"), (2, "cat"), (3, "cup"), (4, "car")]]
    questions += [{"question_id": 10000000 + i, "image": img, "text": f"Is there a {o} in the image?" + SUFFIX,
                   "category": "random"} for i, o in [(1, "dog"), (2, "zebra")]]
    qfile = write_jsonl(tmp_path / "llava_pope_test.jsonl", questions)
    adv = [("dog", "yes"), ("cat", "yes"), ("cup", "yes"), ("car", "no")]
    write_jsonl(tmp_path / "coco" / "coco_pope_adversarial.json",
                [{"question_id": i + 1, "image": img, "text": f"Is there a {o} in the image?", "label": l}
                 for i, (o, l) in enumerate(adv)])
    write_jsonl(tmp_path / "coco" / "coco_pope_random.json",
                [{"question_id": 1, "image": img, "text": "Is there a dog in the image?", "label": "yes"},
                 {"question_id": 2, "image": img, "text": "Is there a zebra in the image?", "label": "no"}])
    # Answers in a shuffled order (a positional zip would misalign them):
    #   adversarial  q1 label yes, "Yes, there is a dog."  -> yes  TP
    #                q2 label yes, "No."                    -> no   FN
    #                q3 label yes, "Yes"                    -> yes  TP
    #                q4 label no,  "There is not a car."    -> no   TN
    #   TP=2 FP=0 TN=1 FN=1: precision 1, recall 2/3, F1 = 2*(2/3)/(5/3) = 0.8, accuracy 3/4, yes ratio 2/4
    #   random       q1 yes "yes" TP;  q2 no "no" TN  -> F1 = 1.0
    #   mean F1 = (0.8 + 1.0) / 2 = 0.9 -> 90.0
    # (zipping by position, the adversarial answers [q4, q3, q2, q1] would give FN TP FN FP -> F1 0.4)
    answers = [{"question_id": 10000002, "text": "no"}, {"question_id": 4, "text": "There is not a car."},
               {"question_id": 3, "text": "Yes"}, {"question_id": 10000001, "text": "yes"},
               {"question_id": 2, "text": "No."}, {"question_id": 1, "text": "Yes, there is a dog."}]
    rfile = write_jsonl(tmp_path / "answers" / "exp.jsonl", answers)
    score_file = str(tmp_path / "pope.score.json")
    out = eval_pope.main(["--annotation-dir", str(tmp_path / "coco"), "--question-file", qfile,
                          "--result-file", rfile, "--score-file", score_file])
    a = out["adversarial"]
    assert (a["TP"], a["FP"], a["TN"], a["FN"]) == (2, 0, 1, 1)
    assert a["precision"] == pytest.approx(1.0) and a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(0.8) and a["accuracy"] == pytest.approx(0.75)
    assert a["yes_ratio"] == pytest.approx(0.5)
    r = out["random"]
    assert (r["TP"], r["FP"], r["TN"], r["FN"]) == (1, 0, 1, 0) and r["f1"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "Category: adversarial, # samples: 4" in printed
    assert "Mean F1 over 2 categories (adversarial, random): 0.9000 (90.00)" in printed
    rec = read_json(score_file)
    assert rec["benchmark"] == "POPE" and rec["score"] == pytest.approx(90.0) and rec["n"] == 6
    assert rec["official"] is False  # "popular" missing


def test_pope_yes_no_mapping():
    assert eval_pope.pope_yes_no("Yes, there is a dog. No cat.") == "yes"   # only the first sentence
    assert eval_pope.pope_yes_no("No") == "no"
    assert eval_pope.pope_yes_no("There is no, dog") == "no"
    assert eval_pope.pope_yes_no("Nothing") == "yes"                       # whole words only, as upstream


# ----------------------------------------------------------------------------------------------------------
# ScienceQA
# ----------------------------------------------------------------------------------------------------------

def test_science_qa_by_hand(tmp_path, capsys):
    problems = {
        "p1": {"choices": ["x", "y", "z"], "answer": 1, "image": "image.png"},   # "B"            -> B correct
        "p2": {"choices": ["cat", "dog"], "answer": 0, "image": None},          # "A. cat"       -> A correct
        "p3": {"choices": ["a", "b", "c"], "answer": 2, "image": "image.png"},   # "... is C."    -> C correct
        "p4": {"choices": ["a", "b"], "answer": 0, "image": "image.png"},        # no letter      -> FAILED
        "p5": {"choices": ["a", "b"], "answer": 1, "image": "image.png"},        # no answer line -> wrong
        "p6": {"choices": ["a", "b"], "answer": 0, "image": None},               # val split: not scored
    }
    write_json(tmp_path / "sqa" / "problems.json", problems)
    write_json(tmp_path / "sqa" / "pid_splits.json", {"test": ["p1", "p2", "p3", "p4", "p5"], "val": ["p6"]})
    res = write_jsonl(tmp_path / "answers" / "exp.jsonl", [
        {"question_id": "p1", "prompt": "<image>\nWhich?\nA. x\nB. y\nC. z", "text": "B"},
        {"question_id": "p2", "prompt": "Which?\nA. cat\nB. dog", "text": "A. cat"},
        {"question_id": "p3", "prompt": "<image>\nWhich?", "text": "Because of reasons. The answer is C."},
        {"question_id": "p4", "prompt": "<image>\nWhich?", "text": "I think the first one"},
        {"question_id": "p6", "prompt": "Which?", "text": "A"},
    ])
    # All: 3 correct of 5 = 60.00%.  IMG (p1, p3, p4, p5): 2 of 4 = 50.00%
    # (upstream would leave the unanswered p5 out of the IMG subset: 2 of 3)
    out_file, out_result = str(tmp_path / "o" / "out.json"), str(tmp_path / "o" / "result.json")
    score_file = str(tmp_path / "sqa.score.json")
    res_dict = eval_science_qa.main(["--base-dir", str(tmp_path / "sqa"), "--result-file", res,
                                     "--output-file", out_file, "--output-result", out_result,
                                     "--score-file", score_file])
    assert res_dict["acc"] == pytest.approx(60.0) and res_dict["img_acc"] == pytest.approx(50.0)
    assert "Total: 5, Correct: 3, Accuracy: 60.00%, IMG-Accuracy: 50.00%" in capsys.readouterr().out
    analysis = read_json(out_file)
    parsed = {a["question_id"]: a["parsed_ans"] for a in analysis["correct"] + analysis["incorrect"]}
    assert parsed == {"p1": "B", "p2": "A", "p3": "C", "p4": "FAILED", "p5": "FAILED"}
    result = read_json(out_result)
    assert result["results"] == {"p1": 1, "p2": 0, "p3": 2, "p4": -1, "p5": -1}
    assert result["acc"] == pytest.approx(60.0) and result["count"] == 5
    rec = read_json(score_file)
    assert rec["benchmark"] == "SQA-IMG" and rec["score"] == pytest.approx(50.0) and rec["n"] == 4


def test_science_qa_parse_answer():
    opts = ["A", "B", "C", "D", "E"]
    assert eval_science_qa.parse_answer("The answer is B.", opts) == "B"
    assert eval_science_qa.parse_answer("The answer is B. The answer is C.", opts) == "FAILED"  # two matches
    assert eval_science_qa.parse_answer("C. text", opts) == "C"
    assert eval_science_qa.get_pred_idx("D", ["a", "b"], opts) == -1   # beyond the choices


# ----------------------------------------------------------------------------------------------------------
# GQA
# ----------------------------------------------------------------------------------------------------------

def test_gqa_converter_and_accuracy_by_hand(tmp_path, capsys):
    # converter: "Yes." -> "yes", "Right" -> "right", "Red" -> "red"
    # gold: yes / left / red -> 2 of 3 = 66.67%
    src = write_jsonl(tmp_path / "merge.jsonl", [
        {"question_id": "201", "prompt": "q", "text": "Yes."},
        {"question_id": "202", "prompt": "q", "text": "Right"},
        {"question_id": "203", "prompt": "q", "text": "Red"},
    ])
    data = tmp_path / "gqa" / "data"
    dst = str(data / "testdev_balanced_predictions.json")
    convert_gqa_for_eval.main(["--src", src, "--dst", dst])
    assert read_json(dst) == [{"questionId": "201", "prediction": "yes"},
                              {"questionId": "202", "prediction": "right"},
                              {"questionId": "203", "prediction": "red"}]
    write_json(data / "testdev_balanced_questions.json", {
        "201": {"question": "Is it sunny?", "answer": "yes", "imageId": "n1", "isBalanced": True},
        "202": {"question": "Which side?", "answer": "left", "imageId": "n1", "isBalanced": True},
        "203": {"question": "What color?", "answer": "red", "imageId": "n2", "isBalanced": True},
    })
    cwd = os.getcwd()
    os.chdir(data)  # the official layout: run inside the data folder with --tier
    try:
        res = eval_gqa.main(["--tier", "testdev_balanced", "--score-file", "gqa.score.json"])
    finally:
        os.chdir(cwd)
    assert res["correct"] == 2 and res["total"] == 3
    assert "Accuracy: 66.67%" in capsys.readouterr().out
    rec = read_json(data / "gqa.score.json")
    assert rec["benchmark"] == "GQA" and rec["score"] == pytest.approx(200 / 3) and rec["official"] is True


# ----------------------------------------------------------------------------------------------------------
# MME
# ----------------------------------------------------------------------------------------------------------

def _mme_release(root):
    # existence: flat layout (image and txt side by side); code_reasoning: images/ + questions_answers_YN/
    ex = root / "existence"
    ex.mkdir(parents=True)
    (ex / "0001.jpg").write_bytes(b"")
    (ex / "0001.txt").write_text("Is there a train in this image? Please answer yes or no.\tYes\n"
                                 "Is there a cow in this image? Please answer yes or no.\tNo\n")
    (ex / "0002.jpg").write_bytes(b"")
    (ex / "0002.txt").write_text("Is there a dog in this image? Please answer yes or no.\tYes\n"
                                 "Is there a cat in this image?  Please answer yes or no.\tNo\n")
    cr = root / "code_reasoning"
    (cr / "images").mkdir(parents=True)
    (cr / "questions_answers_YN").mkdir()
    (cr / "questions_answers_YN" / "0020.txt").write_text(
        "Is the output 3? Please answer yes or no.\tYes\nIs the output 4? Please answer yes or no.\tNo\n")
    (cr / "questions_answers_YN" / "0021.txt").write_text(
        "Is a c++ code shown? Please answer yes or no.\tYes\nIs a java code shown? Please answer yes or no.\tNo\n")


def test_mme_by_hand(tmp_path, capsys):
    _mme_release(tmp_path / "MME_Benchmark_release_version")

    def ans(qid, question, text):
        return {"question_id": qid, "prompt": question + SUFFIX, "text": text}
    # existence (Perception), answers deliberately not in image order:
    #   0001: Yes/"Yes" ok, No/"No" ok                  -> image correct
    #   0002: Yes/"yes, there is" ok, No/"Yes" wrong    -> image not correct
    #   acc = 3/4 = 75, acc+ = 1/2 = 50 -> score 125 -> Perception total 125
    # code_reasoning (Cognition):
    #   0020: Yes/"I am not sure" -> other (wrong), No/"no" ok
    #   0021: Yes/"No" wrong, No/"Nope" -> first 4 chars contain "no" -> no, ok
    #   acc = 2/4 = 50, acc+ = 0/2 = 0 -> score 50 -> Cognition total 50
    answers = [
        ans("existence/0002.jpg", "Is there a cat in this image?", "Yes"),
        ans("existence/0001.jpg", "Is there a train in this image?", "Yes"),
        ans("code_reasoning/0020.png", "Is the output 3?", "I am not sure"),
        ans("existence/0002.jpg", "Is there a dog in this image?", "yes, there is"),
        ans("code_reasoning/0021.png", "Is a c++ code shown?", "No"),
        ans("existence/0001.jpg", "Is there a cow in this image?", "No"),
        ans("code_reasoning/0020.png", "Is the output 4?", "no"),
        ans("code_reasoning/0021.png", "Is a java code shown?", "Nope"),
    ]
    write_jsonl(tmp_path / "answers" / "exp.jsonl", answers)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # upstream layout: inside playground/data/eval/MME
    try:
        res = eval_mme.main(["--experiment", "exp", "--score-file", "mme.score.json"])
    finally:
        os.chdir(cwd)
    ex, cr = res["subtasks"]["existence"], res["subtasks"]["code_reasoning"]
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == (pytest.approx(75), pytest.approx(50), pytest.approx(125))
    assert (cr["acc"], cr["acc_plus"], cr["score"]) == (pytest.approx(50), pytest.approx(0), pytest.approx(50))
    assert cr["other_answers"] == 1
    assert res["perception"] == pytest.approx(125) and res["cognition"] == pytest.approx(50)
    printed = capsys.readouterr().out
    assert "Perception: 125.00  Cognition: 50.00" in printed and "totals are partial" in printed
    rec = read_json(tmp_path / "mme.score.json")
    assert rec["benchmark"] == "MME" and rec["score"] == pytest.approx(125) and rec["n"] == 4
    assert rec["official"] is False  # 9 perception subtasks missing
    # the official tool's input: per subtask, file<TAB>question<TAB>gt<TAB>prediction, two lines per image
    lines = (tmp_path / "eval_tool" / "answers" / "exp" / "existence.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["0002.txt", "0002.txt", "0001.txt", "0001.txt"]
    assert lines[0].split("\t") == ["0002.txt", "Is there a cat in this image?  Please answer yes or no.",
                                    "No", "Yes"]


def test_mme_parse_like_official_tool():
    assert eval_mme.parse_pred_ans("yes") == "yes"
    assert eval_mme.parse_pred_ans("no, it is not") == "no"
    assert eval_mme.parse_pred_ans("the answer is yes") == "other"   # only the first 4 characters count
    assert eval_mme.parse_pred_ans(" yes") == "yes"


# ----------------------------------------------------------------------------------------------------------
# Summary table
# ----------------------------------------------------------------------------------------------------------

def _score(path, benchmark, score, official=True):
    write_json(path, {"benchmark": benchmark, "metric": "m", "score": score, "n": 1, "official": official})


def test_summarize_two_runs_by_hand(tmp_path, capsys):
    base, ours = tmp_path / "base", tmp_path / "ours"
    _score(base / "gqa.score.json", "GQA", 60.0)
    _score(base / "pope.score.json", "POPE", 80.0)
    _score(base / "nested" / "mme.score.json", "MME", 1500.0)       # found recursively
    _score(base / "mmb.score.json", "MMB", 60.0, official=False)
    _score(ours / "gqa.score.json", "GQA", 63.0)
    _score(ours / "pope.score.json", "POPE", 84.0)
    _score(ours / "mme.score.json", "MME", 1200.0)
    _score(ours / "seed.score.json", "SEED", 50.0)                   # the baseline has no SEED
    # ours vs base over the shared benchmarks GQA, POPE, MME (ours lacks MMB, base lacks SEED):
    #   63/60 = 105%, 84/80 = 105%, 1200/1500 = 80%  -> mean (105 + 105 + 80) / 3 = 96.667%
    md, csv_path = str(tmp_path / "s.md"), str(tmp_path / "s.csv")
    rows = summarize.main(["--runs", f"base={base}", f"ours={ours}", "--baseline", "base",
                           "--out-md", md, "--out-csv", csv_path])
    by_run = {r["run"]: r for r in rows}
    assert by_run["base"]["Avg. rel. (%)"] == pytest.approx(100.0)
    assert by_run["ours"]["Avg. rel. (%)"] == pytest.approx(290 / 3)
    assert by_run["ours"]["avg_over"] == ["GQA", "POPE", "MME"]
    text = open(md).read()
    assert "| Run | VQAv2 | GQA | SQA-IMG | TextVQA | POPE | MME | MMB | MMB-CN | SEED | Avg. rel. (%) |" in text
    assert "| base (baseline) | – | 60.0 | – | – | 80.0 | 1500.0 | 60.0† | – | – | 100.0 |" in text
    assert "| ours | – | 63.0 | – | – | 84.0 | 1200.0 | – | – | 50.0 | 96.7 |" in text
    assert "left out of the run's average" in text and "†: local score" in text
    assert text == capsys.readouterr().out
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert table[1]["run"] == "ours" and table[1]["Avg. rel. (%)"] == "96.6667"
    assert table[1]["MMB"] == "" and table[1]["MME"] == "1200.0000"


def test_score_files_from_scorers_feed_the_summary(tmp_path):
    # GQA through its scorer for two runs: 3/3 vs 2/3 correct -> relative 66.67 / 100 * 100 = 66.67%
    questions = {"1": {"answer": "yes"}, "2": {"answer": "no"}, "3": {"answer": "red"}}
    qfile = write_json(tmp_path / "q.json", questions)
    for run, preds in (("a", ["yes", "no", "red"]), ("b", ["yes", "yes", "red"])):
        pfile = write_json(tmp_path / run / "pred.json",
                           [{"questionId": q, "prediction": p} for q, p in zip("123", preds)])
        eval_gqa.main(["--questions", qfile, "--predictions", pfile,
                       "--score-file", str(tmp_path / "scores" / run / "gqa.score.json")])
    rows = summarize.main(["--runs", f"a={tmp_path / 'scores' / 'a'}", f"b={tmp_path / 'scores' / 'b'}"])
    assert rows[1]["GQA"] == pytest.approx(200 / 3)
    assert rows[1]["Avg. rel. (%)"] == pytest.approx(200 / 3)


def test_summarize_eval_dir_layout_by_hand(tmp_path, capsys):
    # The eval scripts' layout: <EVAL_DIR>/<bench>/scores/<NAME>.score.json, one run = one NAME.
    ev = tmp_path / "eval"
    full, pruned = "llava-v1.5-7b", "llava-v1.5-7b_pruned-divprune-r0.9"
    _score(ev / "gqa" / "scores" / f"{full}.score.json", "GQA", 62.0)
    _score(ev / "pope" / "scores" / f"{full}.score.json", "POPE", 86.0)
    _score(ev / "MME" / "scores" / f"{full}.score.json", "MME", 1500.0)
    _score(ev / "textvqa" / "scores" / f"{full}.score.json", "TextVQA", 58.0)
    _score(ev / "gqa" / "scores" / f"{pruned}.score.json", "GQA", 55.8)
    _score(ev / "pope" / "scores" / f"{pruned}.score.json", "POPE", 77.4)
    _score(ev / "MME" / "scores" / f"{pruned}.score.json", "MME", 1350.0)
    _score(ev / "seed_bench" / "scores" / f"{pruned}.score.json", "SEED", 50.0)    # the full run has no SEED
    # not part of either run: another NAME, a file outside <bench>/scores/, one nested below it
    _score(ev / "gqa" / "scores" / f"{pruned}-noiso.score.json", "GQA", 1.0)
    _score(ev / "gqa" / "answers" / f"{full}.score.json", "GQA", 1.0)
    _score(ev / "sqa" / "scores" / "old" / f"{full}.score.json", "SQA-IMG", 1.0)
    assert summarize.eval_dir_score_files(str(ev), full) == sorted(
        str(ev / b / "scores" / f"{full}.score.json") for b in ("gqa", "pope", "MME", "textvqa"))
    # pruned vs full over the shared GQA, POPE, MME (TextVQA only in full, SEED only in pruned):
    #   55.8/62 = 90%, 77.4/86 = 90%, 1350/1500 = 90%  -> mean 90%
    rows = summarize.main(["--eval-dir", str(ev), "--runs", full, pruned])
    by_run = {r["run"]: r for r in rows}
    assert by_run[full]["Avg. rel. (%)"] == pytest.approx(100.0)
    assert by_run[full]["avg_over"] == ["GQA", "TextVQA", "POPE", "MME"]
    assert by_run[pruned]["Avg. rel. (%)"] == pytest.approx(90.0)
    assert by_run[pruned]["avg_over"] == ["GQA", "POPE", "MME"]
    assert by_run[full]["SQA-IMG"] is None and by_run[pruned]["SEED"] == 50.0
    text = capsys.readouterr().out
    assert f"| {full} (baseline) | – | 62.0 | – | 58.0 | 86.0 | 1500.0 | – | – | – | 100.0 |" in text
    assert f"| {pruned} | – | 55.8 | – | – | 77.4 | 1350.0 | – | – | 50.0 | 90.0 |" in text

    # LABEL=NAME with --eval-dir, and the baseline by label: full vs pruned = 62/55.8, 86/77.4, 1500/1350
    # = 111.11% each -> 111.11%
    rows = summarize.main(["--eval-dir", str(ev), "--runs", f"full={full}", f"ours={pruned}", "--baseline", "ours"])
    assert [r["run"] for r in rows] == ["full", "ours"]
    assert rows[0]["Avg. rel. (%)"] == pytest.approx(1000 / 9)
    assert rows[1]["Avg. rel. (%)"] == pytest.approx(100.0)
    capsys.readouterr()

    # the NAME=PATH form still works, and gives the same numbers as the eval-dir form for a score file
    rows = summarize.main(["--runs", f"a={ev / 'gqa' / 'scores' / f'{full}.score.json'}",
                           f"b={ev / 'gqa' / 'scores' / f'{pruned}.score.json'}"])
    assert rows[1]["Avg. rel. (%)"] == pytest.approx(90.0)
    capsys.readouterr()

    with pytest.raises(FileNotFoundError, match="no score file"):               # a NAME without score files
        summarize.main(["--eval-dir", str(ev), "--runs", full, "no-such-run"])
    with pytest.raises(SystemExit):                                              # a bare NAME needs --eval-dir
        summarize.main(["--runs", full])
    assert "needs --eval-dir" in capsys.readouterr().err
