"""Export one of our LLaVA checkpoints to transformers' native classes.

LLaVA-1.5 (`image_aspect_ratio` pad or square, `mm_patch_merge_type` flat) -> `LlavaForConditionalGeneration`;
LLaVA-NeXT (`anyres` + `spatial_unpad`) -> `LlavaNextForConditionalGeneration`. The output folder also holds the
tokenizer (with `<image>` added), an image processor that reproduces `llava.mm_utils.process_images`, and a
processor with a chat template for the conversation template the model was trained with, so that

    LlavaForConditionalGeneration.from_pretrained(out); AutoProcessor.from_pretrained(out)

gives the same logits as `llava.model.builder.load_pretrained_model` + our prompt code.

Loading (full, projector-only or LoRA + base) goes through `load_pretrained_model`, so LoRA merging is the one
`scripts/merge_lora_weights.py` uses.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from llava.model.builder import base_from_adapter_config, resolve_vision_tower
from llava.export.chat_template import build_chat_template, get_conversation, reference_prompt

# Files of a checkpoint folder the export reads or knows to be training-only; anything else (an extension's
# own files) is named in a note, so nothing is dropped without a word.
KNOWN_FILES = ("config.json", "generation_config.json", "adapter_config.json", "non_lora_trainables.bin",
               "mm_projector.bin", "special_tokens_map.json", "added_tokens.json", "trainer_state.json",
               "training_args.bin", "README.md", "tokenizer.model", "tokenizer.json", "tokenizer_config.json")
KNOWN_PREFIXES = ("model", "pytorch_model", "adapter_model", "chat_template", "rng_state", "optimizer", "scheduler")
LLM_MODULES = ("embed_tokens.", "layers.", "norm.", "rotary_emb.")
IMAGE_TOKEN = "<image>"
# Spellings of one image in the chat template; see chat_template.py for why there are two.
IMAGE_TEXT_CANDIDATES = ("<image> \n", "<image>\n")
PROBE_QUESTION = "What color is the shape?"
# The only projector transformers' LlavaMultiModalProjector reproduces: linear_1 -> act -> linear_2.
SUPPORTED_PROJECTOR = "mlp2x_gelu"
# our mm_vision_select_feature -> transformers' vision_feature_select_strategy ("default" drops CLS).
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
# CLIP puts one CLS token before the patches; the processor counts it to size the <image> expansion.
CLIP_EXTRA_TOKENS = 1


class ExportError(ValueError):
    """An input that cannot be exported; the message names the folder or field at fault."""


@dataclass
class Layout:
    """What the checkpoint's config says about its images, decided before any weight is loaded."""
    kind: str  # "llava" (LLaVA-1.5) or "llava_next"
    aspect: Optional[str]  # pad | square/None | anyres
    pinpoints: Optional[list]  # our [width, height] pairs (anyres only)


# ---------------------------------------------------------------------------------------------- input checks

def _read_config(model_path: str) -> dict:
    path = os.path.join(model_path, "config.json")
    if not os.path.isdir(model_path):
        raise ExportError(f"--model-path {model_path} is not a folder.")
    if not os.path.isfile(path):
        raise ExportError(f"{model_path} has no config.json: not a LLaVA checkpoint folder.")
    with open(path) as f:
        return json.load(f)


def _looks_like_path(name: str) -> bool:
    # A hub id is "org/name"; anything absolute, relative-dotted or deeper is meant as a folder on disk.
    return os.path.isabs(name) or name.startswith(".") or name.count("/") != 1


