"""Argument dataclasses with upstream LLaVA's field names and defaults.

Flags that transformers 5 removed keep working here (see docs/transformers5.md):
`--evaluation_strategy` maps to `--eval_strategy`, `--warmup_ratio R` to `--warmup_steps R` (a float below 1
is a ratio in v5), and `--tf32 True` on a machine without an Ampere+ GPU is dropped with a warning instead
of a ValueError, so the upstream scripts run unchanged on CPU."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default="facebook/opt-125m")
    version: Optional[str] = field(default="v0")
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False)
    vision_tower: Optional[str] = field(default=None)
    mm_vision_select_layer: Optional[int] = field(default=-1)  # default to the last layer
    pretrain_mm_mlp_adapter: Optional[str] = field(default=None)
    mm_projector_type: Optional[str] = field(default="linear")
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: Optional[str] = field(default="flat")
    mm_vision_select_feature: Optional[str] = field(default="patch")
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={"help": "eager | sdpa | flash_attention_2 | ... Default: flash_attention_2 when flash-attn "
                          "imports on a GPU, else sdpa."})


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "Path to the training data (LLaVA JSON list)."})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    image_folder: Optional[str] = field(default=None)
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: Optional[str] = field(
        default=None, metadata={"help": "anyres resolutions, e.g. '[[336,672],[672,336],[672,672],[1008,336],[336,1008]]'"})
    on_tokenization_mismatch: str = field(
        default="error",
        metadata={"help": "error: stop with the sample named (default). skip: log it, count it and train on "
                          "the next sample instead (upstream silently zeroed the sample's loss)."})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)  # keeps `images` in the batch
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: Optional[str] = field(default="triton")
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."})
    double_quant: bool = field(default=True, metadata={"help": "Compress the quantization statistics."})
    quant_type: str = field(default="nf4", metadata={"help": "fp4 or nf4."})
    bits: int = field(default=16, metadata={"help": "How many bits to use (4 or 8 enable QLoRA)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: Optional[float] = None
    group_by_modality_length: bool = field(default=False)
    # Removed from transformers 5; accepted as aliases so upstream scripts keep working.
    evaluation_strategy: Optional[str] = field(default=None, metadata={"help": "Alias of --eval_strategy."})
    warmup_ratio: Optional[float] = field(default=None, metadata={"help": "Alias of --warmup_steps <ratio>."})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("Give either --warmup_ratio or --warmup_steps, not both.")
            self.warmup_steps = self.warmup_ratio
            self.warmup_ratio = None
        if self.tf32 and not _tf32_available():
            logger.warning("--tf32 True ignored: it needs an Ampere or newer CUDA GPU.")
            self.tf32 = None
        if self.bits not in (4, 8, 16):
            raise ValueError(f"--bits must be 4, 8 or 16, got {self.bits}")
        if self.model_max_length <= 0:
            raise ValueError(f"--model_max_length must be positive, got {self.model_max_length}")
        if os.environ.get("LLAVA_CPU_DEEPSPEED") == "1" and self.deepspeed and self.accelerator_config is None:
            # See llava/train/cpu_distributed.py: use the gloo process group set up before parsing.
            self.accelerator_config = {"use_configured_state": True}
        super().__post_init__()


def _tf32_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
