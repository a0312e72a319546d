"""LLaVA training entry: `train()` parses ModelArguments, DataArguments and TrainingArguments from the
command line, builds the model, data and LLaVATrainer, trains and saves in upstream's file layout.

The public names of upstream's llava/train/train.py are importable from here; their code lives in
small modules beside this one (arguments, preprocess, dataset, llava_trainer)."""
from __future__ import annotations

import logging
import os
import pathlib
import sys

import torch
import transformers

from llava import conversation as conversation_lib
from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM
from llava.model.attention import pick_attn_implementation

from .arguments import DataArguments, ModelArguments, TrainingArguments
from .cpu_distributed import (check_group_timeout, end_cpu_rank_process, explain_collective_timeouts,
                              maybe_setup_cpu_deepspeed, shutdown_distributed)
from .dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset, make_supervised_data_module
from .images import record_tower_geometry
from .llava_trainer import (LLaVATrainer, find_all_linear_names, get_mm_adapter_state_maybe_zero_3,
                            get_peft_state_maybe_zero_3, get_peft_state_non_lora_maybe_zero_3, maybe_zero_3)
from .preprocess import (_add_speaker_and_signal, _mask_targets, _tokenize_fn, preprocess, preprocess_llama_2,
                         preprocess_mpt, preprocess_multimodal, preprocess_plain, preprocess_v1)

logger = logging.getLogger(__name__)
local_rank = None

__all__ = [
    "ModelArguments", "DataArguments", "TrainingArguments", "rank0_print", "maybe_zero_3",
    "get_peft_state_maybe_zero_3", "get_peft_state_non_lora_maybe_zero_3", "get_mm_adapter_state_maybe_zero_3",
    "find_all_linear_names", "safe_save_model_for_hf_trainer", "smart_tokenizer_and_embedding_resize",
    "_tokenize_fn", "_mask_targets", "_add_speaker_and_signal", "preprocess_multimodal", "preprocess_llama_2",
    "preprocess_v1", "preprocess_mpt", "preprocess_plain", "preprocess", "LazySupervisedDataset",
    "DataCollatorForSupervisedDataset", "make_supervised_data_module", "train",
]


def rank0_print(*args):
    if local_rank in (0, -1, None):
        print(*args)


def smart_tokenizer_and_embedding_resize(special_tokens_dict, tokenizer, model):
    """Add special tokens and resize the embeddings; new rows start at the mean of the old ones."""
    num_new = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    if num_new > 0:
        for emb in (model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data):
            emb[-num_new:] = emb[:-num_new].mean(dim=0, keepdim=True)


def safe_save_model_for_hf_trainer(trainer: transformers.Trainer, output_dir: str):
    """Save what the run trained: the projector only (pretraining) or the whole model."""
    if getattr(trainer.args, "tune_mm_mlp_adapter", False):
        keys_to_match = ["mm_projector"]
        if getattr(trainer.args, "use_im_start_end", False):
            keys_to_match.extend(["embed_tokens", "embed_in"])
        weight_to_save = get_mm_adapter_state_maybe_zero_3(trainer.model.named_parameters(), keys_to_match)
        trainer.model.config.save_pretrained(output_dir)
        current_folder = os.path.basename(os.path.normpath(output_dir))
        parent_folder = os.path.dirname(os.path.normpath(output_dir))
        if trainer.args.local_rank in (0, -1):
            if current_folder.startswith("checkpoint-"):
                mm_projector_folder = os.path.join(parent_folder, "mm_projector")
                os.makedirs(mm_projector_folder, exist_ok=True)
                torch.save(weight_to_save, os.path.join(mm_projector_folder, f"{current_folder}.bin"))
            else:
                torch.save(weight_to_save, os.path.join(output_dir, "mm_projector.bin"))
        return
    if trainer.is_deepspeed_enabled:
        trainer.save_model(output_dir)
        return
    state_dict = trainer.model.state_dict()
    if trainer.args.should_save:
        cpu_state_dict = {key: value.cpu() for key, value in state_dict.items()}
        del state_dict
        trainer._save(output_dir, state_dict=cpu_state_dict)


def _compute_dtype(training_args):
    if training_args.fp16:
        return torch.float16
    if training_args.bf16:
        return torch.bfloat16
    return torch.float32


def _model_class(model_name_or_path, cache_dir):
    cfg = transformers.AutoConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir)
    if cfg.model_type in ("mistral", "llava_mistral"):
        return LlavaMistralForCausalLM
    if cfg.model_type not in ("llama", "llava_llama"):
        raise ValueError(f"{model_name_or_path}: model_type {cfg.model_type!r} is not supported for LLaVA training "
                         "(llama or mistral).")
    return LlavaLlamaForCausalLM


def _quantization_kwargs(training_args, compute_dtype):
    if training_args.bits not in (4, 8):
        return {}
    from transformers import BitsAndBytesConfig

    return dict(quantization_config=BitsAndBytesConfig(
        load_in_4bit=training_args.bits == 4, load_in_8bit=training_args.bits == 8,
        llm_int8_skip_modules=["mm_projector"], llm_int8_threshold=6.0,
        bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=training_args.double_quant,
        bnb_4bit_quant_type=training_args.quant_type))


