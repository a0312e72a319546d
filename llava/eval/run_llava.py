"""Answer one query about one or more images: python -m llava.eval.run_llava --model-path ... --image-file ... --query ..."""
from __future__ import annotations

import argparse
import re

import torch

from llava.constants import (DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER,
                             IMAGE_TOKEN_INDEX)
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import disable_torch_init


def image_parser(args):
    return args.image_file.split(args.sep)


def load_image(image_file, image_processor=None, model_config=None):
    """The image at `image_file` in RGB, decoded as in training (llava.image_io: every PIL mode, alpha over
    the processor's mean colour, oversized canvases and undecodable files refused with an ImageError).

    Upstream's one-argument call still works: without a processor, alpha goes over CLIP's mean colour (the
    colour LLaVA's CLIP processors pad with) and only the image's own size is checked."""
    from llava.image_io import open_for_processing, open_rgb

    if image_file.startswith(("http://", "https://")):
        raise ValueError(f"{image_file}: this offline build does not fetch URLs; download the image first.")
    if image_processor is None:
        from transformers.utils.constants import OPENAI_CLIP_MEAN

        return open_rgb(image_file, background=tuple(int(x * 255) for x in OPENAI_CLIP_MEAN))
    return open_for_processing(image_file, image_processor, getattr(model_config, "image_aspect_ratio", None))


def load_images(image_files, image_processor=None, model_config=None):
    return [load_image(f, image_processor, model_config) for f in image_files]


def infer_conv_mode(model_name: str) -> str:
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def build_prompt(query, model_config, conv_mode):
    image_token_se = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    use_se = model_config.mm_use_im_start_end
    if IMAGE_PLACEHOLDER in query:
        query = re.sub(IMAGE_PLACEHOLDER, image_token_se if use_se else DEFAULT_IMAGE_TOKEN, query)
    else:
        query = (image_token_se if use_se else DEFAULT_IMAGE_TOKEN) + "\n" + query
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def eval_model(args):
    disable_torch_init()
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=args.device)

    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    prompt = build_prompt(args.query, model.config, conv_mode)
    images = load_images(image_parser(args), image_processor, model.config)
    image_sizes = [x.size for x in images]
    images_tensor = process_images(images, image_processor, model.config)
    images_tensor = (images_tensor.to(model.device, dtype=model.dtype) if torch.is_tensor(images_tensor)
                     else [x.to(model.device, dtype=model.dtype) for x in images_tensor])
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0).to(model.device)

    with torch.inference_mode():
        output_ids = model.generate(
            input_ids, images=images_tensor, image_sizes=image_sizes, do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else None, top_p=args.top_p,
            num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    outputs = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(outputs)
    return outputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument("--query", type=str, required=True)
    parser.add_argument("--conv-mode", type=str, default=None)
    parser.add_argument("--sep", type=str, default=",")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", type=str, default="cuda", help="cuda or cpu (cuda falls back to cpu when absent)")
    return parser


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
