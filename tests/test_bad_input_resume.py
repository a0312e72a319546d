"""Resume safety: the DualSpeed flags recorded in every checkpoint and compared on resume, and loaders that
refuse a pickle which would run code."""
import json
import logging
import os
import pickle

import pytest
import torch

import dualspeed_patch
from dualspeed_patch import hooks, isolator
from dualspeed_patch.config import DualSpeedConfig
from tests.helpers import make_tiny_llava, two_image_batch

HOOKS_LOGGER = "dualspeed_patch.hooks"


@pytest.fixture
def clean():
    yield
    dualspeed_patch.remove()


# ---- flags recorded in checkpoints and compared on resume --------------------------------------------------

class _Samples(torch.utils.data.Dataset):
    """The two samples of helpers.two_image_batch, one per item (default_data_collator stacks them back)."""

    def __init__(self):
        self.batch = two_image_batch()

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def _trainer(model, out, max_steps):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import default_data_collator

    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True, disable_tqdm=True,
                             per_device_train_batch_size=2, max_steps=max_steps, save_strategy="steps",
                             save_steps=1, logging_steps=1, learning_rate=1e-4, seed=0)
    return LLaVATrainer(model=model, args=args, train_dataset=_Samples(), data_collator=default_data_collator)


def _resume(vision_path, out, cfg, resume_from_checkpoint, caplog):
    """A fresh model and trainer under `cfg`, resumed from a checkpoint of the 2-step run: max_steps=2 means
    the Trainer restores everything and trains no further step. Returns the hooks' log records."""
    dualspeed_patch.configure(cfg)
    trainer = _trainer(make_tiny_llava(vision_path).train(), out, max_steps=2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=HOOKS_LOGGER):
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return [r for r in caplog.records if r.name == HOOKS_LOGGER]


@pytest.fixture(scope="module")
def two_step_run(vision_path, tmp_path_factory):
    """2 DualSpeed steps with save_steps=1: checkpoint-1/ and checkpoint-2/."""
    out = tmp_path_factory.mktemp("resume") / "run"
    first = DualSpeedConfig(dualspeed=True, pruning_ratio=0.9, vtp_method="divprune", slow_mode_ratio=0.5,
                            mode_log=str(out.parent / "modes.{rank}.jsonl"))
    dualspeed_patch.apply("llava", config=first)
    try:
        _trainer(make_tiny_llava(vision_path).train(), out, max_steps=2).train()
    finally:
        dualspeed_patch.remove()
    return out, first


def test_every_checkpoint_records_the_flags(two_step_run):
    out, first = two_step_run
    for step in (1, 2):
        with open(out / f"checkpoint-{step}" / hooks.CONFIG_FILENAME) as f:
            saved = json.load(f)
        assert saved == {**vars(first)}  # every DualSpeedConfig field, JSON values
        assert (out / f"checkpoint-{step}" / isolator.FILENAME).is_file()
    assert (out / hooks.CONFIG_FILENAME).is_file()  # the final folder too


def test_resume_with_changed_flags_warns_naming_each_old_and_new_value(two_step_run, vision_path, caplog, clean):
    out, first = two_step_run
    changed = DualSpeedConfig(**{**vars(first), "pruning_ratio": 0.5, "vtp_method": "random",
                                 "mode_log": str(out.parent / "other.{rank}.jsonl")})
    dualspeed_patch.apply("llava")
    records = _resume(vision_path, out, changed, True, caplog)  # True: the last checkpoint, as the Trainer
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert str(out / "checkpoint-2") in line
    assert "pruning_ratio 0.9 -> 0.5" in line and "vtp_method 'divprune' -> 'random'" in line
    assert "mode_log" not in line and "slow_mode_ratio" not in line  # ignored / unchanged flags stay out


def test_resume_with_the_same_flags_says_nothing(two_step_run, vision_path, caplog, clean):
    out, first = two_step_run
    dualspeed_patch.apply("llava")
    records = _resume(vision_path, out, DualSpeedConfig(**vars(first)), str(out / "checkpoint-1"), caplog)
    assert [r.getMessage() for r in records if "Resuming" in r.getMessage()] == []


