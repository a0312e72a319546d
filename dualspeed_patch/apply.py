"""Install / remove the DualSpeed patches on a LLaVA package: ours, upstream llava-torch, or another fork.

No file of the fork is edited: methods are wrapped on its classes, idempotently, and `remove()` restores
exactly what was there (including 'inherited, not defined on the class')."""
from __future__ import annotations

import importlib
import inspect
import logging
import types

from . import isolator, multimodal, trainer

logger = logging.getLogger(__name__)
_installed = []  # (cls, name, had_own_attribute, original)
_MISSING = object()


def _module(pkg, sub):
    name = f"{pkg.__name__}.{sub}"
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"DualSpeed cannot patch {pkg.__name__!r}: importing {name} failed ({e})") from e


def _require(cls_owner, cls_name, methods):
    cls = getattr(cls_owner, cls_name, None)
    if cls is None:
        raise TypeError(f"{cls_owner.__name__} has no {cls_name}: not a LLaVA codebase DualSpeed can patch")
    for m in methods:
        if not callable(getattr(cls, m, None)):
            raise TypeError(f"{cls_owner.__name__}.{cls_name} has no method {m}(); DualSpeed needs it")
    return cls


def _patch(cls, name, wrapper_factory):
    current = getattr(cls, name)
    if getattr(current, "__dualspeed_original__", None) is not None and name in cls.__dict__:
        return  # already patched
    own = cls.__dict__.get(name, _MISSING)
    _installed.append((cls, name, own))
    setattr(cls, name, wrapper_factory(current))


def apply(llava_module=None, training=True):
    """Patch the fork (a module or its name; default: `llava`). Returns the module. Idempotent."""
    if llava_module is None:
        llava_module = "llava"
    if isinstance(llava_module, str):
        llava_module = importlib.import_module(llava_module)
    if not isinstance(llava_module, types.ModuleType):
        raise TypeError(f"apply() takes a LLaVA package or its name, got {type(llava_module).__name__}")

    arch = _module(llava_module, "model.llava_arch")
    meta_lm = _require(arch, "LlavaMetaForCausalLM", ["prepare_inputs_labels_for_multimodal", "get_vision_tower"])
    meta_model = _require(arch, "LlavaMetaModel", ["initialize_vision_modules"])
    sig = inspect.signature(meta_lm.prepare_inputs_labels_for_multimodal)
    if list(sig.parameters)[:7] != ["self", "input_ids", "position_ids", "attention_mask", "past_key_values",
                                    "labels", "images"]:
        raise TypeError(f"{arch.__name__}.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal{sig} does not "
                        "have LLaVA's leading arguments (input_ids, position_ids, attention_mask, past_key_values, "
                        "labels, images)")

    _patch(meta_lm, "prepare_inputs_labels_for_multimodal", multimodal.wrap)
    # Model classes that override the merge themselves need the wrapper too.
    for cls in _subclasses(meta_lm):
        if "prepare_inputs_labels_for_multimodal" in cls.__dict__:
            _patch(cls, "prepare_inputs_labels_for_multimodal", multimodal.wrap)
    _patch(meta_model, "initialize_vision_modules", isolator.wrap_initialize_vision_modules)

    if training:
        trainer_mod = _module(llava_module, "train.llava_trainer")
        llava_trainer = _require(trainer_mod, "LLaVATrainer", ["compute_loss", "log", "create_optimizer",
                                                               "_save_checkpoint", "train"])
        _patch(llava_trainer, "compute_loss", trainer.wrap_compute_loss)
        _patch(llava_trainer, "log", trainer.wrap_log)
        _patch(llava_trainer, "create_optimizer", trainer.wrap_create_optimizer)
        _patch(llava_trainer, "_save_checkpoint", trainer.wrap_save_checkpoint)
        _patch(llava_trainer, "train", trainer.wrap_train)
    logger.info("DualSpeed patches applied to %s", llava_module.__name__)
    return llava_module


def _subclasses(cls):
    seen, stack = [], list(cls.__subclasses__())
    while stack:
        c = stack.pop()
        if c not in seen:
            seen.append(c)
            stack.extend(c.__subclasses__())
    return seen


def remove():
    """Undo every patch, newest first."""
    while _installed:
        cls, name, own = _installed.pop()
        if own is _MISSING:
            delattr(cls, name)
        else:
            setattr(cls, name, own)


def is_applied() -> bool:
    return bool(_installed)