def build_model(model_args, training_args, attn_implementation=None):
    compute_dtype = _compute_dtype(training_args)
    attn = pick_attn_implementation(model_args.attn_implementation or attn_implementation)
    load_kwargs = dict(cache_dir=training_args.cache_dir, attn_implementation=attn,
                       dtype=torch.bfloat16 if training_args.bf16 else torch.float32,
                       **_quantization_kwargs(training_args, compute_dtype))
    if model_args.vision_tower is not None:
        model_cls = _model_class(model_args.model_name_or_path, training_args.cache_dir)
    else:
        model_cls = transformers.AutoModelForCausalLM
    model = model_cls.from_pretrained(model_args.model_name_or_path, **load_kwargs)
    model.config.use_cache = False
    rank0_print(f"Loaded {type(model).__name__} from {model_args.model_name_or_path} (attn={attn}, "
                f"dtype={load_kwargs['dtype']})")

    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.dtype = compute_dtype
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()

    if training_args.lora_enable:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                                 target_modules=find_all_linear_names(model), lora_dropout=training_args.lora_dropout,
                                 bias=training_args.lora_bias, task_type="CAUSAL_LM")
        if training_args.bits == 16 and compute_dtype != torch.float32:
            model.to(compute_dtype)
        rank0_print("Adding LoRA adapters...")
        model = get_peft_model(model, lora_config)
    return model


def build_tokenizer(model_args, training_args, model):
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length, padding_side="right")
    if model_args.version == "v0":
        if tokenizer.pad_token is None:
            smart_tokenizer_and_embedding_resize(dict(pad_token="[PAD]"), tokenizer, model)
    elif model_args.version == "v0.5":
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.pad_token = tokenizer.unk_token
        if model_args.version not in conversation_lib.conv_templates:
            raise ValueError(f"--version {model_args.version!r} is not a conversation template; choose one of "
                             f"{sorted(conversation_lib.conv_templates)}")
        conversation_lib.default_conversation = conversation_lib.conv_templates[model_args.version]
    return tokenizer


def setup_vision(model, model_args, data_args, training_args, tokenizer):
    """Build/load the tower and projector and record the multimodal settings in the config."""
    compute_dtype = _compute_dtype(training_args)
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    vision_tower = model.get_vision_tower()
    vision_tower.to(dtype=compute_dtype, device=training_args.device)

    data_args.image_processor = vision_tower.image_processor
    data_args.is_multimodal = True
    data_args.image_tokens = vision_tower.num_patches
    if data_args.image_aspect_ratio == "anyres" and not data_args.image_grid_pinpoints:
        raise ValueError("--image_aspect_ratio anyres needs --image_grid_pinpoints")

    config = model.config
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.image_grid_pinpoints = data_args.image_grid_pinpoints
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = tokenizer.model_max_length
    # The dataset's length check must count each image's tokens as the merge will lay them out (anyres grids).
    record_tower_geometry(data_args, vision_tower, config)

    config.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        for p in model.get_model().mm_projector.parameters():
            p.requires_grad = True
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    if training_args.freeze_mm_mlp_adapter:
        for p in model.get_model().mm_projector.parameters():
            p.requires_grad = False
    if training_args.bits in (4, 8):
        model.get_model().mm_projector.to(dtype=compute_dtype, device=training_args.device)

    config.mm_use_im_start_end = data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_projector_lr = training_args.mm_projector_lr
    training_args.use_im_start_end = model_args.mm_use_im_start_end
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)


def _fix_kbit_dtypes(model, training_args):
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if training_args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def save_trained_model(trainer, model, training_args):
    if training_args.lora_enable:
        state_dict = get_peft_state_maybe_zero_3(model.named_parameters(), training_args.lora_bias)
        non_lora_state_dict = get_peft_state_non_lora_maybe_zero_3(model.named_parameters())
        if training_args.local_rank in (0, -1):
            model.config.save_pretrained(training_args.output_dir)
            model.save_pretrained(training_args.output_dir, state_dict=state_dict)
            torch.save(non_lora_state_dict, os.path.join(training_args.output_dir, "non_lora_trainables.bin"))
    else:
        safe_save_model_for_hf_trainer(trainer=trainer, output_dir=training_args.output_dir)


def _resume_arg(training_args):
    """Upstream resumed whenever any checkpoint-* existed; transformers 5 always writes a final checkpoint, so
    that would 'resume' a finished run. Here resuming is asked for: --resume_from_checkpoint PATH|True."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("true", "auto", "last"):
        found = list(pathlib.Path(training_args.output_dir).glob("checkpoint-*"))
        return True if found else None
    return value


def train(attn_implementation=None):
    global local_rank
    argv = sys.argv[1:]
    # Everything from the process group's creation on: a timed-out collective becomes one clear line.
    with explain_collective_timeouts(argv):
        maybe_setup_cpu_deepspeed(argv)
        parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
        check_group_timeout(training_args)
        local_rank = training_args.local_rank
        logging.basicConfig(level=logging.INFO if training_args.local_rank in (0, -1) else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The Trainer seeds only at its own construction, after the projector (and LoRA) are initialised here;
        # seed first so the same --seed gives the same run.
        transformers.set_seed(training_args.seed)
        model = build_model(model_args, training_args, attn_implementation)
        tokenizer = build_tokenizer(model_args, training_args, model)
        if model_args.vision_tower is not None:
            setup_vision(model, model_args, data_args, training_args, tokenizer)
        if training_args.bits in (4, 8):
            _fix_kbit_dtypes(model, training_args)

        data_module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
        trainer = LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
        rank0_print(f"Training: world_size={training_args.world_size}, {len(data_module['train_dataset'])} "
                    f"samples, deepspeed={training_args.deepspeed or 'off'}, output_dir={training_args.output_dir}")
        trainer.train(resume_from_checkpoint=_resume_arg(training_args))
        trainer.save_state()
        model.config.use_cache = True
        save_trained_model(trainer, model, training_args)

        dataset = data_module["train_dataset"]
        if dataset.skipped or dataset.truncated:
            rank0_print(f"Data report: {len(dataset.skipped)} samples skipped (tokenization mismatch), "
                        f"{len(dataset.truncated)} truncated to model_max_length.")
        shutdown_distributed()
    return trainer


if __name__ == "__main__":
    train()
    end_cpu_rank_process()
