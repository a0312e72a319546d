"""load_pretrained_model: one entry point for every kind of LLaVA checkpoint.

The kind is read from the files in the folder (adapter_config.json, non_lora_trainables.bin,
mm_projector.bin, model weights) and from config.json, not only from substrings of the folder name
(upstream matched 'llava'/'lora' in the name, a frequent cause of silent mis-loads)."""
from __future__ import annotations

import glob
import json
import logging
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

from .attention import pick_attn_implementation
from .weights import load_weights_file

logger = logging.getLogger(__name__)


def _has_full_weights(path: str) -> bool:
    return bool(glob.glob(os.path.join(path, "model*.safetensors")) or glob.glob(os.path.join(path, "pytorch_model*.bin")))


def _is_llava_config(cfg) -> bool:
    # cfg is whatever AutoConfig read (a plain LlamaConfig too): getattr.
    return getattr(cfg, "mm_vision_tower", None) is not None or str(getattr(cfg, "model_type", "")).startswith("llava")


def _llava_class(cfg):
    from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM

    if getattr(cfg, "model_type", "") == "llava_mistral" or getattr(cfg, "model_type", "") == "mistral":
        return LlavaMistralForCausalLM
    if getattr(cfg, "model_type", "") == "llava":
        raise ValueError(
            "config.json has model_type 'llava', which transformers 5 maps to its own LlavaForConditionalGeneration "
            "schema. Re-save the config with model_type 'llava_llama' (old LLaVA checkpoints), or load it with "
            "transformers.LlavaForConditionalGeneration if it is an llava-hf checkpoint.")
    return LlavaLlamaForCausalLM


def _load_config(path):
    from llava.model import LlavaConfig, LlavaMistralConfig

    cfg = AutoConfig.from_pretrained(path)
    if getattr(cfg, "mm_vision_tower", None) is not None and cfg.model_type in ("llama", "mistral"):
        # A projector-only or LoRA checkpoint saved by a plain LM config: upgrade to the LLaVA config.
        cls = LlavaMistralConfig if cfg.model_type == "mistral" else LlavaConfig
        cfg = cls.from_pretrained(path)
    return cfg


