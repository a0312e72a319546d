#!/usr/bin/env python
"""Tiny offline stand-ins for the nine LLaVA-1.5 eval sets, in their real file formats and at the paths
scripts/v1_5/eval/*.sh expect under an eval root (upstream: ./playground/data/eval).

    python -m dualspeed_lab.tiny.eval_fixtures --out ./playground/tiny/eval
    EVAL_DIR=./playground/tiny/eval bash scripts/v1_5/eval/pope.sh ./checkpoints/llava-tiny

Every question is about a small synthetic picture: a plain coloured background with a centred square of a
second colour, so each answer (colour, yes/no, option letter) is known by construction. Nothing is
downloaded; the output is deterministic.

Layout under --out (2-6 questions per benchmark):

    vqav2/llava_vqav2_mscoco_test-dev2015.jsonl   questions {question_id, image, text, category}
    vqav2/llava_vqav2_mscoco_test2015.jsonl       the full test2015 list (test-dev plus more ids)
    vqav2/test2015/COCO_test2015_<12 digits>.jpg
    vqav2/fixture_test-dev2015_annotations.json   fixture only (test-dev answers are not public): the known
                                                  answers in the VQA annotation layout, for a local score
    gqa/llava_gqa_testdev_balanced.jsonl
    gqa/data/images/<imageId>.jpg
    gqa/data/testdev_balanced_questions.json      {qid: {question, answer, fullAnswer, imageId, types, ...}}
    scienceqa/llava_test_CQM-A.json               [{id, image?, conversations}]
    scienceqa/images/test/<pid>/image.png
    scienceqa/problems.json, scienceqa/pid_splits.json
    textvqa/llava_textvqa_val_v051_ocr.jsonl      question_id = image_id; "Reference OCR token: " line
    textvqa/train_images/<image_id>.jpg
    textvqa/TextVQA_0.5.1_val.json                {"data": [{image_id, question, answers (10), ...}]}
    pope/llava_pope_test.jsonl                    with category adversarial|popular|random
    pope/val2014/COCO_val2014_<12 digits>.jpg
    pope/coco/coco_pope_{adversarial,popular,random}.json   one JSON object a line, with label yes|no
    MME/llava_mme.jsonl                           question_id = image path under the release folder
    MME/MME_Benchmark_release_version/<category>/<image> + <stem>.txt                  (flat categories)
    MME/MME_Benchmark_release_version/artwork/{images,questions_answers_YN}/...        (nested categories)
    mmbench/mmbench_dev_20230712.tsv              index, question, hint, A-D, answer, category, image (base64), ...
    mmbench_cn/mmbench_dev_cn_20231003.tsv
    seed_bench/llava-seed-bench.jsonl             image under SEED-Bench-image/ or SEED-Bench-video-image/
    seed_bench/SEED-Bench-image/<data_id>.jpg, seed_bench/SEED-Bench-video-image/<stem>.png
    seed_bench/SEED-Bench.json                    {question_type: {name: id}, questions: [...]}

`build_eval_fixtures(root)` returns {"root": ..., <benchmark dir>: {paths, "questions": n, "answers": {...}}}.
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
LETTER_CN = "请直接回答选项字母。"

COLORS = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (235, 215, 40),
    "white": (245, 245, 245), "black": (15, 15, 15), "purple": (140, 50, 170), "orange": (240, 140, 20),
}
COLOR_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色", "black": "黑色",
            "purple": "紫色", "orange": "橙色"}


# ---------------------------------------------------------------------------------------------- writers

def _picture(background: str, square: str, size=(40, 30)):
    """A `background` picture with a centred `square` (half the short side)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, COLORS[background])
    side = min(size) // 2
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    ImageDraw.Draw(img).rectangle([left, top, left + side - 1, top + side - 1], fill=COLORS[square])
    return img


