"""The wrappers the patch table installs besides the merge: the Trainer's loss (which runs `step.py`), its
logging and optimizer groups, the isolator's creation with the vision modules, its saving (a TrainerCallback,
which also records the DualSpeed flags in every checkpoint), the check of those flags on resume, and loading
for pruned inference.

Every factory takes `(original, installation)`; a wrapper reads the configuration from its installation, and
keeps per-run state on the trainer instance (`TrainerRuntime`)."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from transformers import TrainerCallback

from . import context
from . import isolator as isolator_lib
from .step import StepResult, choose_mode, fast_step, plugin_seed, slow_step

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- per-trainer state

@dataclass
class LossLog:
    """The loss components since the last log, kept on the device; averaged (one host sync) at logging time."""
    ce: List[torch.Tensor] = field(default_factory=list)
    kl: List[torch.Tensor] = field(default_factory=list)
    slow: int = 0
    steps: int = 0
    kept: int = 0   # visual tokens the LLM saw in reduced steps
    total: int = 0  # visual tokens those steps had before reduction
    layer_mean: List[torch.Tensor] = field(default_factory=list)  # stage B: visual tokens per decoder layer
    layer_total: int = 0  # visual tokens before reduction, of the steps in layer_mean

    def add(self, result: StepResult) -> None:
        self.ce.append(result.ce.float())
        if result.kl is not None:
            self.kl.append(result.kl.float())
        self.slow += int(result.mode == context.SLOW)
        self.steps += 1
        if result.mode != context.SLOW:
            self.kept += result.state.visual_kept
            self.total += result.state.visual_total
            plan = result.state.layer_drop
            mean = plan.layer_mean() if plan is not None else None
            if mean is not None:
                self.layer_mean.append(mean)
                self.layer_total += result.state.visual_total

    def summary(self) -> dict:
        out = {}
        if self.ce:
            out["dualspeed/ce"] = torch.stack(self.ce).mean().item()
        if self.kl:
            out["dualspeed/kl"] = torch.stack(self.kl).mean().item()
        if self.steps:
            out["dualspeed/slow_frac"] = self.slow / self.steps
        if self.total:
            out["dualspeed/visual_kept_frac"] = self.kept / self.total
            out["dualspeed/visual_kept_per_step"] = self.kept / max(1, self.steps - self.slow)
        if self.layer_total:  # DUET's measure: visual tokens averaged over the LLM's layers, of those at input
            out["dualspeed/visual_layer_avg_frac"] = torch.stack(self.layer_mean).sum().item() / self.layer_total
        return out


@dataclass
class TrainerRuntime:
    """DualSpeed's state on one trainer: the micro-step counter of the current global step, whether the LLM is
    frozen (decided once), and the loss log."""
    global_step: Optional[int] = None
    micro: int = 0
    llm_frozen: Optional[bool] = None
    log: LossLog = field(default_factory=LossLog)

    def next_micro(self, global_step: int) -> int:
        if self.global_step != global_step:
            self.global_step, self.micro = global_step, 0
        micro = self.micro
        self.micro += 1
        return micro

    def frozen(self, model) -> bool:
        if self.llm_frozen is None:
            self.llm_frozen = not any(p.requires_grad for n, p in model.named_parameters()
                                      if ".layers." in n and "vision_tower" not in n)
        return self.llm_frozen


RUNTIME_ATTR = "dualspeed_runtime"


def runtime_of(trainer) -> TrainerRuntime:
    rt = getattr(trainer, RUNTIME_ATTR, None)
    if rt is None:
        rt = TrainerRuntime()
        setattr(trainer, RUNTIME_ATTR, rt)
    return rt


# ------------------------------------------------------------------------------------------------ the Trainer

def wrap_compute_loss(original, installation):
    @functools.wraps(original)
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        cfg = installation.training_config()
        if cfg is None or not model.training or inputs.get("images") is None:
            return original(self, model, inputs, return_outputs=return_outputs, **kwargs)
        rt = runtime_of(self)
        step = int(self.state.global_step)
        micro = rt.next_micro(step)
        seed = cfg.slow_mode_seed if cfg.slow_mode_seed is not None else int(self.args.seed)
        rank = int(getattr(self.args, "process_index", 0))
        mode = choose_mode(cfg, seed, step, micro, rt.frozen(model))
        spec = context.ModeSpec.from_config(cfg, mode, plugin_seed(seed, rank, step, micro))
        if cfg.mode_log:
            _trace(cfg.mode_log, rank, step, micro, mode)
        if mode == context.SLOW:
            result = slow_step(model, inputs, spec, cfg)
        else:
            result = fast_step(model, inputs, spec,
                               loss_fn=lambda m, i: original(self, m, i, return_outputs=True, **kwargs))
        rt.log.add(result)
        return (result.loss, result.outputs) if return_outputs else result.loss

    return compute_loss


def _trace(pattern: str, rank: int, step: int, micro: int, mode: str) -> None:
    with open(pattern.replace("{rank}", str(rank)), "a") as f:
        f.write(json.dumps({"rank": rank, "step": step, "micro": micro, "mode": mode}) + "\n")


def wrap_log(original, installation):
    @functools.wraps(original)
    def log(self, logs, *args, **kwargs):
        rt = getattr(self, RUNTIME_ATTR, None)
        if rt is not None and rt.log.steps and "loss" in logs:
            logs = {**logs, **rt.log.summary()}
            rt.log = LossLog()
        return original(self, logs, *args, **kwargs)

    return log


def wrap_create_optimizer(original, installation):
    @functools.wraps(original)
    def create_optimizer(self, *args, **kwargs):
        iso = isolator_lib.get(self.model) if installation.training_config() is not None else None
        if iso is not None:
            iso.weight.requires_grad_(True)  # a frozen-LLM stage froze everything but the projector
        optimizer = original(self, *args, **kwargs)
        if iso is not None:
            _to_projector_lr(optimizer, iso.weight, getattr(self.args, "mm_projector_lr", None))
        return optimizer

    return create_optimizer


def _to_projector_lr(optimizer, param, projector_lr):
    """Train the isolator at the projector's learning rate, whatever the fork's grouping by name did."""
    if optimizer is None or projector_lr is None:
        return
    source = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if source is None or source.get("lr") == projector_lr:
        return
    source["params"] = [p for p in source["params"] if p is not param]
    target = next((g for g in optimizer.param_groups
                   if g.get("lr") == projector_lr and g.get("weight_decay") == source.get("weight_decay")), None)
    if target is not None:
        target["params"].append(param)
    else:
        optimizer.add_param_group({"params": [param], "lr": projector_lr,
                                   "weight_decay": source.get("weight_decay", 0.0)})


class IsolatorSaver(TrainerCallback):
    """Writes mode_isolator.bin and dualspeed_config.json into every checkpoint-N/ and, at the end, into the
    output folder. Runs on every rank: under ZeRO-3 gathering the isolator is a collective; only the main
    process writes."""

    def __init__(self, installation):
        self.installation = installation

    def _save(self, args, model, folder):
        cfg = self.installation.training_config()
        if cfg is None:
            return None
        if args.should_save:
            save_config(cfg, folder)  # also without an isolator: the resume check needs the flags
        if model is None or isolator_lib.get(model) is None:
            return None
        return isolator_lib.save(model, folder, args.should_save)

    def on_save(self, args, state, control, model=None, **kwargs):
        self._save(args, model, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        path = self._save(args, model, args.output_dir)
        if path:
            logger.info("Saved the mode isolator to %s", path)


def wrap_trainer_init(original, installation):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(IsolatorSaver(installation))

    return __init__


# --------------------------------------------------------------------------------- the flags of a resumed run

CONFIG_FILENAME = "dualspeed_config.json"
# Flags whose change cannot alter what is trained: mode_log only names the file the modes are traced to.
IGNORED_ON_RESUME = ("mode_log",)


def save_config(cfg, folder: str) -> str:
    """Write the DualSpeedConfig fields as JSON into `folder` (through a temporary file, so an interrupted
    save never leaves half a file that the resume check would then refuse to read)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, CONFIG_FILENAME)
    with open(path + ".tmp", "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def resume_folder(resume_from_checkpoint, output_dir: str) -> Optional[str]:
    """The folder `Trainer.train(resume_from_checkpoint=...)` resumes from, resolved as the Trainer does it:
    `True` is the last checkpoint-N/ of output_dir (transformers' own get_last_checkpoint), a path is itself.
    None when there is none: the Trainer then raises its own error, which this check must not pre-empt."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if isinstance(resume_from_checkpoint, bool):
        from transformers.trainer_utils import get_last_checkpoint

        try:
            return get_last_checkpoint(output_dir)
        except OSError:  # no output folder: the Trainer reports it
            return None
    return os.fspath(resume_from_checkpoint)


def changed_flags(saved: dict, cfg) -> List[str]:
    """'name old -> new' for every flag of `cfg` that differs from the saved run (ignored ones left out)."""
    out = []
    for f in dataclasses.fields(cfg):
        if f.name in IGNORED_ON_RESUME:
            continue
        new = getattr(cfg, f.name)
        if f.name not in saved:  # a flag added after the checkpoint was written: a change unless at its default
            if new != f.default:
                out.append(f"{f.name} (not recorded) -> {new!r}")
        elif saved[f.name] != new:
            out.append(f"{f.name} {saved[f.name]!r} -> {new!r}")
    return out


def check_resumed_flags(cfg, folder: str) -> Optional[List[str]]:
    """Log one warning naming every DualSpeed flag that changed since `folder` was saved, or one info line when
    the checkpoint does not record them. Returns the changes (None: could not compare)."""
    path = os.path.join(folder, CONFIG_FILENAME)
    if not os.path.isfile(path):
        logger.info("Resuming from %s: it has no %s (written before DualSpeed recorded its flags, or by a run "
                    "without DualSpeed), so the DualSpeed flags could not be compared.", folder, CONFIG_FILENAME)
        return None
    saved = _read_saved(path)
    if isinstance(saved, str):  # why it could not be read: a damaged file must not stop the resume
        logger.warning("Resuming from %s: %s could not be read (%s), so the DualSpeed flags could not be "
                       "compared.", folder, CONFIG_FILENAME, saved)
        return None
    changes = changed_flags(saved, cfg)
    if changes:
        logger.warning("Resuming from %s with changed DualSpeed flags: %s (the run continues with the new values).",
                       folder, ", ".join(changes))
    return changes


def _read_saved(path: str):
    """The saved flags as a dict, or a string saying why they could not be read."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        return str(e)
    return saved if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not an object"


def wrap_train(original, installation):
    """Before the Trainer resumes, compare the DualSpeed flags of this run with the ones the checkpoint was
    trained with. Wrapping train() (not _load_from_checkpoint, which DeepSpeed resumes never call) sees the
    resume argument on every path; a callback would not see it at all."""
    @functools.wraps(original)
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        cfg = installation.config
        folder = resume_folder(resume_from_checkpoint, self.args.output_dir)
        # A folder that is not there is left to the Trainer's own error. With DualSpeed off, only a checkpoint
        # that recorded DualSpeed flags is worth a line (switching it off is a change); a plain run resumed
        # plainly says nothing.
        if (folder is not None and os.path.isdir(folder) and cfg is not None and self.is_world_process_zero()
                and (cfg.dualspeed or os.path.isfile(os.path.join(folder, CONFIG_FILENAME)))):
            check_resumed_flags(cfg, folder)
        return original(self, resume_from_checkpoint, *args, **kwargs)

    return train


# ------------------------------------------------------------------------------------------------- the model

def wrap_initialize_vision_modules(original, installation):
    """After the fork builds tower + projector, add the isolator when DualSpeed trains, and load it from
    beside the pretrained projector (as the projector itself is loaded)."""
    @functools.wraps(original)
    def initialize_vision_modules(self, model_args, *args, **kwargs):
        result = original(self, model_args, *args, **kwargs)
        cfg = installation.training_config()
        if cfg is None or not cfg.isolator_active:
            return result
        isolator_lib.attach(self, cfg.isolator_len)
        projector = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if projector:
            path = isolator_lib.sibling_path(projector)
            if not isolator_lib.load(self, path):
                logger.warning("No %s beside %s: the mode isolator starts from a fresh init.",
                               isolator_lib.FILENAME, projector)
        return result

    return initialize_vision_modules


def load_inference_isolator(model, model_path: str, installation) -> Optional[str]:
    """Pruned inference with the isolator: put mode_isolator.bin (the model folder's, or the file the runner
    names) into `model`. Returns the file read, None when the installation's spec asks for no isolator."""
    spec = installation.inference_spec
    if spec is None or not spec.isolator:
        return None
    path = installation.isolator_path or os.path.join(model_path, isolator_lib.FILENAME)
    if not isolator_lib.load(model, path):
        raise FileNotFoundError(f"{path} not found: pruned inference with the isolator needs the "
                                "mode_isolator.bin saved by DualSpeed training (or pass --no_isolator)")
    isolator_lib.get(model).to(device=model.device, dtype=model.dtype)
    return path


def wrap_load_pretrained_model(original, installation):
    """For pruned inference with the isolator: load mode_isolator.bin into every model the fork's builder
    returns."""
    @functools.wraps(original)
    def load_pretrained_model(model_path, *args, **kwargs):
        tokenizer, model, image_processor, context_len = original(model_path, *args, **kwargs)
        load_inference_isolator(model, model_path, installation)
        return tokenizer, model, image_processor, context_len

    return load_pretrained_model