def test_a_checkpoint_without_the_file_gets_an_info_line(two_step_run, vision_path, caplog, clean, tmp_path):
    import shutil

    out, first = two_step_run
    old = tmp_path / "checkpoint-1"  # a copy, so the module's run stays intact for the other tests
    shutil.copytree(out / "checkpoint-1", old)
    (old / hooks.CONFIG_FILENAME).unlink()
    dualspeed_patch.apply("llava")
    records = _resume(vision_path, tmp_path, DualSpeedConfig(**vars(first)), str(old), caplog)
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO and "Resuming" in r.getMessage()]
    assert infos == [f"Resuming from {old}: it has no dualspeed_config.json (written before DualSpeed recorded "
                     "its flags, or by a run without DualSpeed), so the DualSpeed flags could not be compared."]
    assert not any(r.levelno >= logging.WARNING for r in records)


def test_resume_folder_is_resolved_as_the_trainer_resolves_it(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint")
    assert hooks.resume_folder(True, str(tmp_path)) == str(tmp_path / "checkpoint-10")  # by number, dirs only
    assert hooks.resume_folder("some/path", str(tmp_path)) == "some/path"
    assert hooks.resume_folder(False, str(tmp_path)) is None and hooks.resume_folder(None, str(tmp_path)) is None
    assert hooks.resume_folder(True, str(tmp_path / "absent")) is None  # the Trainer raises its own error


def test_an_unreadable_config_file_is_a_warning_not_a_crash(tmp_path, caplog):
    (tmp_path / hooks.CONFIG_FILENAME).write_text("[1, 2")
    with caplog.at_level(logging.INFO, logger=HOOKS_LOGGER):
        assert hooks.check_resumed_flags(DualSpeedConfig(dualspeed=True), str(tmp_path)) is None
    assert "could not be compared" in caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.WARNING


def test_resuming_a_dualspeed_checkpoint_with_dualspeed_off_warns(tmp_path, caplog, monkeypatch):
    # With --dualspeed False the patch is not installed at all; the entry point compares the flags itself.
    from dualspeed_patch.train import warn_if_resuming_a_dualspeed_run_without_it

    monkeypatch.delenv("RANK", raising=False)
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    hooks.save_config(DualSpeedConfig(dualspeed=True), str(ckpt))
    off = DualSpeedConfig(dualspeed=False)
    with caplog.at_level(logging.INFO, logger=HOOKS_LOGGER):
        warn_if_resuming_a_dualspeed_run_without_it(off, ["--output_dir", str(tmp_path), "--resume_from_checkpoint",
                                                          "True"])
    assert "changed DualSpeed flags: dualspeed True -> False" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=HOOKS_LOGGER):
        warn_if_resuming_a_dualspeed_run_without_it(off, ["--output_dir", str(tmp_path)])  # not resuming
        (ckpt / hooks.CONFIG_FILENAME).unlink()  # a plain run's checkpoint: a plain resume says nothing
        warn_if_resuming_a_dualspeed_run_without_it(off, ["--resume_from_checkpoint", str(ckpt)])
    assert caplog.text == ""


def test_remove_undoes_the_train_wrapper():
    from llava.train.llava_trainer import LLaVATrainer

    assert "train" not in vars(LLaVATrainer)  # inherited from transformers.Trainer
    inst = dualspeed_patch.apply("llava", config=DualSpeedConfig(dualspeed=True))
    try:
        assert "LLaVATrainer.train" in inst.patched
        assert vars(LLaVATrainer)["train"].__dualspeed_original__ is not None
    finally:
        dualspeed_patch.remove()
    assert "train" not in vars(LLaVATrainer)
    inst = dualspeed_patch.apply("llava", training=False)  # inference only: the Trainer is left alone
    try:
        assert "train" not in vars(LLaVATrainer)
    finally:
        dualspeed_patch.remove()


# ---- loaders refuse a pickle that would run code -----------------------------------------------------------

