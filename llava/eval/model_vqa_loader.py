"""Batch-size-1 VQA generation with a DataLoader (VQAv2, GQA, TextVQA, POPE, MME, SEED).

Reads a JSONL question file ({question_id, image, text, ...}) and writes a JSONL answers file
({question_id, prompt, text, answer_id, model_id, metadata})."""
from __future__ import annotations

import argparse
import json
import math
import os

import shortuuid
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import disable_torch_init


def split_list(lst, n):
    """Split a list into n (roughly) equal-sized chunks."""
    chunk_size = math.ceil(len(lst) / n)
    return [lst[i:i + chunk_size] for i in range(0, len(lst), chunk_size)]


def get_chunk(lst, n, k):
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else []


class CustomDataset(Dataset):
    def __init__(self, questions, image_folder, tokenizer, image_processor, model_config, conv_mode):
        self.questions = questions
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.conv_mode = conv_mode

    def __getitem__(self, index):
        from llava.image_io import open_for_processing

        line = self.questions[index]
        qs = line["text"]
        if self.model_config.mm_use_im_start_end:
            qs = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n" + qs
        else:
            qs = DEFAULT_IMAGE_TOKEN + "\n" + qs
        conv = conv_templates[self.conv_mode].copy()
        conv.append_message(conv.roles[0], qs)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()

        path = os.path.join(self.image_folder, line["image"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"question {line.get('question_id')}: image not found: {path}")
        image = open_for_processing(path, self.image_processor, getattr(self.model_config, "image_aspect_ratio", None))
        image_tensor = process_images([image], self.image_processor, self.model_config)[0]
        input_ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        return input_ids, image_tensor, image.size

    def __len__(self):
        return len(self.questions)


def collate_fn(batch):
    input_ids, image_tensors, image_sizes = zip(*batch)
    return torch.stack(input_ids, dim=0), torch.stack(image_tensors, dim=0), image_sizes


def create_data_loader(questions, image_folder, tokenizer, image_processor, model_config, conv_mode,
                       batch_size=1, num_workers=4):
    if batch_size != 1:
        raise ValueError("batch_size must be 1 (the reference evaluation mode)")
    dataset = CustomDataset(questions, image_folder, tokenizer, image_processor, model_config, conv_mode)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, collate_fn=collate_fn)


def resolve_conv_mode(conv_mode, model_name):
    # Upstream appended "_mmtag" for 'plain' checkpoints, producing keys that do not exist for v1 modes.
    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        candidate = conv_mode + "_mmtag"
        if candidate in conv_templates:
            return candidate
    return conv_mode


def eval_model(args):
    disable_torch_init()
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    tokenizer, model, image_processor, context_len = load_pretrained_model(model_path, args.model_base, model_name,
                                                                           device=args.device)
    with open(os.path.expanduser(args.question_file)) as f:
        questions = [json.loads(q) for q in f if q.strip()]
    questions = get_chunk(questions, args.num_chunks, args.chunk_idx)
    answers_file = os.path.expanduser(args.answers_file)
    os.makedirs(os.path.dirname(answers_file) or ".", exist_ok=True)
    conv_mode = resolve_conv_mode(args.conv_mode, model_name)
    if conv_mode not in conv_templates:
        raise ValueError(f"--conv-mode {conv_mode!r} is not a template: {sorted(conv_templates)}")

    data_loader = create_data_loader(questions, args.image_folder, tokenizer, image_processor, model.config, conv_mode,
                                     num_workers=args.num_workers)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with open(answers_file, "w") as ans_file:
        for (input_ids, image_tensor, image_sizes), line in tqdm(zip(data_loader, questions), total=len(questions),
                                                                  desc="model_vqa_loader"):
            idx = line["question_id"]
            cur_prompt = line["text"]
            input_ids = input_ids.to(device=model.device, non_blocking=True)
            with torch.inference_mode():
                output_ids = model.generate(
                    input_ids, images=image_tensor.to(dtype=model.dtype, device=model.device, non_blocking=True),
                    image_sizes=list(image_sizes), do_sample=args.temperature > 0,
                    temperature=args.temperature if args.temperature > 0 else None, top_p=args.top_p,
                    num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True, pad_token_id=pad_id)
            outputs = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
            ans_file.write(json.dumps({"question_id": idx, "prompt": cur_prompt, "text": outputs,
                                       "answer_id": shortuuid.uuid(), "model_id": model_name, "metadata": {}}) + "\n")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--question-file", type=str, default="tables/question.jsonl")
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default="llava_v1")
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", type=str, default="cuda", help="cuda or cpu (cuda falls back to cpu when absent)")
    return parser


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