def check_checkpoint(model_path: str, model_base: Optional[str]) -> tuple[dict, Optional[str]]:
    """Refuse, with a message naming the folder, what the export cannot handle. Returns config.json and the
    model base: a LoRA folder without one uses the local base its adapter_config.json records, as
    load_pretrained_model does."""
    cfg = _read_config(model_path)
    is_lora = os.path.isfile(os.path.join(model_path, "adapter_config.json"))
    if is_lora:
        if model_base is None:
            try:
                model_base = base_from_adapter_config(model_path)
            except ValueError as e:
                raise ExportError(str(e)) from None
        if not os.path.isfile(os.path.join(model_path, "non_lora_trainables.bin")):
            raise ExportError(f"{model_path} is a LoRA checkpoint without non_lora_trainables.bin: the projector "
                              "is saved there, and without it the export would have an untrained projector.")
    has_weights = any(name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin"))
                      for name in os.listdir(model_path))
    if not is_lora and not has_weights and model_base is None:
        what = "only mm_projector.bin (a pretrain-stage projector)" if os.path.isfile(
            os.path.join(model_path, "mm_projector.bin")) else "no model weights"
        raise ExportError(f"{model_path} holds {what}: pass --model-base, the LLM it was trained with.")
    if model_base is not None and _looks_like_path(model_base) and not os.path.isdir(model_base):
        raise ExportError(f"--model-base {model_base} does not exist (needed to export {model_path}).")

    tower = cfg.get("mm_vision_tower")
    if not tower:
        raise ExportError(f"{model_path}/config.json names no vision tower (mm_vision_tower): not a LLaVA model.")
    try:
        # Found as load_pretrained_model finds it (from the cwd, else from the checkpoint folder upwards), so an
        # export run from another folder works with a relative mm_vision_tower.
        resolve_vision_tower(tower, model_path)
    except FileNotFoundError as e:
        raise ExportError(f"{e} Its CLIP weights are copied into the export.") from e
    projector = cfg.get("mm_projector_type", "linear")
    if projector != SUPPORTED_PROJECTOR:
        raise ExportError(f"{model_path}: mm_projector_type {projector!r} is not supported; transformers' LLaVA "
                          f"projector is {SUPPORTED_PROJECTOR} (linear_1, GELU, linear_2).")
    if cfg.get("mm_use_im_start_end"):
        raise ExportError(f"{model_path}: mm_use_im_start_end=True (<im_start><image><im_end>) has no equivalent "
                          "in transformers' LLaVA processors.")
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in SELECT_STRATEGY:
        raise ExportError(f"{model_path}: mm_vision_select_feature {select!r} is not one of {sorted(SELECT_STRATEGY)}.")
    unread = unread_files(model_path)
    if unread:
        print(f"note: {model_path}: not exported (the native classes have no place for them; the exported model "
              f"runs full LLaVA inference): {', '.join(unread)}")
    return cfg, model_base


def unread_files(model_path: str) -> list:
    """Files beside the weights that are neither read by the export nor known training leftovers."""
    return sorted(name for name in os.listdir(model_path)
                  if os.path.isfile(os.path.join(model_path, name)) and name not in KNOWN_FILES
                  and not name.startswith(KNOWN_PREFIXES))


def decide_layout(cfg: dict, model_path: str) -> Layout:
    aspect = cfg.get("image_aspect_ratio")
    merge = cfg.get("mm_patch_merge_type", "flat")
    if merge == "flat" and aspect in (None, "square", "pad"):
        return Layout("llava", aspect, None)
    if merge == "spatial_unpad" and aspect == "anyres":
        pinpoints = cfg.get("image_grid_pinpoints")
        if isinstance(pinpoints, str):
            import ast

            pinpoints = ast.literal_eval(pinpoints)
        if not pinpoints:
            raise ExportError(f"{model_path}: image_aspect_ratio anyres needs image_grid_pinpoints in config.json.")
        return Layout("llava_next", aspect, [list(map(int, p)) for p in pinpoints])
    raise ExportError(
        f"{model_path}: mm_patch_merge_type {merge!r} with image_aspect_ratio {aspect!r} is not supported; "
        "supported: flat with pad/square (LLaVA-1.5) and spatial_unpad with anyres (LLaVA-NeXT; transformers "
        "always unpads, so 'spatial' without unpad has no native equivalent).")


# ---------------------------------------------------------------------------------------------- configs

def _text_config(our_cfg, vocab_size: int):
    """The LM config without our multimodal fields, as the plain Llama/Mistral config it extends."""
    from transformers import LlamaConfig, MistralConfig

    from llava.model.config import MM_CONFIG_FIELDS

    base = MistralConfig if isinstance(our_cfg, MistralConfig) else LlamaConfig
    fields = {k: v for k, v in our_cfg.to_dict().items()
              if k not in MM_CONFIG_FIELDS and k not in ("model_type", "architectures", "transformers_version")}
    fields["vocab_size"] = vocab_size
    return base(**fields)