class _Payload:
    """Unpickling this runs exec(), which writes the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def hostile(tmp_path):
    """write(path, wrap) saves wrap(payload) with torch.save; `marker` exists only if the payload ran."""
    marker = tmp_path / "marker"

    def write(path, wrap=lambda p: {"weight": p}):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(wrap(_Payload(marker)), path)
        return str(path)

    write.marker = marker
    return write


def test_the_payload_really_runs_when_unpickled_unsafely(hostile, tmp_path):
    path = hostile(tmp_path / "x.bin")
    torch.load(path, weights_only=False)  # the control: without the restriction the code runs
    assert hostile.marker.read_text() == "ran"


def test_load_weights_file_refuses(hostile, tmp_path):
    from llava.model.weights import load_weights_file

    path = hostile(tmp_path / "mm_projector.bin")
    with pytest.raises(pickle.UnpicklingError, match=f"Refusing to load {path}.*references exec"):
        load_weights_file(path)
    assert not hostile.marker.exists()


def test_isolator_load_refuses_naming_the_file(hostile, tmp_path, vision_path):
    path = hostile(tmp_path / isolator.FILENAME)
    model = make_tiny_llava(vision_path)
    with pytest.raises(pickle.UnpicklingError, match=f"Refusing to load {path}.*references exec"):
        isolator.load(model, path)
    assert not hostile.marker.exists() and isolator.get(model) is None


def test_isolator_load_refuses_a_file_without_the_weight_tensor(tmp_path, vision_path):
    path = tmp_path / isolator.FILENAME
    torch.save({"weight": [1.0, 2.0]}, path)  # loadable, but not an isolator
    with pytest.raises(ValueError, match="is not a mode isolator file"):
        isolator.load(make_tiny_llava(vision_path), str(path))


def test_lora_resume_refuses_a_hostile_non_lora_trainables(hostile, tmp_path, vision_path):
    from peft import LoraConfig, get_peft_model

    from llava.train.llava_trainer import NON_LORA_TRAINABLES_NAME

    model = get_peft_model(make_tiny_llava(vision_path), LoraConfig(r=2, target_modules=["q_proj"]))
    trainer = _trainer(model, tmp_path / "out", max_steps=1)
    ckpt = tmp_path / "checkpoint-1"
    trainer.save_model(str(ckpt))  # adapter files: a checkpoint _load_from_checkpoint accepts
    hostile(ckpt / NON_LORA_TRAINABLES_NAME)
    with pytest.raises(pickle.UnpicklingError, match=f"Refusing to load {ckpt / NON_LORA_TRAINABLES_NAME}.*exec"):
        trainer._load_from_checkpoint(str(ckpt))
    assert not hostile.marker.exists()


def test_lm_probe_cache_refuses(hostile, tmp_path):
    from dualspeed_lab.toy.lm_probe import load_features

    task = tmp_path / "task"
    for split in ("train", "test"):
        (task / split).mkdir(parents=True)
        (task / split / "questions.jsonl").write_text(json.dumps({"image": f"{split}/0.png", "type": "color"}) + "\n")
    cache = hostile(tmp_path / "feats.pt", wrap=lambda p: {"train": (["train/0.png"], p)})
    with pytest.raises(pickle.UnpicklingError, match=f"Refusing to load the feature cache {cache}"):
        load_features(cache, str(task), tower="unused: the cache is read first")
    assert not hostile.marker.exists()


def test_extract_mm_projector_refuses(hostile, tmp_path):
    from scripts import extract_mm_projector

    path = hostile(tmp_path / "ckpt" / "pytorch_model.bin",
                   wrap=lambda p: {"model.mm_projector.0.weight": torch.zeros(1), "x": p})
    with pytest.raises(pickle.UnpicklingError, match=f"Refusing to load {path}"):
        extract_mm_projector.main(["--model-path", str(tmp_path / "ckpt"), "--output", str(tmp_path / "o.bin")])
    assert not hostile.marker.exists() and not (tmp_path / "o.bin").exists()
