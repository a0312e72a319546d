"""Argument dataclasses with upstream LLaVA's field names and defaults.

Flags that transformers 5 removed keep working here (see docs/transformers5.md):
`--evaluation_strategy` maps to `--eval_strategy`, `--warmup_ratio R` to `--warmup_steps R` (a float below 1
is a ratio in v5), and `--tf32 True` on a machine without an Ampere+ GPU is dropped with a warning instead
of a ValueError, so the upstream scripts run unchanged on CPU.

Every float flag, ours and transformers', refuses NaN and infinities naming the flag (`check_finite_floats`;
only `--max_grad_norm inf` stays allowed, see TrainingArguments.__post_init__)."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers

from llava.train.images import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)


def check_finite_floats(args, allow_pos_inf=()) -> None:
    """Refuse NaN and infinities in every field of `args` that holds a float, naming the flag. The fields are
    found by value, not listed, so a float flag added later (here or by transformers) is covered too. NaN is
    never a setting: it fails every comparison, so a range check written the wrong way round lets it through.
    `allow_pos_inf` names the fields where +inf has a meaning that must keep working."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if not isinstance(value, float) or math.isfinite(value):
            continue
        if value == math.inf and f.name in allow_pos_inf:
            continue
        raise ValueError(f"--{f.name} must be a finite number, got {value}")


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

    def __post_init__(self):
        check_finite_floats(self)


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
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "The largest processing canvas (pixels) an image may need (a `pad` image's square "
                          "canvas is max(w,h)^2); larger images are refused naming the file. Must be > 0."})

    def __post_init__(self):
        check_finite_floats(self)
        if not self.max_image_pixels > 0:
            raise ValueError(f"--max_image_pixels must be > 0, got {self.max_image_pixels}")


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
        # Before anything reads the values: --warmup_ratio nan would otherwise get a range message, and the
        # others reach the optimizer. +inf max_grad_norm keeps its meaning in the Trainer and torch's
        # clip_grad_norm_: measure (and log) the gradient norm, clip nothing.
        check_finite_floats(self, allow_pos_inf=("max_grad_norm",))
        if not self.ddp_timeout > 0:
            raise ValueError(f"--ddp_timeout must be a whole number of seconds > 0, got {self.ddp_timeout}")
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