def _save_picture(path: str, background: str, square: str, size=(40, 30)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = _picture(background, square, size)
    if path.lower().endswith((".jpg", ".jpeg")):
        img.save(path, quality=95)
    else:
        img.save(path)
    return path


def _b64_png(background: str, square: str, mode="RGB") -> str:
    buf = io.BytesIO()
    img = _picture(background, square)
    (img.convert(mode) if mode != "RGB" else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_json(path: str, obj, indent=None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
    return path


def _write_jsonl(path: str, rows) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _write_tsv(path: str, header, rows) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(h) is None else row[h] for h in header])
    return path


# ---------------------------------------------------------------------------------------------- benchmarks

def build_vqav2(root: str) -> dict:
    d = os.path.join(root, "vqav2")
    items = [(262144, "red", "blue"), (262145, "green", "white"), (262146, "yellow", "black")]
    testdev, answers = [], {}
    for n, (image_id, bg, sq) in enumerate(items):
        image = f"COCO_test2015_{image_id:012d}.jpg"
        _save_picture(os.path.join(d, "test2015", image), bg, sq)
        qid = image_id * 1000 + n
        testdev.append({"question_id": qid, "image": image,
                        "text": f"What color is the background?\n{SHORT}", "category": "default"})
        answers[qid] = bg
    # test2015 = test-dev plus questions only the full test split has (they get "" in the upload file)
    extra = [{"question_id": 300000000 + k, "image": testdev[k]["image"],
              "text": f"Is there a square?\n{SHORT}", "category": "default"} for k in range(2)]
    # Test-dev answers are not public (EvalAI scores them). For the fixture only, its known answers in the
    # official VQA annotation layout, so the converter's local score (--annotation-file) can be exercised.
    annotations = {"data_subtype": "test-dev2015 (fixture)", "annotations": [
        {"question_id": qid, "image_id": qid // 1000, "question_type": "what color is the",
         "answer_type": "other", "multiple_choice_answer": a,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}
        for qid, a in answers.items()]}
    return {"dir": d,
            "annotation_file": _write_json(os.path.join(d, "fixture_test-dev2015_annotations.json"), annotations),
            "question_file": _write_jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"), testdev),
            "test_file": _write_jsonl(os.path.join(d, "llava_vqav2_mscoco_test2015.jsonl"), testdev + extra),
            "image_folder": os.path.join(d, "test2015"), "questions": len(testdev),
            "test_questions": len(testdev) + len(extra), "answers": answers}


def build_gqa(root: str) -> dict:
    d = os.path.join(root, "gqa")
    data = os.path.join(d, "data")
    items = [("201307251", "n161313", "red", "blue", "What color is the square?", "blue", "The square is blue.",
              "query", "attr", "queryAttr"),
             ("201307252", "n161313", "red", "blue", "Is the background red?", "yes", "Yes, the background is red.",
              "verify", "attr", "verifyAttr"),
             ("201640614", "n235859", "green", "yellow", "Is the square green?", "no", "No, the square is yellow.",
              "verify", "attr", "verifyAttr"),
             ("201640615", "n235859", "green", "yellow", "Which color is the background?", "green",
              "The background is green.", "query", "attr", "queryAttr")]
    rows, questions, answers = [], {}, {}
    for qid, image_id, bg, sq, q, a, full, structural, semantic, detailed in items:
        _save_picture(os.path.join(data, "images", f"{image_id}.jpg"), bg, sq)
        rows.append({"question_id": qid, "image": f"{image_id}.jpg", "text": f"{q}\n{SHORT}"})
        questions[qid] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": "square (0)"},
                         {"operation": structural, "dependencies": [0], "argument": "color"}],
            "entailed": [], "equivalent": [qid], "question": q, "imageId": image_id, "isBalanced": True,
            "groups": {"global": None, "local": f"10{structural}-square_color"}, "answer": a,
            "semanticStr": f"select: square (0)->{structural}: color [0]",
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
            "fullAnswer": full}
        answers[qid] = a
    return {"dir": d, "question_file": _write_jsonl(os.path.join(d, "llava_gqa_testdev_balanced.jsonl"), rows),
            "image_folder": os.path.join(data, "images"),
            "annotation_file": _write_json(os.path.join(data, "testdev_balanced_questions.json"), questions),
            "questions": len(rows), "answers": answers}