def build_native_config(our_cfg, vision_cfg, layout: Layout, image_token_id: int, vocab_size: int, dtype):
    from transformers import LlavaConfig, LlavaNextConfig

    common = dict(
        vision_config=vision_cfg.to_dict(), text_config=_text_config(our_cfg, vocab_size).to_dict(),
        image_token_id=image_token_id, projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=our_cfg.mm_vision_select_layer,
        vision_feature_select_strategy=SELECT_STRATEGY[our_cfg.mm_vision_select_feature],
        tie_word_embeddings=bool(getattr(our_cfg, "tie_word_embeddings", False)))
    if layout.kind == "llava":
        cfg = LlavaConfig(**common)
    else:
        cfg = LlavaNextConfig(image_grid_pinpoints=hf_pinpoints(layout.pinpoints), **common)
    cfg.dtype = dtype
    return cfg


def hf_pinpoints(pinpoints):
    # Ours (llava.mm_utils.select_best_resolution) reads each pair as (width, height); transformers' LLaVA-NeXT
    # reads (height, width). Upstream lists are symmetric, so the swap only shows on a one-sided list.
    return [[h, w] for w, h in pinpoints]


# ---------------------------------------------------------------------------------------------- weights

def native_key(key: str) -> Optional[str]:
    """Our parameter name -> the native one; None for what the native model does not have."""
    if key.startswith("model.vision_tower.vision_tower."):
        return "model.vision_tower." + key[len("model.vision_tower.vision_tower."):]
    if key.startswith("model.mm_projector."):
        index, rest = key[len("model.mm_projector."):].split(".", 1)
        linear = {"0": "linear_1", "2": "linear_2"}.get(index)
        if linear is None:
            raise ExportError(f"Unexpected projector parameter {key} for {SUPPORTED_PROJECTOR}.")
        return f"model.multi_modal_projector.{linear}.{rest}"
    if key == "model.image_newline" or key.startswith("lm_head."):
        return key
    if key.startswith("model.") and key[len("model."):].startswith(LLM_MODULES):
        return "model.language_model." + key[len("model."):]
    if key.startswith("model."):
        # A module an extension added to the LLaVA model (full inference never reads it): skipped and named. A
        # language-model weight wrongly skipped here would be caught as missing by build_native_model.
        return None
    raise ExportError(f"Parameter {key} has no place in transformers' LLaVA layout.")


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean row. For lm_head the new token's logit is then the mean of the others,
    never above their max, so greedy decoding cannot pick <image>; for embed_tokens the row is never read
    (the processor's <image> positions are overwritten by image features)."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)


def native_state_dict(model, vocab_size: int) -> dict:
    out, skipped = {}, []
    for key, tensor in model.state_dict().items():
        new = native_key(key)
        if new is None:
            skipped.append(key)
            continue
        if new in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            tensor = _grow_rows(tensor, vocab_size)
        out[new] = tensor
    if skipped:
        print(f"note: weights with no place in the native classes are not exported: {', '.join(skipped)}")
    return out


def build_native_model(config, state_dict: dict):
    """Instantiate the native class on the meta device (no second copy of the weights in memory) and take our
    tensors as its parameters; any parameter left unset is an export bug, reported by name. For saving only."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = LlavaNextForConditionalGeneration if config.model_type == "llava_next" else LlavaForConditionalGeneration
    with torch.device("meta"):
        model = cls(config)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    result = model.load_state_dict({k: v for k, v in state_dict.items() if k not in tied}, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ExportError(f"Weight mapping incomplete: missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}")
    if tied:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq, CLIP position ids) stay on meta: they are in no state dict, so
    # save_pretrained never reads them, and the model is only built to be saved (materializing them would mean
    # building a second full model). Load the saved folder to run it.
    return model.eval()


# ---------------------------------------------------------------------------------------------- processor

def build_image_processor(clip_processor, layout: Layout):
    """Settings of our CLIP processor, plus what process_images does around it: square padding with the mean
    colour (pad), or the anyres crops (NeXT). The PIL backends are used, as ours is (torchvision resizing shifts
    pixels slightly)."""
    from transformers import LlavaImageProcessorPil, LlavaNextImageProcessorPil

    settings = dict(
        do_resize=clip_processor.do_resize, size=dict(clip_processor.size), resample=clip_processor.resample,
        do_center_crop=clip_processor.do_center_crop, crop_size=dict(clip_processor.crop_size),
        do_rescale=clip_processor.do_rescale, rescale_factor=clip_processor.rescale_factor,
        do_normalize=clip_processor.do_normalize, image_mean=list(clip_processor.image_mean),
        image_std=list(clip_processor.image_std), do_convert_rgb=clip_processor.do_convert_rgb)
    if layout.kind == "llava":
        # do_pad: pad_to_square filled with int(mean * 255), exactly expand2square's fill.
        return LlavaImageProcessorPil(do_pad=layout.aspect == "pad", **settings)
    # do_pad here only pads the crop count across a batch; image_sizes is what the model unpads with.
    return LlavaNextImageProcessorPil(image_grid_pinpoints=hf_pinpoints(layout.pinpoints), do_pad=True, **settings)


def prepare_tokenizer(tokenizer):
    """Add <image> as one special token (the processor expands it to one token per image feature)."""
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise ExportError(f"{IMAGE_TOKEN} does not encode to a single token ({ids}).")
    return ids[0]


def pick_image_text(tokenizer, conv_template: str, image_token_id: int) -> str:
    """The spelling of one image in the chat template whose token ids equal our prompt's (see chat_template)."""
    from jinja2 import Template

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    ours = tokenizer_image_token(reference_prompt(conv_template, PROBE_QUESTION), tokenizer)
    ours = [image_token_id if t == IMAGE_TOKEN_INDEX else t for t in ours]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]}]
    for image_text in IMAGE_TEXT_CANDIDATES:
        prompt = Template(build_chat_template(conv_template, image_text)).render(messages=messages,
                                                                                 add_generation_prompt=True)
        if tokenizer(prompt).input_ids == ours:
            return image_text
    raise ExportError(f"No chat template spelling reproduces the token ids of the {conv_template!r} prompt with "
                      "this tokenizer; the exported model would see different prompts than in training.")


