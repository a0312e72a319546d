"""DualSpeed training pieces: schedule, distillation loss, the patched compute_loss, isolator files, args."""

import types

import pytest

import torch
import torch.nn.functional as F

import dualspeed_patch
from dualspeed_patch import context, isolator, schedule
from dualspeed_patch import DualSpeedArguments
from dualspeed_patch.distill import answer_logits, kl_divergence
from llava.constants import IGNORE_INDEX
from tests.helpers import make_tiny_llava, two_image_batch


# ---- schedule ----------------------------------------------------------------------------------------------

def test_schedule_is_a_pure_function_with_the_right_rate():
    seq_rank0 = schedule.mode_sequence(seed=42, steps=2000, grad_accum=2, slow_mode_ratio=0.1)
    seq_rank1 = schedule.mode_sequence(seed=42, steps=2000, grad_accum=2, slow_mode_ratio=0.1)
    assert seq_rank0 == seq_rank1  # every rank derives the same modes without communicating
    assert 0.08 < seq_rank0.count("S") / len(seq_rank0) < 0.12
    # A run resumed at step 700 repeats the modes of the uninterrupted run.
    resumed = ["S" if schedule.is_slow(42, s, m, 0.1) else "F" for s in range(700, 2000) for m in range(2)]
    assert resumed == seq_rank0[1400:]
    assert schedule.mode_sequence(7, 50, 1, 0.5) != schedule.mode_sequence(8, 50, 1, 0.5)
    assert set(schedule.mode_sequence(1, 20, 1, 0.0)) == {"F"} and set(schedule.mode_sequence(1, 20, 1, 1.0)) == {"S"}


# ---- distillation loss -------------------------------------------------------------------------------------

def test_kl_matches_a_direct_computation():
    torch.manual_seed(0)
    V, T = 11, 2.0
    s_logits, t_logits = torch.randn(2, 7, V), torch.randn(2, 9, V)
    s_labels = torch.full((2, 7), IGNORE_INDEX)
    t_labels = torch.full((2, 9), IGNORE_INDEX)
    s_labels[0, 3:5], s_labels[1, 6] = torch.tensor([4, 5]), 6  # 3 supervised tokens, same order in both
    t_labels[0, 5:7], t_labels[1, 8] = torch.tensor([4, 5]), 6
    got = kl_divergence(s_logits, t_logits, s_labels, t_labels, temperature=T)
    s_rows = torch.stack([s_logits[0, 2], s_logits[0, 3], s_logits[1, 5]])
    t_rows = torch.stack([t_logits[0, 4], t_logits[0, 5], t_logits[1, 7]])
    p_t = F.softmax(t_rows / T, -1)
    direct = (p_t * (p_t.log() - F.log_softmax(s_rows / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(got, direct)
    torch.testing.assert_close(answer_logits(s_logits, s_labels), s_rows)
    with pytest.raises(RuntimeError, match="answer positions"):
        kl_divergence(s_logits, t_logits, s_labels, torch.full((2, 9), IGNORE_INDEX))


# ---- the patched compute_loss ------------------------------------------------------------------------------

def _trainer(model, tmp_path):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=2)
    return LLaVATrainer(model=model, args=args)


@pytest.fixture
def patched():
    dualspeed_patch.apply("llava")
    yield
    dualspeed_patch.configure(None)
    dualspeed_patch.remove()


def test_slow_step_loss_is_ce_plus_alpha_tau2_kl(vision_path, tmp_path, patched):
    model = make_tiny_llava(vision_path).train()
    isolator.attach(model, 4)
    trainer = _trainer(model, tmp_path)
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=1.0, distill_alpha=0.7,
                                                 distill_temperature=2.0))
    inputs = two_image_batch()
    loss = trainer.compute_loss(model, inputs)

    student = model(**inputs)  # full sequence, outside any context
    with torch.no_grad(), context.mode(context.ModeSpec(context.FAST, "divprune", 0.9, True)):
        teacher = model(**inputs)
        pruned = model.prepare_inputs_labels_for_multimodal(inputs["input_ids"], None, inputs["attention_mask"], None,
                                                            inputs["labels"], inputs["images"])
    full = model.prepare_inputs_labels_for_multimodal(inputs["input_ids"], None, inputs["attention_mask"], None,
                                                      inputs["labels"], inputs["images"])
    kl = kl_divergence(student.logits, teacher.logits, full[5], pruned[5], temperature=2.0)
    torch.testing.assert_close(loss, student.loss + 0.7 * kl)
    assert kl > 0
    loss.backward()  # the student graph reaches the projector
    assert model.get_model().mm_projector[0].weight.grad is not None