def build_scienceqa(root: str) -> dict:
    d = os.path.join(root, "scienceqa")
    # (pid, image colours or None, question, choices, answer index, hint, split)
    items = [("4", ("white", "red"), "What color is the square in the picture?", ["red", "blue"], 0,
              "The picture shows a square.", "test"),
             ("7", ("blue", "yellow"), "Which color is the background?", ["green", "blue", "black"], 1, "", "test"),
             ("12", None, "Which of these is a primary color?", ["red", "purple", "orange"], 0,
              "Primary colors cannot be mixed from other colors.", "test"),
             ("15", ("black", "green"), "What color is the square?", ["yellow", "black", "white", "green"], 3,
              "", "test"),
             ("101", None, "Which color do you get from red and blue?", ["purple", "green"], 0, "", "train")]
    problems, splits, rows, answers = {}, {"train": [], "val": [], "test": [], "minival": [], "trainval": [],
                                           "minitrain": [], "minitest": []}, [], {}
    for pid, colours, question, choices, answer, hint, split in items:
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": hint,
                         "image": "image.png" if colours else None, "task": "closed choice", "grade": "grade3",
                         "subject": "natural science", "topic": "colors", "category": "Colors",
                         "skill": "Identify colors", "lecture": "Colors can be named.",
                         "solution": f"The answer is {choices[answer]}.", "split": split}
        splits[split].append(pid)
        splits["trainval" if split in ("train", "val") else "minitest"].append(pid)
        if split != "test":
            continue
        letters = "ABCDE"
        options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
        value = f"Context: {hint or 'N/A'}\n{question}\n{options}"
        row = {"id": pid, "conversations": [{"from": "human", "value": value},
                                            {"from": "gpt", "value": letters[answer]}]}
        if colours:
            _save_picture(os.path.join(d, "images", "test", pid, "image.png"), *colours)
            row["image"] = f"{pid}/image.png"
            row["conversations"][0]["value"] = "<image>\n" + value
        rows.append(row)
        answers[pid] = letters[answer]
    return {"dir": d, "question_file": _write_json(os.path.join(d, "llava_test_CQM-A.json"), rows, indent=2),
            "image_folder": os.path.join(d, "images", "test"),
            "problems": _write_json(os.path.join(d, "problems.json"), problems),
            "pid_splits": _write_json(os.path.join(d, "pid_splits.json"), splits),
            "questions": len(rows), "image_questions": sum("image" in r for r in rows), "answers": answers}


def build_textvqa(root: str) -> dict:
    d = os.path.join(root, "textvqa")
    # (image_id, colours, question, OCR tokens, the 10 answers)
    items = [("003a8ae2ef43b901", ("white", "red"), "what color is the square?", ["red", "square"], ["red"] * 10),
             ("0054c91397f2fe05", ("blue", "white"), "what is the background color?", [],
              ["blue"] * 7 + ["dark blue"] * 3),
             ("0054c91397f2fe05", ("blue", "white"), "what color is the shape?", ["white"],
              ["white"] * 9 + ["grey"])]
    rows, data, answers = [], [], {}
    for n, (image_id, colours, question, ocr, gts) in enumerate(items):
        _save_picture(os.path.join(d, "train_images", f"{image_id}.jpg"), *colours, size=(48, 32))
        text = question + ("\nReference OCR token: " + ", ".join(ocr) if ocr else "") + "\n" + SHORT
        rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
        data.append({"question": question, "image_id": image_id, "image_classes": ["Poster"],
                     "flickr_original_url": "", "flickr_300k_url": "", "image_width": 48, "image_height": 32,
                     "answers": gts, "question_tokens": question.rstrip("?").split(), "question_id": 34602 + n,
                     "set_name": "val"})
        answers[(image_id, question)] = gts[0]
    return {"dir": d, "question_file": _write_jsonl(os.path.join(d, "llava_textvqa_val_v051_ocr.jsonl"), rows),
            "image_folder": os.path.join(d, "train_images"),
            "annotation_file": _write_json(os.path.join(d, "TextVQA_0.5.1_val.json"),
                                           {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                            "data": data}),
            "questions": len(rows), "answers": {f"{k[0]}|{k[1]}": v for k, v in answers.items()}}


