"""Batch-size-1 open-ended VQA generation (LLaVA-Bench, MM-Vet).

    python -m llava.eval.model_vqa --model-path ./checkpoints/llava-v1.5-13b \\
        --question-file questions.jsonl --image-folder images --answers-file answers.jsonl \\
        --temperature 0 --conv-mode vicuna_v1

Reads a JSONL question file ({question_id, image, text}) and writes a JSONL answers file with one row per
question: {question_id, prompt, text, answer_id, model_id, metadata}, the same fields as
`llava.eval.model_vqa_loader`. `prompt` is the question text as given (without the image token).

The helpers here (`load_questions`, `open_image`, `images_to_device`, `generate_text`, `load_eval_model`)
are shared with `model_vqa_science` and `model_vqa_mmbench`.
"""
from __future__ import annotations

import argparse
import json
import os

import shortuuid
import torch
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval.model_vqa_loader import get_chunk, resolve_conv_mode
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.utils import disable_torch_init


# ---------------------------------------------------------------------------------------------- helpers

def chunk_of(items, num_chunks: int, chunk_idx: int):
    """The `chunk_idx`-th of `num_chunks` contiguous chunks of `items` (a list); [] when it is empty."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in [0, --num-chunks {num_chunks})")
    if len(items) == 0:
        return []
    return get_chunk(items, num_chunks, chunk_idx)


def load_questions(path: str):
    """Rows of a JSONL file (blank lines skipped)."""
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def open_image(path: str, image_processor, model_config):
    """The image at `path` in RGB, decoded as in training (llava.image_io: every PIL mode by its rule, alpha
    over the processor's mean colour, oversized canvases and undecodable files refused with an ImageError)."""
    from llava.image_io import open_for_processing

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    return open_for_processing(path, image_processor, getattr(model_config, "image_aspect_ratio", None))


def image_prompt(text: str, model_config) -> str:
    """`text` with the image placeholder in front, as the model was trained to see it."""
    if model_config.mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n" + text
    return DEFAULT_IMAGE_TOKEN + "\n" + text


def build_conv_prompt(qs: str, conv_mode: str) -> str:
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def images_to_device(images, image_processor, model):
    """(pixel tensor [n, 3, H, W] or list, sizes) for PIL `images`, on the model's device and dtype."""
    tensor = process_images(images, image_processor, model.config)
    if torch.is_tensor(tensor):
        tensor = tensor.to(device=model.device, dtype=model.dtype)
    else:
        tensor = [t.to(device=model.device, dtype=model.dtype) for t in tensor]
    return tensor, [im.size for im in images]


def generate_text(model, tokenizer, prompt: str, images, image_sizes, args) -> str:
    """Greedy (temperature 0) or sampled decoding of one prompt; the decoded continuation, stripped."""
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    input_ids = input_ids.unsqueeze(0).to(model.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sample = args.temperature > 0
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids, images=images, image_sizes=image_sizes, do_sample=sample,
            temperature=args.temperature if sample else None, top_p=args.top_p if sample else None,
            num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True, pad_token_id=pad_id)
    return tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()


def load_eval_model(args):
    """(tokenizer, model, image_processor, model_name, conv_mode) for the parsed eval arguments.

    `load_pretrained_model` is looked up at call time so a wrapper installed on the builder module
    (e.g. by an inference-time patch) is honoured."""
    from llava.model import builder

    disable_torch_init()
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    tokenizer, model, image_processor, _ = builder.load_pretrained_model(model_path, args.model_base, model_name,
                                                                         device=args.device)
    conv_mode = resolve_conv_mode(args.conv_mode, model_name)
    if conv_mode not in conv_templates:
        raise ValueError(f"--conv-mode {conv_mode!r} is not a template: {sorted(conv_templates)}")
    return tokenizer, model, image_processor, model_name, conv_mode


def open_answers_file(path: str):
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "w", encoding="utf-8")


def answer_row(question_id, prompt, text, model_name, **extra) -> str:
    row = {"question_id": question_id, "prompt": prompt, "text": text}
    row.update(extra)
    row.update({"answer_id": shortuuid.uuid(), "model_id": model_name, "metadata": {}})
    return json.dumps(row) + "\n"


def add_common_args(parser, conv_mode="llava_v1", max_new_tokens=1024, max_new_tokens_note=""):
    """The flags every generator shares (upstream's names and defaults), plus --device."""
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--question-file", type=str, default="tables/question.jsonl")
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default=conv_mode)
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens,
                        help=f"generation length (default: %(default)s{max_new_tokens_note})")
    parser.add_argument("--device", type=str, default="cuda", help="cuda or cpu (cuda falls back to cpu when absent)")
    return parser


# ---------------------------------------------------------------------------------------------- main

def eval_model(args):
    tokenizer, model, image_processor, model_name, conv_mode = load_eval_model(args)
    questions = chunk_of(load_questions(args.question_file), args.num_chunks, args.chunk_idx)
    with open_answers_file(args.answers_file) as ans_file:
        for line in tqdm(questions, desc="model_vqa"):
            cur_prompt = line["text"]
            image = open_image(os.path.join(args.image_folder, line["image"]), image_processor, model.config)
            images, sizes = images_to_device([image], image_processor, model)
            prompt = build_conv_prompt(image_prompt(cur_prompt, model.config), conv_mode)
            outputs = generate_text(model, tokenizer, prompt, images, sizes, args)
            ans_file.write(answer_row(line["question_id"], cur_prompt, outputs, model_name))
            ans_file.flush()


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_common_args(parser, max_new_tokens_note=", upstream's fixed value")


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