def test_fast_step_is_pruned_ce_and_is_logged(vision_path, tmp_path, patched):
    model = make_tiny_llava(vision_path).train()
    isolator.attach(model, 4)
    trainer = _trainer(model, tmp_path)
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.0))
    inputs = two_image_batch()
    loss = trainer.compute_loss(model, inputs)
    with context.mode(context.ModeSpec(context.FAST, "divprune", 0.9, True)):
        direct = model(**inputs).loss
    torch.testing.assert_close(loss, direct)
    trainer.log({"loss": float(loss)})
    logged = trainer.state.log_history[-1]
    assert logged["dualspeed/slow_frac"] == 0.0
    assert logged["dualspeed/visual_kept_frac"] == pytest.approx(57 / 576)
    assert logged["dualspeed/ce"] == pytest.approx(float(loss), rel=1e-5)


def test_eval_mode_and_switched_off_are_untouched(vision_path, tmp_path, patched):
    model = make_tiny_llava(vision_path)
    trainer = _trainer(model, tmp_path)
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.0))
    inputs = two_image_batch()
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, inputs), model(**inputs).loss)
    dualspeed_patch.configure(None)
    model.train()
    torch.testing.assert_close(trainer.compute_loss(model, inputs), model(**inputs).loss)


def test_isolator_moves_to_the_projector_lr_group(vision_path, tmp_path, patched):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer

    model = make_tiny_llava(vision_path).train()
    model.requires_grad_(False)
    iso = isolator.attach(model, 4)
    iso.weight.requires_grad_(False)  # as a frozen-LLM stage leaves it
    for p in model.get_model().mm_projector.parameters():
        p.requires_grad = True
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, mm_projector_lr=1e-5,
                             learning_rate=1e-3)
    optimizer = LLaVATrainer(model=model, args=args).create_optimizer()
    group = next(g for g in optimizer.param_groups if any(p is iso.weight for p in g["params"]))
    assert group["lr"] == 1e-5 and iso.weight.requires_grad


# ---- isolator files ----------------------------------------------------------------------------------------

def test_isolator_save_load_round_trip(vision_path, tmp_path):
    model = make_tiny_llava(vision_path)
    iso = isolator.attach(model, 3)
    path = isolator.save(model, str(tmp_path))
    assert path.endswith("mode_isolator.bin")
    state = torch.load(path, weights_only=True)
    assert list(state) == ["weight"] and state["weight"].shape == (3, 32)
    other = make_tiny_llava(vision_path)
    assert isolator.load(other, path)
    torch.testing.assert_close(isolator.get(other).weight, iso.weight)
    assert not isolator.load(other, str(tmp_path / "absent.bin"))
    assert isolator.sibling_path("/x/mm_projector/run/mm_projector.bin") == "/x/mm_projector/run/mode_isolator.bin"


# ---- arguments and apply -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"pruning_ratio": 1.0}, "pruning_ratio"), ({"pruning_ratio": -0.1}, "pruning_ratio"),
    ({"slow_mode_ratio": 1.5}, "slow_mode_ratio"), ({"isolator_len": -1}, "isolator_len"),
    ({"distill_temperature": 0.0}, "distill_temperature"), ({"vtp_method": "nope"}, "nope"),
    ({"pretrain_mode": "x"}, "pretrain_mode")])
def test_bad_arguments_are_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        DualSpeedArguments(**kw)


def test_split_args_keeps_the_forks_flags():
    from dualspeed_patch.train import split_args

    ds, rest = split_args(["--dualspeed", "True", "--model_name_or_path", "x", "--pruning_ratio", "0.8",
                           "--lora_enable", "True"])
    assert ds.dualspeed and ds.pruning_ratio == 0.8
    assert rest == ["--model_name_or_path", "x", "--lora_enable", "True"]


def test_apply_refuses_a_package_without_the_llava_interface(tmp_path, monkeypatch):
    pkg = tmp_path / "notllava"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "llava_arch.py").write_text("class LlavaMetaModel:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="LlavaMetaForCausalLM"):
        dualspeed_patch.apply("notllava")
    assert not dualspeed_patch.is_applied()


def test_slow_step_teacher_does_not_need_the_forks_forward(vision_path, tmp_path, patched):
    """A LLaVA-1.1-style forward re-runs the merge on every call and refuses embeddings without images; the
    slow step's teacher goes through the transformers LM class instead, and the loss is the same."""
    model = make_tiny_llava(vision_path).train()
    isolator.attach(model, 4)
    inputs = two_image_batch()
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=1.0))
    expected = _trainer(model, tmp_path).compute_loss(model, inputs)

    own_forward = type(model).forward

    def llava_11_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, images=None,
                         **kwargs):
        if input_ids is None and images is None:
            raise ValueError("You have to specify either decoder_input_ids or decoder_inputs_embeds")
        return own_forward(self, input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           labels=labels, images=images, **kwargs)

    model.forward = types.MethodType(llava_11_forward, model)
    with pytest.raises(ValueError, match="decoder_inputs_embeds"):  # what the teacher call used to hit
        model(inputs_embeds=torch.zeros(1, 3, model.config.hidden_size))
    got = _trainer(model, tmp_path / "b").compute_loss(model, inputs)
    torch.testing.assert_close(got, expected)
    assert model.forward.__func__ is llava_11_forward  # the fork's forward is back after the step
