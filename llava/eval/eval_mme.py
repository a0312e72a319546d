"""MME: convert ``model_vqa_loader`` answers and score them like the official MME calculation tool.

This does in one step what upstream does in two (``convert_answer_to_mme.py`` from eval.zip, then the
official ``eval_tool/calculation.py``)::

    # upstream layout: run inside ./playground/data/eval/MME
    python -m llava.eval.eval_mme --experiment llava-v1.5-13b
    #   reads answers/llava-v1.5-13b.jsonl and the ground truth in MME_Benchmark_release_version/,
    #   writes eval_tool/answers/llava-v1.5-13b/<subtask>.txt (the official tool's input) and prints scores

    # explicit paths
    python -m llava.eval.eval_mme --answers-file answers/X.jsonl --data-path MME_Benchmark_release_version \
        [--question-file llava_mme.jsonl] [--results-dir eval_tool/answers/X] [--score-file X.score.json]

Inputs:
- answers JSONL of ``model_vqa_loader``: ``{"question_id", "prompt", "text"}``. In LLaVA's ``llava_mme.jsonl``
  the ``question_id`` (= ``image``) is ``"<subtask>/<image file>"``, e.g. ``"artwork/10002.jpg"``, and the
  ``text``/``prompt`` is the MME question with "Please answer yes or no." replaced by "Answer the question
  using a single word or phrase.". The subtask is the answer's or question's ``category`` field when there
  is one, else the part of ``question_id`` before the first ``/``.
- ground truth, from either source:
  * ``--data-path``: the MME release folder: per subtask either ``<subtask>/*.txt`` next to the images, or
    ``<subtask>/images/`` + ``<subtask>/questions_answers_YN/*.txt``; each txt (named after its image) has
    ``question<TAB>yes|no`` lines;
  * ``--question-file`` rows that carry an ``answer`` field (``gt_answer`` and ``label`` are accepted too).
  Answers and ground truth are matched on (subtask, image name without extension, question), the question
  compared without the two instruction sentences, whitespace collapsed, case ignored (upstream's converter
  tried two spellings of the appended "Please answer yes or no." instead).

Scoring (the official tool's rules): the answer is lowercased; exactly "yes"/"no" is taken as such,
otherwise its first 4 characters decide: containing "yes" -> yes, else containing "no" -> no, else "other"
(always wrong). Per subtask: acc = correct questions / questions; acc+ = images whose questions are all
correct / images (MME has two questions per image); score = (acc + acc+) x 100 (max 200). Perception total
= sum over existence, count, position, color, posters, celebrity, scene, landmark, artwork, OCR (max 2000);
Cognition total = sum over commonsense_reasoning, numerical_calculation, text_translation, code_reasoning
(max 800). Differences from the official tool: acc+ groups questions by image instead of taking
consecutive line pairs (so the order of the answer lines does not matter), and tabs/newlines in an answer
are replaced by spaces in the written txt files (they would break the tool's tab split).

The score file's score is the Perception total (the number LLaVA reports as MME); Cognition and the
per-subtask numbers are in its details. Missing subtasks are reported and left out of the totals, and the
score file is then marked non-official.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from llava.eval.summarize import write_score_file

EVAL_TYPE_DICT = {
    "Perception": ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"],
    "Cognition": ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"],
}
_INSTRUCTIONS = ("Answer the question using a single word or phrase.", "Please answer yes or no.")
_GT_FIELDS = ("answer", "gt_answer", "label")


def normalize_question(text: str) -> str:
    for sentence in _INSTRUCTIONS:
        text = text.replace(sentence, " ")
    return re.sub(r"\s+", " ", text).strip().lower()


def parse_pred_ans(pred_ans: str) -> str:
    """yes / no / other, as the official calculation tool decides (input already lowercased)."""
    if pred_ans in ("yes", "no"):
        return pred_ans
    prefix = pred_ans[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def _image_stem(question_id: str) -> str:
    return os.path.splitext(str(question_id).split("/")[-1])[0]


def load_gt_from_release(data_path: str) -> Dict[Tuple[str, str, str], Tuple[str, str]]:
    """(subtask, image stem, normalised question) -> (question as written, "yes"/"no")."""
    gt = {}
    for category in sorted(os.listdir(data_path)):
        cat_dir = os.path.join(data_path, category)
        if not os.path.isdir(cat_dir):
            continue
        if os.path.isdir(os.path.join(cat_dir, "images")):
            qa_dir = os.path.join(cat_dir, "questions_answers_YN")
        else:
            qa_dir = cat_dir
        if not os.path.isdir(qa_dir):
            continue
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n").rstrip("\r")
                    if not line.strip():
                        continue
                    question, answer = line.strip().split("\t")
                    key = (category, os.path.splitext(name)[0], normalize_question(question))
                    gt[key] = (question, answer.strip())
    return gt


def _read_jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(answers: List[dict], questions: Dict[str, dict], gt: Dict[tuple, Tuple[str, str]]):
    """Per subtask, an ordered mapping image stem -> [(question, gt, prediction)]; plus unmatched keys."""
    per_task: Dict[str, "OrderedDict[str, list]"] = defaultdict(OrderedDict)
    unmatched = []
    for ans in answers:
        qid = str(ans["question_id"])
        q = questions.get(qid, {})
        category = ans.get("category") or q.get("category") or qid.split("/")[0]
        stem = _image_stem(q.get("image", qid))
        prompt = ans.get("prompt", q.get("text", ""))
        key = (category, stem, normalize_question(prompt))
        hit = gt.get(key)
        if hit is None:
            unmatched.append(key)
            continue
        question, gt_answer = hit
        per_task[category].setdefault(stem, []).append((question, gt_answer, ans["text"]))
    return per_task, unmatched


def score_task(images: "OrderedDict[str, list]") -> dict:
    n_q = n_correct = n_img_correct = n_other = 0
    odd_images = 0
    for items in images.values():
        if len(items) != 2:
            odd_images += 1
        all_ok = True
        for _question, gt_answer, pred in items:
            gt_label = gt_answer.lower()
            pred_label = parse_pred_ans(pred.lower())
            n_q += 1
            n_other += pred_label == "other"
            ok = pred_label == gt_label
            n_correct += ok
            all_ok &= ok
        n_img_correct += all_ok
    acc = n_correct / n_q if n_q else 0.0
    acc_plus = n_img_correct / len(images) if images else 0.0
    return {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus),
            "questions": n_q, "images": len(images), "other_answers": n_other,
            "images_without_two_questions": odd_images}


def write_official_txt(per_task, results_dir: str) -> None:
    os.makedirs(results_dir, exist_ok=True)
    for category, images in per_task.items():
        with open(os.path.join(results_dir, f"{category}.txt"), "w", encoding="utf-8") as fp:
            for stem, items in images.items():
                for question, gt_answer, pred in items:
                    pred = re.sub(r"[\t\r\n]+", " ", pred)
                    fp.write("\t".join((stem + ".txt", question, gt_answer, pred)) + "\n")


def evaluate(answers_file: str, data_path: Optional[str] = None, question_file: Optional[str] = None,
             results_dir: Optional[str] = None, score_file: Optional[str] = None) -> dict:
    answers = _read_jsonl(answers_file)
    questions = {str(q["question_id"]): q for q in _read_jsonl(question_file)} if question_file else {}

    gt: Dict[tuple, Tuple[str, str]] = {}
    if data_path:
        gt.update(load_gt_from_release(data_path))
    for qid, q in questions.items():
        field = next((f for f in _GT_FIELDS if f in q), None)
        if field is None:
            continue
        category = q.get("category") or qid.split("/")[0]
        question = q.get("text", "")
        gt[(category, _image_stem(q.get("image", qid)), normalize_question(question))] = (
            question.split("\n")[0].replace("\t", " "), str(q[field]))
    if not gt:
        raise SystemExit("no MME ground truth: give --data-path (the MME release folder) or a --question-file "
                         "whose rows carry an 'answer' field")

    per_task, unmatched = collect(answers, questions, gt)
    if unmatched:
        print(f"WARNING: {len(unmatched)} answer(s) have no ground truth, not scored; e.g. {unmatched[:2]}")
    if not per_task:
        raise SystemExit("no answer could be matched to the MME ground truth")
    if results_dir:
        write_official_txt(per_task, results_dir)

    task_scores = {c: score_task(images) for c, images in per_task.items()}
    totals, missing = {}, []
    for eval_type, tasks in EVAL_TYPE_DICT.items():
        print("===========", eval_type, "===========")
        present = [t for t in tasks if t in task_scores]
        missing += [t for t in tasks if t not in task_scores]
        totals[eval_type] = sum(task_scores[t]["score"] for t in present)
        print("total score:", round(totals[eval_type], 4), "\n")
        for task in tasks:
            if task in task_scores:
                s = task_scores[task]
                print(f"\t {task}  score: {s['score']:.4f}  (acc {s['acc']:.2f}, acc+ {s['acc_plus']:.2f}, "
                      f"{s['questions']} questions, {s['images']} images)")
            else:
                print(f"\t {task}  score: – (no answers)")
        print("\n")
    known = {t for ts in EVAL_TYPE_DICT.values() for t in ts}
    for task in sorted(set(task_scores) - known):
        print(f"(subtask {task!r} is not an MME subtask; not in the totals: {task_scores[task]['score']:.4f})")
    if missing:
        print(f"WARNING: missing subtasks, totals are partial: {', '.join(missing)}")
    for task, s in task_scores.items():
        if s["images_without_two_questions"]:
            print(f"WARNING: {task}: {s['images_without_two_questions']} image(s) without exactly 2 questions")
    print(f"Perception: {totals['Perception']:.2f}  Cognition: {totals['Cognition']:.2f}")

    n = sum(s["questions"] for t, s in task_scores.items() if t in EVAL_TYPE_DICT["Perception"])
    write_score_file(score_file, "MME", "perception_total", totals["Perception"], n,
                     official=not any(t in missing for t in EVAL_TYPE_DICT["Perception"]),
                     details={"perception": totals["Perception"], "cognition": totals["Cognition"],
                              "subtasks": task_scores, "missing_subtasks": missing},
                     source=answers_file)
    return {"perception": totals["Perception"], "cognition": totals["Cognition"], "subtasks": task_scores,
            "missing": missing}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description="MME conversion + scoring (Perception / Cognition totals).")
    p.add_argument("--experiment", type=str, default=None,
                   help="upstream layout, run inside playground/data/eval/MME: answers/<experiment>.jsonl, "
                        "MME_Benchmark_release_version/, writes eval_tool/answers/<experiment>/")
    p.add_argument("--answers-file", type=str, default=None)
    p.add_argument("--question-file", type=str, default=None)
    p.add_argument("--data-path", type=str, default=None, help="MME_Benchmark_release_version folder")
    p.add_argument("--results-dir", type=str, default=None,
                   help="also write the official calculation tool's <subtask>.txt files here")
    p.add_argument("--score-file", type=str, default=None,
                   help="write a machine-readable score file (see llava.eval.summarize)")
    args = p.parse_args(argv)
    if args.experiment:
        args.answers_file = args.answers_file or os.path.join("answers", f"{args.experiment}.jsonl")
        args.data_path = args.data_path or "MME_Benchmark_release_version"
        args.results_dir = args.results_dir or os.path.join("eval_tool", "answers", args.experiment)
    if not args.answers_file:
        raise SystemExit("give --answers-file (or --experiment)")
    return evaluate(args.answers_file, args.data_path, args.question_file, args.results_dir, args.score_file)


if __name__ == "__main__":
    main()
