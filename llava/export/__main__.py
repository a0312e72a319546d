"""python -m llava.export --model-path CKPT [--model-base LLM] --output OUT [--conv-template vicuna_v1]"""
from __future__ import annotations

import argparse
import sys

from llava.export.chat_template import supported_templates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llava.export",
        description="Export a LLaVA checkpoint of this repository to a folder that plain transformers loads with "
                    "LlavaForConditionalGeneration (LLaVA-1.5: pad/square + flat) or "
                    "LlavaNextForConditionalGeneration (LLaVA-NeXT: anyres + spatial_unpad) and AutoProcessor.")
    parser.add_argument("--model-path", required=True,
                        help="checkpoint folder: a full model, or a LoRA / projector-only one with --model-base")
    parser.add_argument("--model-base", default=None,
                        help="the LLM a LoRA (or projector-only) checkpoint was trained on; merged before export. "
                             "Default for LoRA: the local base its adapter_config.json records")
    parser.add_argument("--output", required=True, help="folder to write the native checkpoint to")
    parser.add_argument("--conv-template", default="vicuna_v1", choices=supported_templates(),
                        help="conversation template the model was trained with, written as the processor's chat "
                             "template (default: %(default)s; 'plain' for pretrain-stage models)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="dtype of the exported weights (default: the checkpoint's own dtype, else float32)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from llava.export.hf_native import ExportError, export_to_hf

    try:
        summary = export_to_hf(args.model_path, args.output, model_base=args.model_base,
                               conv_template=args.conv_template, dtype=args.dtype)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.model_path} -> {summary['output']} as {summary['class']} "
          f"({summary['dtype']}, image_aspect_ratio={summary['image_aspect_ratio']}, chat template "
          f"{summary['conv_template']}, <image> id {summary['image_token_id']}, vocab {summary['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
