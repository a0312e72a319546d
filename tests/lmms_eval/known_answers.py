"""The answers lmms-eval's `llava` model should give, computed with our llava package alone (this venv, no
lmms-eval): the same prompt (`<image>\\n` + question in the conversation template), the same pixels (processed
with the model's config, then cast to float16 as that model always does: on an untrained tiny model the rounding
alone can flip a near-tie of the greedy decoding or of the pruner's selection), greedy decoding, special tokens
skipped. Pruned answers: run it through the runner, as a user runs our eval scripts:

    python -m dualspeed_patch.run --pruned --vtp_method divprune --pruning_ratio 0.9 tests.lmms_eval.known_answers \\
        --model-path CKPT --questions Q.jsonl --out A.json --max_new_tokens 6

Q.jsonl: {"question_id", "image" (a path), "question"} per line; A.json: the answers in question order."""
import argparse
import json

import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import builder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--conv-template", default="vicuna_v1")
    p.add_argument("--max_new_tokens", type=int, required=True)
    args = p.parse_args()
    # looked up on the module: the runner's patch wraps builder.load_pretrained_model (it reads the isolator)
    tokenizer, model, processor, _ = builder.load_pretrained_model(args.model_path, None, "ckpt", device="cpu")
    answers = []
    with open(args.questions) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        image = Image.open(row["image"]).convert("RGB")
        conv = conv_templates[args.conv_template].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + row["question"])
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        pixels = process_images([image], processor, model.config).to(torch.float16)
        with torch.inference_mode():
            out = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False,
                                 max_new_tokens=args.max_new_tokens, use_cache=True)
        answers.append(tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip())
    with open(args.out, "w") as f:
        json.dump(answers, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
