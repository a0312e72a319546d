"""LLaVA's Trainer subclass, its length/modality-grouped sampler and ZeRO-3-aware state-dict helpers.

Written for transformers 5.x:

* ``_get_train_sampler(train_dataset=None)``, ``create_optimizer(model=None)`` and
  ``_save_checkpoint(model, trial)`` follow the v5 ``Trainer`` signatures.
* Decay parameter names come from ``Trainer.get_decay_parameter_names`` (bias and norm weights excluded).
* With LoRA, every intermediate ``checkpoint-N/`` also gets ``non_lora_trainables.bin`` and ``config.json``
  so that it can be evaluated or resumed without losing the projector (upstream issue #1200).

Extension points for packages built on top:

* ``LLaVATrainer.projector_param_keys``: name substrings that put a parameter into the
  ``mm_projector_lr`` param groups.
* ``LLaVATrainer.mm_adapter_keys``: name substrings saved into ``mm_projector.bin`` by adapter-only runs.
* ``MULTIMODAL_KEYWORDS``: module names that ``find_all_linear_names`` never targets with LoRA.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Sampler

import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from .collator import SAMPLE_INDEX_KEY

logger = logging.getLogger(__name__)

NON_LORA_TRAINABLES_NAME = "non_lora_trainables.bin"
MM_PROJECTOR_NAME = "mm_projector.bin"

# Sub-module names that LoRA must leave alone (they are trained in full, or frozen, but never adapted).
MULTIMODAL_KEYWORDS: Tuple[str, ...] = ("mm_projector", "vision_tower", "vision_resampler")


# --------------------------------------------------------------------------------------------------
# ZeRO-3 aware state-dict helpers
# --------------------------------------------------------------------------------------------------

def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: Optional[str] = None) -> torch.Tensor:
    """Return a detached CPU copy of ``param``, gathering it first if DeepSpeed ZeRO-3 partitioned it.

    Under ZeRO-3 this is a collective: every rank has to call it for the same parameters.
    """
    if hasattr(param, "ds_id"):
        from deepspeed import zero
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        if not ignore_status and getattr(param, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE:
            logger.warning("%s: parameter is partitioned (ds_status=%s); gathering it", name, param.ds_status)
        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def get_mm_adapter_state_maybe_zero_3(named_params: Iterable[Tuple[str, torch.Tensor]],
                                      keys_to_match: Sequence[str]) -> Dict[str, torch.Tensor]:
    """CPU copies of the parameters whose name contains any of ``keys_to_match`` (names kept as they are)."""
    keys = tuple(keys_to_match)
    return {
        name: maybe_zero_3(param, ignore_status=True, name=name)
        for name, param in named_params
        if any(key in name for key in keys)
    }


def get_peft_state_maybe_zero_3(named_params: Iterable[Tuple[str, torch.Tensor]], bias: str) -> Dict[str, torch.Tensor]:
    """The LoRA state to save, following peft's ``bias`` option.

    ``bias="none"``: only ``lora_`` tensors. ``"all"``: ``lora_`` tensors plus every bias.
    ``"lora_only"``: ``lora_`` tensors plus the biases of the layers that carry a LoRA adapter.
    """
    named = list(named_params)
    if bias == "none":
        selected = {k: t for k, t in named if "lora_" in k}
    elif bias == "all":
        selected = {k: t for k, t in named if "lora_" in k or "bias" in k}
    elif bias == "lora_only":
        selected = {}
        lora_layers = set()
        for k, t in named:
            if "lora_" in k:
                selected[k] = t
                lora_layers.add(k.split("lora_")[0])
        for k, t in named:
            if "lora_" in k or not k.endswith("bias"):
                continue
            # the bias sits either next to the adapter (`layer.bias`) or on peft's wrapped
            # original layer (`layer.base_layer.bias`)
            layer = k[: -len("bias")]
            if layer.endswith("base_layer."):
                layer = layer[: -len("base_layer.")]
            if layer in lora_layers:
                selected[k] = t
    else:
        raise NotImplementedError(f"Unsupported lora bias option: {bias!r}")
    return {k: maybe_zero_3(t, ignore_status=True, name=k) for k, t in selected.items()}


def get_peft_state_non_lora_maybe_zero_3(named_params: Iterable[Tuple[str, torch.Tensor]],
                                         require_grad_only: bool = True) -> Dict[str, torch.Tensor]:
    """CPU copies of the parameters that are not LoRA weights (by default only the trainable ones)."""
    return {
        k: maybe_zero_3(t, ignore_status=True, name=k)
        for k, t in named_params
        if "lora_" not in k and (t.requires_grad or not require_grad_only)
    }


def find_all_linear_names(model: nn.Module) -> List[str]:
    """Leaf names of the ``nn.Linear`` modules LoRA should target (``lm_head`` and multimodal parts excluded).

    The exclusion list is read from the module-level ``MULTIMODAL_KEYWORDS`` at call time, so another
    package can extend it (``llava_trainer.MULTIMODAL_KEYWORDS += ("my_module",)``).
    """
    excluded = tuple(MULTIMODAL_KEYWORDS)
    names = set()
    for full_name, module in model.named_modules():
        if any(keyword in full_name for keyword in excluded):
            continue
        if isinstance(module, nn.Linear):
            names.add(full_name.split(".")[-1])
    names.discard("lm_head")  # kept in full precision and not adapted (needed for 16-bit / QLoRA)
    return sorted(names)


def _is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard dependency of this project
        return False
    try:
        from peft import PeftMixedModel
        return isinstance(model, (PeftModel, PeftMixedModel))
    except ImportError:  # pragma: no cover
        return isinstance(model, PeftModel)


# --------------------------------------------------------------------------------------------------
# Length / modality grouped sampling
# --------------------------------------------------------------------------------------------------

def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> List[List[int]]:
    """Deal ``indices`` into ``num_chunks`` lists of equal count, balancing the summed length greedily.

    Each index goes to the chunk with the smallest total length that still has room. When the count is
    not divisible by ``num_chunks`` the indices are dealt round-robin instead.
    """
    indices = list(indices)
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: List[List[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        target = min(range(num_chunks), key=lambda c: totals[c])
        chunks[target].append(index)
        totals[target] += lengths[index]
        if len(chunks[target]) == per_chunk:
            totals[target] = float("inf")
    return chunks


def get_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                               generator: Optional[torch.Generator] = None, merge: bool = True) -> List[int]:
    """A random order in which every global batch (``world_size * batch_size``) holds similar lengths.

    The indices are shuffled, cut into megabatches of ``world_size * batch_size``, each megabatch is sorted
    by length (longest first) and dealt into ``world_size`` per-rank batches of equal size. ``merge`` is
    accepted for API compatibility and has no effect.
    """
    del merge
    megabatch_size = world_size * batch_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    result: List[int] = []
    for start in range(0, len(order), megabatch_size):
        megabatch = sorted(order[start:start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            result.extend(chunk)
    return result


def get_modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                                        generator: Optional[torch.Generator] = None) -> List[int]:
    """Like ``get_length_grouped_indices``, but every global batch holds a single modality.

    ``lengths`` follows ``LazySupervisedDataset.modality_lengths``: positive for samples with an image,
    negative for text-only samples. Each modality is length-grouped on its own and cut into megabatches;
    the full megabatches of both are shuffled together and the partial leftovers of the two modalities
    form the final (possibly mixed) megabatch(es).
    """
    lengths = list(lengths)
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero (positive: multimodal, negative: text-only)")
    abs_lengths = [abs(length) for length in lengths]
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices(abs_lengths, batch_size, world_size, generator=generator)

    megabatch_size = world_size * batch_size
    full_megabatches: List[List[int]] = []
    leftovers: List[int] = []
    for keep in (lambda length: length > 0, lambda length: length < 0):
        subset = [i for i, length in enumerate(lengths) if keep(length)]
        sub_lengths = [abs_lengths[i] for i in subset]
        grouped = [subset[j] for j in get_length_grouped_indices(sub_lengths, batch_size, world_size,
                                                                  generator=generator)]
        for start in range(0, len(grouped), megabatch_size):
            megabatch = grouped[start:start + megabatch_size]
            if len(megabatch) == megabatch_size:
                full_megabatches.append(megabatch)
            else:
                leftovers.extend(megabatch)

    shuffle = torch.randperm(len(full_megabatches), generator=generator).tolist()
    megabatches = [full_megabatches[i] for i in shuffle]
    # Leftovers: each modality kept contiguous (longest first within it), then re-cut into megabatches.
    for start in range(0, len(leftovers), megabatch_size):
        megabatch = leftovers[start:start + megabatch_size]
        megabatch = sorted(megabatch, key=lambda i: (lengths[i] < 0, -abs_lengths[i]))
        megabatches.append([i for chunk in split_to_even_chunks(megabatch, abs_lengths, world_size) for i in chunk])
    return [i for megabatch in megabatches for i in megabatch]


class LengthGroupedSampler(Sampler):
    """LLaVA's sampler: length-grouped (optionally modality-grouped) order over the whole dataset.

    Not ``transformers.trainer_pt_utils.LengthGroupedSampler``, which has a different signature. Each rank
    iterates the full order; the data loader shards consecutive per-rank batches across ranks, so all ranks
    must see the same RNG state (the Trainer seeds every rank identically) or share a seeded ``generator``.
    """

    def __init__(self, batch_size: int, world_size: int, lengths: Optional[Sequence[int]] = None,
                 generator: Optional[torch.Generator] = None, group_by_modality: bool = False):
        super().__init__()
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs `lengths`.")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = lengths
        self.generator = generator
        self.group_by_modality = group_by_modality

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if self.group_by_modality:
            indices = get_modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size,
                                                          generator=self.generator)
        else:
            indices = get_length_grouped_indices(self.lengths, self.batch_size, self.world_size,
                                                 generator=self.generator)
        return iter(indices)


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------

class LLaVATrainer(transformers.Trainer):
    """``transformers.Trainer`` with LLaVA's sampler, projector learning rate and adapter-only saving."""

    #: parameters whose name contains one of these get ``args.mm_projector_lr``
    projector_param_keys: Tuple[str, ...] = ("mm_projector",)
    #: parameters whose name contains one of these are saved in ``mm_projector.bin`` (adapter-only runs)
    mm_adapter_keys: Tuple[str, ...] = ("mm_projector", "vision_resampler")
    #: added to ``mm_adapter_keys`` when ``args.use_im_start_end`` (the new token embeddings are trained)
    mm_adapter_embedding_keys: Tuple[str, ...] = ("embed_tokens", "embed_in")

    # ---- sampling -------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Optional[Sampler]:
        if train_dataset is None:
            train_dataset = self.train_dataset
        if train_dataset is None or not has_length(train_dataset):
            return None
        if getattr(self.args, "group_by_modality_length", False):
            lengths = getattr(train_dataset, "modality_lengths", None)
            if lengths is None:
                raise ValueError("group_by_modality_length needs a train dataset with a `modality_lengths` attribute")
            return LengthGroupedSampler(
                self.args.train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps,
                lengths=lengths,
                group_by_modality=True,
            )
        return super()._get_train_sampler(train_dataset)

    # ---- optimizer ------------------------------------------------------------------------------

    def is_projector_param(self, name: str) -> bool:
        return any(key in name for key in self.projector_param_keys)

    def get_optimizer_param_groups(self, model: nn.Module) -> List[dict]:
        """Decay / no-decay x projector / other groups; the projector ones use ``args.mm_projector_lr``.

        Only trainable parameters are included and empty groups are dropped.
        """
        decay_names = set(self.get_decay_parameter_names(model))
        weight_decay = self.args.weight_decay
        projector_lr = self.args.mm_projector_lr
        buckets: Dict[Tuple[bool, bool], List[nn.Parameter]] = {
            (False, True): [], (False, False): [], (True, True): [], (True, False): [],
        }
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            buckets[(self.is_projector_param(name), name in decay_names)].append(param)
        groups = []
        for (is_projector, decays), params in buckets.items():
            if not params:
                continue
            group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = projector_lr
            groups.append(group)
        return groups

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None or getattr(self.args, "mm_projector_lr", None) is None:
            return super().create_optimizer(model)

        opt_model = self.model if model is None else model
        groups = self.get_optimizer_param_groups(opt_model)
        if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        for key in ("params", "model", "optimizer_dict"):
            if key in optimizer_kwargs:
                raise ValueError(f"optim={self.args.optim!r} builds its own parameter groups; "
                                 "it cannot be combined with --mm_projector_lr")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)

        if "bitsandbytes" in str(optimizer_cls) and optimizer_kwargs.get("optim_bits", None) == 8:
            import bitsandbytes

            manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
            for module in opt_model.modules():
                if isinstance(module, nn.Embedding):
                    manager.register_module_override(module, "weight", {"optim_bits": 32})
        return self.optimizer

    # ---- non-finite loss guard ------------------------------------------------------------------

    def training_step(self, model: nn.Module, inputs: Dict[str, object], num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step, stopping training on a NaN / inf loss instead of training on.

        Overridden here rather than in ``compute_loss``: extensions may wrap ``compute_loss``, and this sees the
        loss of every path, wrapped or not. The collator's ``sample_index`` is popped before the model sees it."""
        inputs = dict(inputs)
        sample_index = inputs.pop(SAMPLE_INDEX_KEY, None)
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The loss comes back after backward (DeepSpeed included), possibly divided by the accumulation steps,
        # which keeps NaN / inf as they are; the optimizer has not stepped on this micro-batch yet. Reading the
        # flag costs one host sync per step (the Trainer's logging_nan_inf_filter already syncs on it too).
        if not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(self._non_finite_loss_message(loss, sample_index))
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation batches come from the same collator: its sample_index is not a model input either.
        inputs = {k: v for k, v in inputs.items() if k != SAMPLE_INDEX_KEY}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _non_finite_loss_message(self, loss: torch.Tensor, sample_index) -> str:
        value = loss.detach().float().cpu().flatten().tolist()
        step = int(self.state.global_step)
        lines = [f"Non-finite training loss {value[0] if len(value) == 1 else value} at global step {step} "
                 f"(a micro-batch of optimizer step {step + 1}; the optimizer has not stepped on it). "
                 "Training stopped instead of training on it."]
        if sample_index is not None:
            indices = [int(i) for i in sample_index.detach().cpu().flatten().tolist()]
            lines.append(f"Batch sample indices (this rank): {indices}.")
            ids = self._sample_ids(indices)
            if ids is not None:
                lines.append(f"Sample ids: {ids}.")
        else:
            lines.append("Sample indices unknown: the dataset's samples carry no 'index' key.")
        lines.append("Likely causes: a learning rate too high or no warmup; fp16 overflow (try bf16); a sample whose "
                     "labels are all IGNORE_INDEX (empty answer, or its answer truncated away); a corrupt or "
                     "all-constant image; a NaN in the pretrained projector or model weights.")
        return "\n".join(lines)

    def _sample_ids(self, indices: Sequence[int]) -> Optional[List[object]]:
        """The "id" of each sample when the train dataset keeps its records (LazySupervisedDataset does)."""
        records = getattr(self.train_dataset, "list_data_dict", None)
        if records is None:
            return None
        try:
            return [records[i].get("id") if isinstance(records[i], dict) else None for i in indices]
        except (IndexError, TypeError):  # an index from another dataset (wrapped or concatenated): no ids
            return None

    # ---- saving ---------------------------------------------------------------------------------

    def _checkpoint_dir(self, trial) -> str:
        return os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def get_mm_adapter_keys(self) -> List[str]:
        keys = list(self.mm_adapter_keys)
        if getattr(self.args, "use_im_start_end", False):
            keys.extend(self.mm_adapter_embedding_keys)
        return keys

    def _save_mm_adapter(self, output_dir: str) -> None:
        """Write ``config.json`` + ``mm_projector.bin`` (gathering under ZeRO-3 on every rank, writing on rank 0)."""
        model = self._unwrapped_model()
        weights = get_mm_adapter_state_maybe_zero_3(model.named_parameters(), self.get_mm_adapter_keys())
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            config = getattr(model, "config", None)
            if config is not None:
                config.save_pretrained(output_dir)
            torch.save(weights, os.path.join(output_dir, MM_PROJECTOR_NAME))

    def _save_non_lora_trainables(self, output_dir: str) -> None:
        """Write ``non_lora_trainables.bin`` (keys as in the final LoRA save) and ``config.json``."""
        model = self._unwrapped_model()
        weights = get_peft_state_non_lora_maybe_zero_3(model.named_parameters())
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            config = getattr(model, "config", None)
            if config is not None and not os.path.isfile(os.path.join(output_dir, "config.json")):
                config.save_pretrained(output_dir)
            torch.save(weights, os.path.join(output_dir, NON_LORA_TRAINABLES_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            if self.hp_search_backend is None and trial is None:
                self.store_flos()
            self._save_mm_adapter(self._checkpoint_dir(trial))
            if self.args.should_save:
                from transformers.trainer_utils import rotate_checkpoints

                rotate_checkpoints(
                    output_dir=self._get_output_dir(trial=trial),
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=True,
                )
            return

        super()._save_checkpoint(model, trial)
        if _is_peft_model(self._unwrapped_model()):
            self._save_non_lora_trainables(self._checkpoint_dir(trial))

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            return
        super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Also restore ``non_lora_trainables.bin`` (the projector) when resuming a LoRA run.

        DeepSpeed resumes restore the whole module from the engine checkpoint and do not come here.
        """
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.model if model is None else model
        path = os.path.join(resume_from_checkpoint, NON_LORA_TRAINABLES_NAME)
        if _is_peft_model(target) and os.path.isfile(path):
            from llava.model.weights import load_weights_file

            weights = load_weights_file(path)
            result = target.load_state_dict(weights, strict=False)
            if result.unexpected_keys:
                logger.warning("non_lora_trainables.bin has keys the model lacks: %s", result.unexpected_keys)
