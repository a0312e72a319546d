"""ScienceQA generation, batch size 1.

    python -m llava.eval.model_vqa_science --model-path ./checkpoints/llava-v1.5-13b \\
        --question-file ./playground/data/eval/scienceqa/llava_test_CQM-A.json \\
        --image-folder ./playground/data/eval/scienceqa/images/test \\
        --answers-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b.jsonl \\
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

Input: a JSON list of {id, image (optional, relative to --image-folder), conversations: [{from, value}, ...]};
the first turn's value (with any `<image>` removed) is the question. Output: JSONL rows
{question_id (= id), prompt, text, answer_id, model_id, metadata}. For a question with an image, `prompt`
starts with "<image>\\n": the ScienceQA scorer uses that to pick the IMG subset.

`--max_new_tokens` defaults to 1024, the value upstream hard-codes. `--answer-prompter` is accepted for
compatibility and, as upstream, changes nothing.
"""
from __future__ import annotations

import argparse
import json
import os

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.model_vqa import (add_common_args, answer_row, build_conv_prompt, chunk_of, generate_text,
                                  image_prompt, images_to_device, load_eval_model, open_answers_file, open_image)

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def question_text(line) -> str:
    """The question of a ScienceQA row: its first human turn without the image placeholder."""
    return line["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()


def eval_model(args):
    tokenizer, model, image_processor, model_name, conv_mode = load_eval_model(args)
    with open(os.path.expanduser(args.question_file), encoding="utf-8") as f:
        questions = json.load(f)
    questions = chunk_of(questions, args.num_chunks, args.chunk_idx)
    with open_answers_file(args.answers_file) as ans_file:
        for line in tqdm(questions, desc="model_vqa_science"):
            qs = cur_prompt = question_text(line)
            if line.get("image"):
                image = open_image(os.path.join(args.image_folder, line["image"]), image_processor, model.config)
                images, sizes = images_to_device([image], image_processor, model)
                qs = image_prompt(qs, model.config)
                cur_prompt = DEFAULT_IMAGE_TOKEN + "\n" + cur_prompt
            else:
                images, sizes = None, None
            if args.single_pred_prompt:
                qs = qs + "\n" + SINGLE_PRED_PROMPT
                cur_prompt = cur_prompt + "\n" + SINGLE_PRED_PROMPT
            prompt = build_conv_prompt(qs, conv_mode)
            outputs = generate_text(model, tokenizer, prompt, images, sizes, args)
            ans_file.write(answer_row(line["id"], cur_prompt, outputs, model_name))
            ans_file.flush()


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, conv_mode="llava_v0", max_new_tokens_note=", upstream's hard-coded value")
    parser.set_defaults(question_file="tables/question.json")
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for compatibility; no effect")
    parser.add_argument("--single-pred-prompt", action="store_true",
                        help=f"append {SINGLE_PRED_PROMPT!r} to every question")
    return parser


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
