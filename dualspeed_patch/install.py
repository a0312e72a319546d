"""Install / remove the core on a LLaVA package (ours, upstream llava-torch, another fork) from one patch table.

    inst = dualspeed_patch.apply("llava", config=DualSpeedConfig(dualspeed=True))
    ...
    dualspeed_patch.remove()          # every patch undone, configuration and inference spec cleared

No file of the fork is edited: `PATCH_TABLE` lists every (module, class, attribute, wrapper) the core needs;
`apply()` checks that all required targets exist before it changes anything, wraps them in place, and records
what was there (including "inherited, not defined on the class") so that `remove()` restores it exactly.
The configuration lives on the returned `Installation`; the wrappers are closures over it."""
from __future__ import annotations

import importlib
import inspect
import logging
import types
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from . import decoder_loop, hooks, multimodal
from .config import DualSpeedConfig

logger = logging.getLogger(__name__)
_MISSING = object()
MERGE_ARGS = ["self", "input_ids", "position_ids", "attention_mask", "past_key_values", "labels", "images"]


@dataclass(frozen=True)
class PatchTarget:
    module: str                 # submodule of the fork, e.g. "model.llava_arch"
    owner: Optional[str]        # class name; None: a module-level function
    attr: str
    factory: Callable           # (original, installation) -> wrapper
    training: bool = False      # only when installed for training
    subclasses: bool = False    # also wrap subclasses that define their own `attr`
    optional: bool = False      # a fork without it still gets the rest
    defines: bool = False       # put on a mixin that inherits it from a later base: the factory gets the owner
                                # (the wrapper reaches the base's method with super(owner, self)), not an original


PATCH_TABLE = (
    PatchTarget("model.llava_arch", "LlavaMetaForCausalLM", "prepare_inputs_labels_for_multimodal",
                multimodal.wrap, subclasses=True),
    PatchTarget("model.llava_arch", "LlavaMetaModel", "initialize_vision_modules",
                hooks.wrap_initialize_vision_modules),
    # DUET stage B: the decoder's forward, reached through LLaVA's decoder mixin (decoder_loop.py says how).
    PatchTarget("model.llava_arch", "LlavaMetaModel", "forward", decoder_loop.wrap, defines=True),
    PatchTarget("model.builder", None, "load_pretrained_model", hooks.wrap_load_pretrained_model, optional=True),
    PatchTarget("train.llava_trainer", "LLaVATrainer", "compute_loss", hooks.wrap_compute_loss, training=True),
    PatchTarget("train.llava_trainer", "LLaVATrainer", "log", hooks.wrap_log, training=True),
    PatchTarget("train.llava_trainer", "LLaVATrainer", "create_optimizer", hooks.wrap_create_optimizer,
                training=True),
    PatchTarget("train.llava_trainer", "LLaVATrainer", "__init__", hooks.wrap_trainer_init, training=True),
    PatchTarget("train.llava_trainer", "LLaVATrainer", "train", hooks.wrap_train, training=True),
)


@dataclass
class _Installed:
    owner: object   # class or module
    attr: str
    previous: object  # what owner.__dict__ held (_MISSING: inherited)
    wrapper: object


