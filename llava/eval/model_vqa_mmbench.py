"""MMBench / MMBench-CN generation, batch size 1 (needs pandas: the `eval` extra).

    python -m llava.eval.model_vqa_mmbench --model-path ./checkpoints/llava-v1.5-13b \\
        --question-file ./playground/data/eval/mmbench/mmbench_dev_20230712.tsv \\
        --answers-file ./playground/data/eval/mmbench/answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl \\
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1 [--lang cn] [--all-rounds]

Input: the MMBench TSV (columns `index, question, hint, A, B, C, D, image` with the image inline as
base64; `answer`, `category`, ... may be present and are not read). The options are A, B, C, D up to the
first empty one. The question shown to the model is the hint (when there is one), the question, then one
`X. option` line per option, and with `--single-pred-prompt` the answer-format suffix (English, or Chinese
with `--lang cn`).

Output: JSONL rows {question_id (= index), round_id, prompt, text, options, option_char, answer_id,
model_id, metadata}; `prompt` is the question text without the image token and without the suffix.
With `--all-rounds` each question is asked once per circular shift of its options (round_id 0..n-1);
`option_char[k]` is then the original letter of the option shown in position k.

`--max_new_tokens` defaults to 1024, the value upstream hard-codes.
"""
from __future__ import annotations

import argparse
import math
import os

from tqdm import tqdm

from llava.eval.model_vqa import (add_common_args, answer_row, build_conv_prompt, chunk_of, generate_text,
                                  image_prompt, images_to_device, load_eval_model, open_answers_file)
from llava.image_io import open_base64

ALL_OPTIONS = ["A", "B", "C", "D"]
SUFFIX = {"en": "Answer with the option's letter from the given choices directly.",
          "cn": "请直接回答选项字母。"}
_TEXT_COLUMNS = ["question", "hint", *ALL_OPTIONS]


def is_none(value) -> bool:
    """An empty TSV cell (NaN after parsing), None, or the text 'nan' / 'none' in any case."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none", "")


def get_options(row, options=ALL_OPTIONS):
    """The option texts of `row`, stopping at the first missing one."""
    parsed = []
    for option in options:
        value = row.get(option)
        if is_none(value):
            break
        parsed.append(str(value))
    return parsed


def _plain(value):
    """numpy scalars -> Python scalars (so the row can be JSON-encoded)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def read_questions(path: str):
    """The TSV as a list of dicts; text columns are kept as written (a '3' option stays '3')."""
    import pandas as pd

    header = pd.read_csv(os.path.expanduser(path), sep="\t", nrows=0).columns
    dtypes = {c: object for c in _TEXT_COLUMNS if c in header}
    df = pd.read_csv(os.path.expanduser(path), sep="\t", dtype=dtypes)
    missing = [c for c in ("index", "question", "image") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an MMBench TSV (missing columns {missing})")
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def build_question(row, options) -> str:
    question = str(row["question"])
    hint = row.get("hint")
    if not is_none(hint):
        question = str(hint) + "\n" + question
    for option_char, option in zip(ALL_OPTIONS, options):
        question = question + "\n" + option_char + ". " + option
    return question


def eval_model(args):
    tokenizer, model, image_processor, model_name, conv_mode = load_eval_model(args)
    questions = chunk_of(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    suffix = SUFFIX[args.lang]
    with open_answers_file(args.answers_file) as ans_file:
        for row in tqdm(questions, desc="model_vqa_mmbench"):
            options = get_options(row)
            option_chars = ALL_OPTIONS[:len(options)]
            image = open_base64(row["image"], image_processor, getattr(model.config, "image_aspect_ratio", None),
                                name=f"{args.question_file} (index {row['index']})")
            images, sizes = images_to_device([image], image_processor, model)
            num_rounds = len(options) if args.all_rounds else 1
            for round_idx in range(max(num_rounds, 1)):
                cur_prompt = build_question(row, options)
                qs = image_prompt(cur_prompt, model.config)
                if args.single_pred_prompt:
                    qs = qs + "\n" + suffix
                prompt = build_conv_prompt(qs, conv_mode)
                outputs = generate_text(model, tokenizer, prompt, images, sizes, args)
                ans_file.write(answer_row(row["index"], cur_prompt, outputs, model_name, round_id=round_idx,
                                          options=options, option_char=option_chars))
                ans_file.flush()
                # next round: shift the options (and their original letters) one place to the left
                options = options[1:] + options[:1]
                option_chars = option_chars[1:] + option_chars[:1]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, max_new_tokens_note=", upstream's hard-coded value")
    parser.add_argument("--all-rounds", action="store_true", help="ask once per circular shift of the options")
    parser.add_argument("--single-pred-prompt", action="store_true", help="append the answer-format suffix")
    parser.add_argument("--lang", type=str, default="en", choices=sorted(SUFFIX), help="suffix language")
    return parser


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
