"""Interactive chat about one image: python -m llava.serve.cli --model-path ... --image-file ...

An empty line or EOF ends the session."""
from __future__ import annotations

import argparse

import torch
from transformers import TextStreamer

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval.run_llava import infer_conv_mode, load_image
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import disable_torch_init


def main(args, read=input):
    disable_torch_init()
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=args.device)
    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    conv = conv_templates[conv_mode].copy()
    roles = conv.roles

    image = load_image(args.image_file, image_processor, model.config)
    image_tensor = process_images([image], image_processor, model.config)
    image_tensor = (image_tensor.to(model.device, dtype=model.dtype) if torch.is_tensor(image_tensor)
                    else [x.to(model.device, dtype=model.dtype) for x in image_tensor])
    first = True
    replies = []
    while True:
        try:
            inp = read(f"{roles[0]}: ")
        except EOFError:
            inp = ""
        if not inp:
            print("exit...")
            break
        print(f"{roles[1]}: ", end="")
        if first:
            token = (DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                     if model.config.mm_use_im_start_end else DEFAULT_IMAGE_TOKEN)
            inp = token + "\n" + inp
            first = False
        conv.append_message(conv.roles[0], inp)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.inference_mode():
            output_ids = model.generate(
                input_ids.to(model.device), images=image_tensor, image_sizes=[image.size],
                do_sample=args.temperature > 0, temperature=args.temperature if args.temperature > 0 else None,
                max_new_tokens=args.max_new_tokens, streamer=streamer, use_cache=True,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        outputs = tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()
        conv.messages[-1][-1] = outputs
        replies.append(outputs)
    return replies


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument("--device", type=str, default="cuda")
    parser.add_argument("--conv-mode", type=str, default=None)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