def build_pope(root: str) -> dict:
    d = os.path.join(root, "pope")
    images = {310196: ("white", "red"), 210789: ("green", "blue")}
    for image_id, colours in images.items():
        _save_picture(os.path.join(d, "val2014", f"COCO_val2014_{image_id:012d}.jpg"), *colours)
    # per category: (image id, asked colour, label); labels follow the question order within a category
    per_cat = {"adversarial": [(310196, "red", "yes"), (310196, "blue", "no")],
               "popular": [(210789, "blue", "yes"), (210789, "yellow", "no")],
               "random": [(310196, "green", "no"), (210789, "blue", "yes")]}
    rows, ann_files, answers = [], {}, {}
    qid = 0
    for cat, items in per_cat.items():
        labels = []
        for local_id, (image_id, colour, label) in enumerate(items, start=1):
            qid += 1
            image = f"COCO_val2014_{image_id:012d}.jpg"
            question = f"Is there a {colour} square in the image?"
            rows.append({"question_id": qid, "image": image, "text": f"{question}\n{SHORT}", "category": cat})
            labels.append({"question_id": local_id, "image": image, "text": question, "label": label})
            answers[qid] = label
        ann_files[cat] = _write_jsonl(os.path.join(d, "coco", f"coco_pope_{cat}.json"), labels)
    return {"dir": d, "question_file": _write_jsonl(os.path.join(d, "llava_pope_test.jsonl"), rows),
            "image_folder": os.path.join(d, "val2014"), "annotation_dir": os.path.join(d, "coco"),
            "annotation_files": ann_files, "questions": len(rows), "answers": answers}


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")


def build_mme(root: str) -> dict:
    d = os.path.join(root, "MME")
    release = os.path.join(d, "MME_Benchmark_release_version")
    # (category, nested layout?, image file, colours, [(question without suffix, answer), ...]) - 2 per image
    items = [("existence", False, "000000006040.jpg", ("white", "red"),
              [("Is there a red square in this image?", "Yes"), ("Is there a blue square in this image?", "No")]),
             ("artwork", True, "10002.jpg", ("yellow", "black"),
              [("Is this artwork mostly yellow?", "Yes"), ("Is this artwork mostly green?", "No")]),
             ("code_reasoning", False, "0020.png", ("black", "white"),
              [("Is the square in the picture white?", "Yes"), ("Is the square in the picture red?", "No")])]
    rows, answers = [], {}
    for category, nested, image, colours, qas in items:
        cat_dir = os.path.join(release, category)
        image_dir = os.path.join(cat_dir, "images") if nested else cat_dir
        qa_dir = os.path.join(cat_dir, "questions_answers_YN") if nested else cat_dir
        _save_picture(os.path.join(image_dir, image), *colours)
        os.makedirs(qa_dir, exist_ok=True)
        with open(os.path.join(qa_dir, os.path.splitext(image)[0] + ".txt"), "w", encoding="utf-8") as f:
            for question, answer in qas:
                f.write(f"{question} Please answer yes or no.\t{answer}\n")
        rel = f"{category}/images/{image}" if nested else f"{category}/{image}"
        for question, answer in qas:
            rows.append({"question_id": rel, "image": rel, "text": f"{question}\n{SHORT}", "category": category})
            answers[f"{rel}|{question}"] = answer
    perception = sum(r["category"] in MME_PERCEPTION for r in rows)
    return {"dir": d, "question_file": _write_jsonl(os.path.join(d, "llava_mme.jsonl"), rows),
            "image_folder": release, "gt_dir": release, "questions": len(rows), "perception_questions": perception,
            "answers": answers}


MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                  "l2-category", "comment", "split"]


def _mmbench_rows(cn: bool):
    name = (lambda c: COLOR_CN[c]) if cn else (lambda c: c)
    q_square = "图中正方形是什么颜色？" if cn else "What color is the square?"
    q_bg = "背景是什么颜色？" if cn else "Which color is the background?"
    q_count = "图中有几个正方形？" if cn else "How many squares are there?"
    hint = "图片中央有一个正方形。" if cn else "The picture has a square in the middle."
    specs = [  # index, question, hint, options, answer, picture, image mode, category
        (0, q_square, hint, [name("red"), name("blue"), name("green"), name("yellow")], "B", ("white", "blue"), "RGB",
         "attribute_recognition"),
        (1, q_bg, None, [name("black"), name("orange")], "B", ("orange", "black"), "RGBA", "attribute_recognition"),
        (2, q_count, None, ["1", "2", "3"], "A", ("green", "red"), "P", "object_localization"),
    ]
    rows, answers = [], {}
    for index, question, h, options, answer, colours, mode, category in specs:
        row = {"index": index, "question": question, "hint": h, "answer": answer, "category": category,
               "image": _b64_png(*colours, mode=mode), "source": "synthetic", "l2-category": "fine-grained perception",
               "comment": None, "split": "dev"}
        row.update({letter: opt for letter, opt in zip("ABCD", options)})
        rows.append(row)
        answers[index] = answer
    return rows, answers