class Installation:
    """The core installed on one fork: its configuration, the pruned-inference spec, and what to undo."""

    def __init__(self, fork: types.ModuleType, config: Optional[DualSpeedConfig] = None):
        self.fork = fork
        self.config = config
        self.inference_spec = None      # context.ModeSpec for every merge outside a mode context (run.py)
        self.isolator_path: Optional[str] = None
        self._installed: List[_Installed] = []

    def training_config(self) -> Optional[DualSpeedConfig]:
        """The configuration when DualSpeed training is switched on, else None."""
        cfg = self.config
        return cfg if cfg is not None and cfg.dualspeed else None

    def configure(self, config: Optional[DualSpeedConfig]) -> None:
        if config is not None:
            config.validate()
        self.config = config

    def set_inference(self, spec, isolator_path: Optional[str] = None) -> None:
        self.inference_spec, self.isolator_path = spec, isolator_path

    # ------------------------------------------------------------------------------------------ patching

    def install(self, training: bool) -> None:
        plan = [(t, owner) for t in PATCH_TABLE if training or not t.training
                for owner in self._owners(t)]
        for target, owner in plan:  # everything is resolved before anything changes
            self._patch(owner, target)

    def _owners(self, t: PatchTarget) -> list:
        name = f"{self.fork.__name__}.{t.module}"
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            if t.optional:
                return []
            raise ImportError(f"DualSpeed cannot patch {self.fork.__name__!r}: importing {name} failed ({e})") from e
        if t.owner is None:
            if not callable(getattr(module, t.attr, None)):
                if t.optional:
                    return []
                raise TypeError(f"{name} has no function {t.attr}(); DualSpeed needs it")
            return [module]
        cls = getattr(module, t.owner, None)
        if cls is None:
            raise TypeError(f"{name} has no {t.owner}: not a LLaVA codebase DualSpeed can patch")
        if t.defines:
            return [cls]
        if not callable(getattr(cls, t.attr, None)):
            raise TypeError(f"{name}.{t.owner} has no method {t.attr}(); DualSpeed needs it")
        if t.attr == "prepare_inputs_labels_for_multimodal":
            _check_merge_signature(cls, name)
        owners = [cls]
        if t.subclasses:
            owners += [c for c in _subclasses(cls) if t.attr in c.__dict__]
        return owners

    def _patch(self, owner, target: PatchTarget) -> None:
        if any(i.owner is owner and i.attr == target.attr for i in self._installed):
            return  # idempotent
        previous = vars(owner).get(target.attr, _MISSING)
        original = getattr(owner, target.attr, None)
        wrapper = target.factory(original, self, owner) if target.defines else target.factory(original, self)
        wrapper.__dualspeed_original__ = original
        setattr(owner, target.attr, wrapper)
        self._installed.append(_Installed(owner, target.attr, previous, wrapper))

    def uninstall(self) -> None:
        """Undo every patch, newest first, and forget the configuration."""
        while self._installed:
            item = self._installed.pop()
            if item.previous is _MISSING:
                delattr(item.owner, item.attr)
            else:
                setattr(item.owner, item.attr, item.previous)
        self.config = None
        self.inference_spec = None
        self.isolator_path = None

    @property
    def patched(self) -> List[str]:
        return [f"{getattr(i.owner, '__name__', i.owner)}.{i.attr}" for i in self._installed]


def _check_merge_signature(cls, module_name):
    sig = inspect.signature(cls.prepare_inputs_labels_for_multimodal)
    if list(sig.parameters)[:7] != MERGE_ARGS:
        raise TypeError(f"{module_name}.{cls.__name__}.prepare_inputs_labels_for_multimodal{sig} does not have "
                        "LLaVA's leading arguments (input_ids, position_ids, attention_mask, past_key_values, "
                        "labels, images)")


def _subclasses(cls):
    seen, stack = [], list(cls.__subclasses__())
    while stack:
        c = stack.pop()
        if c not in seen:
            seen.append(c)
            stack.extend(c.__subclasses__())
    return seen


# What is installed, by fork name: the only module-level state (as PEFT keeps its registries).
_installations: Dict[str, Installation] = {}


def _resolve(llava_module) -> types.ModuleType:
    if llava_module is None:
        llava_module = "llava"
    if isinstance(llava_module, str):
        llava_module = importlib.import_module(llava_module)
    if not isinstance(llava_module, types.ModuleType):
        raise TypeError(f"apply() takes a LLaVA package or its name, got {type(llava_module).__name__}")
    return llava_module


def apply(llava_module=None, config: Optional[DualSpeedConfig] = None, training: bool = True) -> Installation:
    """Patch the fork (a module or its name; default `llava`) and return its Installation. Idempotent: applying
    again returns the same installation (with `config` set when one is given)."""
    fork = _resolve(llava_module)
    inst = _installations.get(fork.__name__)
    fresh = inst is None
    if fresh:
        inst = Installation(fork)
    try:
        inst.install(training)
    except Exception:
        if fresh:
            inst.uninstall()
        raise
    _installations[fork.__name__] = inst
    if config is not None:
        inst.configure(config)
    logger.info("DualSpeed patches applied to %s: %s", fork.__name__, ", ".join(inst.patched))
    return inst


def remove(llava_module=None) -> None:
    """Undo the patches of one fork (default: every installed fork) and clear their configuration."""
    names = list(_installations) if llava_module is None else [_resolve(llava_module).__name__]
    for name in names:
        inst = _installations.pop(name, None)
        if inst is not None:
            inst.uninstall()


def is_applied(llava_module=None) -> bool:
    if llava_module is None:
        return bool(_installations)
    return _resolve(llava_module).__name__ in _installations


def installation(llava_module=None) -> Optional[Installation]:
    return _installations.get(_resolve(llava_module).__name__)


def configure(config: Optional[DualSpeedConfig], llava_module=None) -> None:
    """Set (None: clear) the configuration of an installed fork (default: every installed fork)."""
    targets = list(_installations.values()) if llava_module is None else [installation(llava_module)]
    if not targets or None in targets:
        raise RuntimeError("dualspeed_patch.configure(): nothing is installed; call dualspeed_patch.apply() first")
    for inst in targets:
        inst.configure(config)
