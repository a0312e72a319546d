"""Bad flag values are refused at parse time, naming the flag: NaN/inf in any float flag (LLaVA's argument
classes and the patch's), distillation switched on with a weight that switches it off, max_image_pixels <= 0."""
import dataclasses
import math
import re
import typing

import pytest
from transformers import HfArgumentParser

from dualspeed_patch import run
from dualspeed_patch.config import DualSpeedArguments, DualSpeedConfig
from llava.train.arguments import DEFAULT_MAX_IMAGE_PIXELS, DataArguments, ModelArguments, TrainingArguments

LLAVA_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
NON_FINITE = ("nan", "inf", "-inf")


def _float_fields(cls):
    """The fields annotated float (or Optional[float]): found, not listed, so the test grows with the flags."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and "float" in str(hints[f.name])]


def _llava_parse(tmp_path, *flags):
    parser = HfArgumentParser(LLAVA_CLASSES)
    return parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--report_to", "none", *flags])


def _patch_parse(*flags):
    return HfArgumentParser(DualSpeedArguments).parse_args_into_dataclasses(args=list(flags))[0]


def _cases(classes):
    return [(cls.__name__, name, value) for cls in classes for name in _float_fields(cls) for value in NON_FINITE
            # +inf max_grad_norm keeps its transformers meaning (no clipping); tested below.
            if not (name == "max_grad_norm" and value == "inf")]


def test_the_float_fields_are_found():
    # Guards the parametrization below: an empty list would make it pass vacuously.
    names = {n for cls in LLAVA_CLASSES for n in _float_fields(cls)}
    assert {"learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
            "warmup_ratio", "warmup_steps", "lora_dropout", "mm_projector_lr"} <= names
    assert set(_float_fields(DualSpeedArguments)) == {"pruning_ratio", "slow_mode_ratio", "distill_alpha",
                                                      "distill_temperature"}


@pytest.mark.parametrize("cls_name, name, value", _cases(LLAVA_CLASSES))
def test_llava_float_flags_refuse_non_finite_values(tmp_path, cls_name, name, value):
    with pytest.raises(ValueError, match=re.escape(f"--{name} must be a finite number, got {float(value)}")):
        _llava_parse(tmp_path, f"--{name}={value}")  # `--x -inf` would read -inf as a flag


@pytest.mark.parametrize("cls_name, name, value", _cases([DualSpeedArguments]))
def test_patch_float_flags_refuse_non_finite_values(cls_name, name, value):
    with pytest.raises(ValueError, match=re.escape(f"--{name} must be a finite number, got {float(value)}")):
        _patch_parse(f"--{name}={value}")


def test_finite_values_still_parse(tmp_path):
    _, _, training = _llava_parse(tmp_path, "--learning_rate", "2e-5", "--warmup_ratio", "0.03",
                                  "--mm_projector_lr", "1e-4", "--max_grad_norm", "0")
    assert (training.learning_rate, training.warmup_steps, training.mm_projector_lr) == (2e-5, 0.03, 1e-4)


def test_max_grad_norm_inf_keeps_its_meaning(tmp_path):
    # The Trainer itself calls clip_grad_norm_(..., inf) to measure the norm without clipping.
    assert _llava_parse(tmp_path, "--max_grad_norm", "inf")[2].max_grad_norm == math.inf


@pytest.mark.parametrize("cls", [ModelArguments, DataArguments, TrainingArguments, DualSpeedConfig])
def test_a_new_float_flag_is_covered_without_being_listed(cls):
    extended = dataclasses.make_dataclass(f"Extended{cls.__name__}", [("new_flag", float, 1.0)], bases=(cls,))
    kwargs = {"output_dir": "unused"} if cls is TrainingArguments else {}
    with pytest.raises(ValueError, match=re.escape("--new_flag must be a finite number, got nan")):
        extended(new_flag=math.nan, **kwargs)


def test_the_inference_runner_refuses_a_non_finite_pruning_ratio():
    args = run.build_parser().parse_args(["--pruned", "--pruning_ratio", "inf", "llava.eval.run_llava"])
    with pytest.raises(SystemExit, match=re.escape("--pruning_ratio must be a finite number, got inf")):
        run.configure_inference(args)


# ---- distillation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", ["0", "0.0", "-1"])
def test_distillation_on_with_a_non_positive_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match=re.escape(f"--distill_alpha must be > 0 while distillation is on, got "
                                                   f"{float(alpha)}; to train without distillation pass "
                                                   "--use_distillation False")):
        _patch_parse("--distill_alpha", alpha)


def test_distillation_off_is_the_explicit_flag():
    cfg = _patch_parse("--use_distillation", "False", "--distill_alpha", "0")
    assert not cfg.use_distillation and cfg.distill_alpha == 0


def test_a_negative_alpha_is_refused_even_with_distillation_off():
    with pytest.raises(ValueError, match=re.escape("--distill_alpha must be >= 0, got -1.0")):
        _patch_parse("--use_distillation", "False", "--distill_alpha", "-1")


@pytest.mark.parametrize("temperature", ["0", "-2"])
def test_a_non_positive_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match=re.escape(f"--distill_temperature must be > 0, got {float(temperature)}; "
                                                   "to train without distillation pass --use_distillation False")):
        _patch_parse("--distill_temperature", temperature)


def test_the_defaults_distil():
    cfg = _patch_parse()
    assert cfg.use_distillation and cfg.distill_alpha > 0 and cfg.distill_temperature > 0


# ---- max_image_pixels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pixels", ["0", "-1"])
def test_max_image_pixels_must_be_positive(tmp_path, pixels):
    with pytest.raises(ValueError, match=re.escape(f"--max_image_pixels must be > 0, got {pixels}")):
        _llava_parse(tmp_path, "--max_image_pixels", pixels)


def test_max_image_pixels_default_and_value(tmp_path):
    assert _llava_parse(tmp_path)[1].max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS > 0
    assert _llava_parse(tmp_path, "--max_image_pixels", "1000")[1].max_image_pixels == 1000