def build_mmbench(root: str, cn: bool = False) -> dict:
    d = os.path.join(root, "mmbench_cn" if cn else "mmbench")
    split = "mmbench_dev_cn_20231003" if cn else "mmbench_dev_20230712"
    rows, answers = _mmbench_rows(cn)
    return {"dir": d, "split": split, "question_file": _write_tsv(os.path.join(d, f"{split}.tsv"), MMBENCH_HEADER, rows),
            "questions": len(rows), "answers": answers}


SEED_TYPES = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
              "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
              "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11, "Procedure Understanding": 12}


def build_seed(root: str) -> dict:
    d = os.path.join(root, "seed_bench")
    # question_id, data_type, data_id, type, colours, question, choices, answer
    items = [("101669", "image", "1454426_2591111986.jpg", "Instance Attributes", ("white", "red"),
              "What color is the square?", ["Blue", "Red", "Green", "Black"], "B"),
             ("101670", "image", "1454426_2591111987.jpg", "Scene Understanding", ("green", "white"),
              "What is the color of the background?", ["Green", "Purple", "Orange", "White"], "A"),
             ("1598", "video", "v_4DnrYvMnHOc.mp4", "Action Recognition", ("blue", "yellow"),
              "What color is the moving square?", ["Red", "Black", "White", "Yellow"], "D")]
    rows, questions, answers = [], [], {}
    for qid, dtype, data_id, qtype, colours, question, choices, answer in items:
        if dtype == "image":
            image = f"SEED-Bench-image/{data_id}"
        else:  # the middle frame that extract_video_frames.py writes for a video question
            image = f"SEED-Bench-video-image/{os.path.splitext(data_id)[0]}.png"
        _save_picture(os.path.join(d, image), *colours)
        options = "\n".join(f"{letter}. {c}" for letter, c in zip("ABCD", choices))
        rows.append({"image": image, "text": f"{question}\n{options}\n{LETTER}", "category": qtype,
                     "question_id": int(qid)})
        entry = {"answer": answer, "choice_a": choices[0], "choice_b": choices[1], "choice_c": choices[2],
                 "choice_d": choices[3], "data_id": data_id, "data_type": dtype, "question": question,
                 "question_id": qid, "question_type_id": SEED_TYPES[qtype]}
        if dtype == "video":
            entry["segment"] = None
        questions.append(entry)
        answers[int(qid)] = answer
    return {"dir": d, "question_file": _write_jsonl(os.path.join(d, "llava-seed-bench.jsonl"), rows),
            "image_folder": d,
            "annotation_file": _write_json(os.path.join(d, "SEED-Bench.json"),
                                           {"question_type": SEED_TYPES, "questions": questions}),
            "questions": len(rows), "image_questions": sum(q["data_type"] == "image" for q in questions),
            "answers": answers}


BUILDERS = {"vqav2": build_vqav2, "gqa": build_gqa, "scienceqa": build_scienceqa, "textvqa": build_textvqa,
            "pope": build_pope, "MME": build_mme, "mmbench": lambda r: build_mmbench(r, cn=False),
            "mmbench_cn": lambda r: build_mmbench(r, cn=True), "seed_bench": build_seed}


def build_eval_fixtures(root: str) -> dict:
    """Write all nine fixtures under `root` (the EVAL_DIR); return their paths and known answers."""
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    out = {"root": root}
    for name, build in BUILDERS.items():
        out[name] = build(root)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="./playground/tiny/eval", help="eval root to fill (default: %(default)s)")
    args = parser.parse_args(argv)
    info = build_eval_fixtures(args.out)
    for name in BUILDERS:
        print(f"{name:<11s} {info[name]['questions']} questions  {info[name]['question_file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