def build_processor(tokenizer, image_processor, layout: Layout, patch_size: int, strategy: str, chat_template: str):
    from transformers import LlavaNextProcessor, LlavaProcessor

    cls = LlavaProcessor if layout.kind == "llava" else LlavaNextProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
               vision_feature_select_strategy=strategy, chat_template=chat_template, image_token=IMAGE_TOKEN,
               num_additional_image_tokens=CLIP_EXTRA_TOKENS)


# ---------------------------------------------------------------------------------------------- entry point

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _pick_dtype(cfg: dict, dtype: Optional[str]) -> torch.dtype:
    # Default: the dtype the checkpoint was saved in, so exporting a fp16 7B model does not double it on disk.
    name = dtype or cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise ExportError(f"Unsupported dtype {name!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def export_to_hf(model_path: str, output: str, model_base: Optional[str] = None, conv_template: str = "vicuna_v1",
                 dtype: Optional[str] = None) -> dict:
    """Write the native transformers folder for our checkpoint `model_path` to `output`; returns a summary."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    get_conversation(conv_template)  # refuse an unsupported template before loading anything
    raw_cfg, model_base = check_checkpoint(model_path, model_base)
    layout = decide_layout(raw_cfg, model_path)
    torch_dtype = _pick_dtype(raw_cfg, dtype)

    tokenizer, model, clip_processor, _ = load_pretrained_model(
        model_path, model_base, get_model_name_from_path(model_path), device="cpu", device_map="cpu",
        dtype=torch_dtype)
    tower = model.get_vision_tower()

    image_token_id = prepare_tokenizer(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    vocab_size = max(rows, len(tokenizer))
    config = build_native_config(model.config, tower.config, layout, image_token_id, vocab_size, torch_dtype)
    native = build_native_model(config, native_state_dict(model, vocab_size))

    image_text = pick_image_text(tokenizer, conv_template, image_token_id)
    processor = build_processor(tokenizer, build_image_processor(clip_processor, layout), layout,
                                tower.config.patch_size, config.vision_feature_select_strategy,
                                build_chat_template(conv_template, image_text))
    os.makedirs(output, exist_ok=True)
    native.save_pretrained(output)
    processor.save_pretrained(output)
    return {"output": output, "class": type(native).__name__, "image_token_id": image_token_id,
            "vocab_size": vocab_size, "conv_template": conv_template, "dtype": str(torch_dtype).split(".")[-1],
            "image_aspect_ratio": layout.aspect}