def _strip_non_lora_keys(weights: dict) -> dict:
    weights = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in weights.items()}
    if any(k.startswith("model.model.") for k in weights):
        weights = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in weights.items()}
    return weights


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          device="cuda", use_flash_attn=False, **kwargs):
    """Returns (tokenizer, model, image_processor, context_len), as upstream.

    Extra keywords go to `from_pretrained`, as upstream, except `multimodal` (see `_drop_multimodal_flag`)."""
    _drop_multimodal_flag(kwargs)
    if device == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA is not available: loading on CPU.")
        device = "cpu"
    kwargs = {"device_map": device_map, **kwargs}
    if device != "cuda":
        kwargs["device_map"] = {"": device}

    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        if load_8bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True,
                bnb_4bit_quant_type="nf4")
    elif "dtype" not in kwargs and "torch_dtype" not in kwargs:
        # fp16 on GPU as upstream; fp32 on CPU where half matmuls are slow or unsupported.
        kwargs["dtype"] = torch.float16 if device == "cuda" else torch.float32
    if "torch_dtype" in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    kwargs["attn_implementation"] = pick_attn_implementation("flash_attention_2" if use_flash_attn else
                                                             kwargs.pop("attn_implementation", None))

    is_lora = os.path.isfile(os.path.join(model_path, "adapter_config.json"))
    is_projector_only = os.path.isfile(os.path.join(model_path, "mm_projector.bin")) and not _has_full_weights(model_path)
    cfg = _load_config(model_path) if os.path.isfile(os.path.join(model_path, "config.json")) else None
    is_llava = (cfg is not None and _is_llava_config(cfg)) or "llava" in (model_name or "").lower()
    # What the caller must pass is checked before what the checkpoint stores (the tower's path), so a missing
    # base is reported as such wherever the command runs from.
    if is_lora and model_base is None:
        model_base = base_from_adapter_config(model_path)
    if is_projector_only and model_base is None:
        raise ValueError(f"{model_path} holds only mm_projector.bin: pass --model-base (the LLM it was trained with).")
    stored_tower = getattr(cfg, "mm_vision_tower", None)
    if stored_tower is not None:
        cfg.mm_vision_tower = resolve_vision_tower(stored_tower, model_path)

    if is_llava:
        model_cls = _llava_class(cfg)
        if is_lora:
            tokenizer = AutoTokenizer.from_pretrained(model_base)
            logger.info("Loading LLaVA from base model %s ...", model_base)
            model = model_cls.from_pretrained(model_base, config=cfg, **kwargs)
            _check_vocab(model, cfg, model_path, model_base)
            non_lora_path = os.path.join(model_path, "non_lora_trainables.bin")
            if not os.path.isfile(non_lora_path):
                raise FileNotFoundError(
                    f"{non_lora_path} is missing: a LoRA checkpoint needs the non-LoRA trainables (projector) saved "
                    "beside the adapter.")
            non_lora = _strip_non_lora_keys(load_weights_file(non_lora_path))
            result = model.load_state_dict(non_lora, strict=False)
            if result.unexpected_keys:
                # e.g. modules an extension added in training; the plain model runs without them.
                logger.warning("non_lora_trainables.bin: ignoring %d keys this model does not have: %s",
                               len(result.unexpected_keys), result.unexpected_keys[:5])
            missing_projector = [k for k in result.missing_keys if "mm_projector" in k]
            if missing_projector:
                raise ValueError(f"{non_lora_path} lacks the projector weights {missing_projector[:4]}")
            from peft import PeftModel

            logger.info("Loading LoRA weights from %s and merging ...", model_path)
            model = PeftModel.from_pretrained(model, model_path)
            model = model.merge_and_unload()
        elif is_projector_only:
            tokenizer = AutoTokenizer.from_pretrained(model_base)
            model = model_cls.from_pretrained(model_base, config=cfg, **kwargs)
            projector = load_weights_file(os.path.join(model_path, "mm_projector.bin"))
            projector = {k: v.to(model.dtype) for k, v in projector.items()}
            result = model.load_state_dict(projector, strict=False)
            if result.unexpected_keys:
                raise ValueError(f"mm_projector.bin has keys the model lacks: {result.unexpected_keys[:5]}")
            if any("mm_projector" in k for k in result.missing_keys):
                raise ValueError(f"{model_path}/mm_projector.bin does not hold a complete projector for this config")
        else:
            if model_base is not None:
                logger.warning("%s is a full checkpoint; --model-base %s is ignored.", model_path, model_base)
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            # config=cfg: the one whose vision tower path was resolved above.
            model = model_cls.from_pretrained(model_path, config=cfg, **kwargs)
    else:
        if model_base is not None and is_lora:
            from peft import PeftModel

            tokenizer = AutoTokenizer.from_pretrained(model_base)
            model = AutoModelForCausalLM.from_pretrained(model_base, **kwargs)
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)

    image_processor = None
    if is_llava:
        vision_tower = model.get_vision_tower()
        if vision_tower is None:
            # Also the case of a plain LM config (no LLaVA fields) in a folder named 'llava'.
            raise ValueError(f"{model_path}: the config names no vision tower (mm_vision_tower).")
        if model.config.mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
        if model.config.mm_use_im_start_end:
            tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        # Grow only: shrinking would cut rows of a vocabulary padded beyond the tokenizer.
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))

        if not vision_tower.is_loaded:
            vision_tower.load_model(device_map=device_map if device == "cuda" else None)
        if device_map != "auto" or device != "cuda":
            vision_tower.to(device=device, dtype=model.dtype if not (load_8bit or load_4bit) else torch.float16)
        image_processor = vision_tower.image_processor
        # The tower keeps the resolved path; the config keeps what the checkpoint recorded, so a model saved
        # from here (scripts/merge_lora_weights.py) stays as portable as its source instead of pinning this
        # machine's absolute path.
        model.config.mm_vision_tower = stored_tower

    context_len = getattr(model.config, "max_sequence_length", 2048)  # an LM field only some configs (MPT) have
    model.eval()
    return tokenizer, model, image_processor, context_len


def _drop_multimodal_flag(kwargs: dict) -> None:
    """lmms-eval's `llava` wrapper passes `multimodal=True` (and retries without it on a TypeError). Upstream
    LLaVA-NeXT's builder pops it and uses it only to take the LLaVA branch for folders whose *name* lacks
    'llava'; this builder already tells a LLaVA checkpoint from its config.json, so the flag adds nothing and
    is dropped rather than reaching `from_pretrained`, which would reject it."""
    flag = kwargs.pop("multimodal", None)
    if flag is not None:
        logger.debug("load_pretrained_model: ignoring multimodal=%r (the checkpoint kind is read from its files)",
                     flag)


# How far above a checkpoint folder a relative path it recorded may be anchored. Training writes the path as
# given on its command line, i.e. relative to the run's cwd; checkpoints live at <cwd>/checkpoints/<name>
# (our tiny layout: checkpoints/tiny-lora -> ./playground/tiny/...: two levels) or one deeper for the
# intermediate <name>/checkpoint-N folders: three levels.
_ANCESTOR_LEVELS = 3


def _anchors(folder: str) -> list:
    """Where a relative path recorded in `folder` may have been relative to, nearest first: the cwd, the
    folder itself, then its ancestors up to _ANCESTOR_LEVELS."""
    anchors = [os.getcwd()]
    current = os.path.abspath(folder)
    for _ in range(_ANCESTOR_LEVELS + 1):
        if current not in anchors:
            anchors.append(current)
        current = os.path.dirname(current)
    return anchors


def _find_local(stored: str, folder: str):
    """(the existing absolute path, []) or (None, the places tried) for a path recorded in `folder`."""
    if os.path.isabs(stored):
        return (stored, []) if os.path.exists(stored) else (None, [stored])
    tried = [os.path.normpath(os.path.join(anchor, stored)) for anchor in _anchors(folder)]
    return next(((p, []) for p in tried if os.path.exists(p)), (None, tried))


def _is_hub_tower_name(name: str) -> bool:
    # The hub names build_vision_tower accepts without a local folder: left to it (and the hub cache).
    return name.startswith(("openai", "laion")) or "ShareGPT4V" in name


def resolve_vision_tower(stored: str, model_path: str) -> str:
    """The vision tower path to build from: `stored` (mm_vision_tower in config.json) as given when it exists
    relative to the cwd, else relative to the checkpoint folder or its ancestors (see _anchors)."""
    found, tried = _find_local(stored, model_path)
    if found is not None:
        if os.path.normpath(found) != os.path.normpath(os.path.abspath(stored)):
            logger.info("%s: vision tower %r not found from the cwd; using %s", model_path, stored, found)
        return found
    if _is_hub_tower_name(stored):
        return stored
    raise FileNotFoundError(
        f"{os.path.join(model_path, 'config.json')} names the vision tower mm_vision_tower={stored!r}, which was "
        f"not found at any of: {', '.join(tried)}. Run from the folder the checkpoint was trained in, or edit "
        "mm_vision_tower to the CLIP folder's absolute path.")


def base_from_adapter_config(model_path: str) -> str:
    """The base LLM of a LoRA folder loaded without model_base: `base_model_name_or_path` of its
    adapter_config.json (peft writes the path the training run loaded), when that folder exists here."""
    with open(os.path.join(model_path, "adapter_config.json")) as f:
        recorded = json.load(f).get("base_model_name_or_path")
    found, tried = _find_local(recorded, model_path) if recorded else (None, [])
    if found is None:
        where = f" (tried: {', '.join(tried)})" if tried else ""
        raise ValueError(
            f"{model_path} holds a LoRA adapter and no model base was given; its adapter_config.json records "
            f"base_model_name_or_path={recorded!r}, which is not a local folder here{where}. Pass --model-base "
            "(model_base=) naming the LLM the adapter was trained on, or merge the adapter first with "
            "scripts/merge_lora_weights.py.")
    logger.warning("%s is a LoRA adapter and no model base was given: using the base recorded in its "
                   "adapter_config.json, %s", model_path, found)
    return found


def _check_vocab(model, cfg, model_path, model_base):
    rows = model.get_output_embeddings().weight.shape[0]
    if rows != cfg.vocab_size:
        raise ValueError(f"{model_base} has {rows} output rows but {model_path}/config.json expects vocab_size "
                         f"{cfg.vocab_size}: is --model-base the LLM this adapter was trained on?")
