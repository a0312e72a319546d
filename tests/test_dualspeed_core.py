"""The core's shape: one config, one patch table that remove() undoes completely, plug-ins that declare signals
(selection and merging), and the public fast/slow steps."""
import math

import pytest
import torch

import dualspeed_patch
from dualspeed_patch import context, hooks, install, isolator, pruners, run
from dualspeed_patch.config import DualSpeedConfig, default
from dualspeed_patch.pruners import budget
from llava.constants import IMAGE_TOKEN_INDEX
from tests.helpers import make_tiny_llava, two_image_batch

K = budget(576, 0.9)
L = 4


@pytest.fixture
def clean():
    yield
    dualspeed_patch.remove()
    for name in ("mine_cls", "mine_pool", "mine_bad"):
        if name in pruners.available():
            pruners.unregister(name)


def _targets():
    """(owner, attr) -> what owner.__dict__ holds, for every target of the table."""
    import importlib

    out = {}
    for t in install.PATCH_TABLE:
        module = importlib.import_module(f"llava.{t.module}")
        owner = module if t.owner is None else getattr(module, t.owner)
        owners = [owner] + ([c for c in install._subclasses(owner) if t.attr in vars(c)] if t.subclasses else [])
        for o in owners:
            out[(o, t.attr)] = vars(o).get(t.attr, "<inherited>")
    return out


def test_remove_undoes_every_patch_of_the_table_and_clears_configuration(clean):
    import llava.model.builder as builder

    before = _targets()
    loader = builder.load_pretrained_model
    cfg = DualSpeedConfig(dualspeed=True)
    inst = dualspeed_patch.apply("llava", config=cfg)
    assert inst.config is cfg and dualspeed_patch.installation("llava") is inst
    assert builder.load_pretrained_model is not loader  # the loader is in the table
    assert {"LLaVATrainer.compute_loss", "LLaVATrainer.__init__", "llava.model.builder.load_pretrained_model",
            "LlavaMetaModel.initialize_vision_modules"} <= set(inst.patched)
    inst.set_inference(context.ModeSpec(context.FAST))
    assert dualspeed_patch.apply("llava") is inst  # idempotent: nothing wrapped twice
    assert len(inst.patched) == len(set(inst.patched))

    dualspeed_patch.remove()
    assert _targets() == before
    assert builder.load_pretrained_model is loader
    assert not dualspeed_patch.is_applied() and dualspeed_patch.installation("llava") is None
    assert inst.config is None and inst.inference_spec is None and inst.patched == []


def test_inference_only_installation_leaves_the_trainer_alone(clean):
    from llava.train.llava_trainer import LLaVATrainer

    compute_loss = vars(LLaVATrainer).get("compute_loss")
    inst = dualspeed_patch.apply("llava", training=False)
    assert vars(LLaVATrainer).get("compute_loss") is compute_loss
    assert not any(p.startswith("LLaVATrainer") for p in inst.patched)


@pytest.mark.parametrize("kw", [{"distill_alpha": math.nan}, {"distill_alpha": math.inf},
                                {"distill_temperature": math.nan}, {"distill_temperature": math.inf},
                                {"pruning_ratio": math.nan}, {"slow_mode_ratio": math.nan}])
def test_non_finite_options_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        DualSpeedConfig(**kw)


def test_mode_spec_and_runner_take_their_defaults_from_the_config():
    spec = context.ModeSpec(context.FAST)
    assert (spec.method, spec.pruning_ratio, spec.isolator) == (default("vtp_method"), default("pruning_ratio"),
                                                              default("use_isolator"))
    cfg = DualSpeedConfig(vtp_method="cdpruner", pruning_ratio=0.75, use_isolator=False)
    spec = context.ModeSpec.from_config(cfg, context.SLOW, seed=3)
    assert (spec.mode, spec.method, spec.pruning_ratio, spec.isolator, spec.seed) == ("slow", "cdpruner", 0.75,
                                                                                     False, 3)
    args = run.build_parser().parse_args(["llava.eval.run_llava"])
    assert (args.vtp_method, args.pruning_ratio) == (default("vtp_method"), default("pruning_ratio"))
    for bad in (["--pruning_ratio", "1.0"], ["--pruning_ratio", "nan"], ["--vtp_method", "nope"]):
        with pytest.raises(SystemExit, match="pruning_ratio|vtp_method"):
            run.configure_inference(run.build_parser().parse_args(["--pruned", *bad, "llava.eval.run_llava"]))
    with pytest.raises(ValueError, match="mode"):
        context.ModeSpec("medium")


def test_a_user_selection_plugin_gets_the_signals_it_declares(vision_path, clean):
    received = {}

    @pruners.register("mine_cls", signals=("cls_attention",))
    def by_cls(features, k, **signals):
        received.update(signals)
        return signals["cls_attention"].topk(k, dim=1).indices.sort(dim=1).values

    dualspeed_patch.apply("llava")
    model = make_tiny_llava(vision_path)
    isolator.attach(model, L)
    inputs = two_image_batch()
    args = (inputs["input_ids"], None, inputs["attention_mask"], None, inputs["labels"], inputs["images"])
    with torch.no_grad(), context.mode(context.ModeSpec(context.FAST, "mine_cls", 0.9, True)):
        mine = model.prepare_inputs_labels_for_multimodal(*args)
    assert set(received) == {"cls_attention"} and received["cls_attention"].shape == (2, 576)
    # The same signal fastervlm gets (top-k CLS attention): the two plug-ins agree token for token.
    with torch.no_grad(), context.mode(context.ModeSpec(context.FAST, "fastervlm", 0.9, True)):
        ref = model.prepare_inputs_labels_for_multimodal(*args)
    torch.testing.assert_close(mine[4], ref[4])


def test_a_user_merging_plugin_trains_a_fast_step_and_generates(vision_path, clean):
    @pruners.register("mine_pool", kind="merge")
    def avg_pool(features, k, **signals):
        assert not signals  # it declared none
        return torch.nn.functional.adaptive_avg_pool1d(features.transpose(1, 2), k).transpose(1, 2)

    dualspeed_patch.apply("llava")
    model = make_tiny_llava(vision_path).train()
    isolator.attach(model, L)
    inputs = two_image_batch()
    seen = []
    hook = model.get_model().layers[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    result = dualspeed_patch.fast_step(model, inputs, context.ModeSpec(context.FAST, "mine_pool", 0.9, True))
    hook.remove()
    assert seen == [5 + L + K] and result.state.visual_kept == 2 * K and result.state.visual_total == 2 * 576
    assert torch.isfinite(result.loss)
    result.loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0  # through the pooled tokens
    assert isolator.get(model).weight.grad.abs().sum() > 0

    model.eval()
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6]])
    image = inputs["images"][:1]
    with torch.no_grad(), dualspeed_patch.pruned_inference("mine_pool", 0.9):
        out = model.generate(ids, images=image, max_new_tokens=3, do_sample=False)
        _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image)
    assert embeds.shape[1] == 3 + L + K
    pooled = model.encode_images(image) if hasattr(model, "encode_images") else None
    if pooled is not None:  # the reduced span is the pooled projector output
        expected = torch.nn.functional.adaptive_avg_pool1d(pooled.transpose(1, 2), K).transpose(1, 2)[0]
        torch.testing.assert_close(embeds[0, 2 + L:2 + L + K], expected)
    assert out.shape[1] >= 1


def test_plugin_outputs_and_declarations_are_checked(vision_path, clean):
    with pytest.raises(ValueError, match="unknown signals"):
        pruners.register("mine_bad", lambda f, k, **s: None, signals=("telepathy",))
    with pytest.raises(ValueError, match="kind"):
        pruners.register("mine_bad", lambda f, k, **s: None, kind="prune")
    pruners.register("mine_bad", lambda f, k, **s: torch.zeros(f.shape[0], k + 1, dtype=torch.long))
    dualspeed_patch.apply("llava")
    model = make_tiny_llava(vision_path)
    isolator.attach(model, L)
    inputs = two_image_batch()
    with pytest.raises(ValueError, match="mine_bad.*indices"), torch.no_grad(), \
            context.mode(context.ModeSpec(context.FAST, "mine_bad", 0.9, True)):
        model.prepare_inputs_labels_for_multimodal(inputs["input_ids"], None, inputs["attention_mask"], None,
                                                   inputs["labels"], inputs["images"])


def test_slow_step_is_ce_plus_distillation_and_returns_its_parts(vision_path, clean):
    dualspeed_patch.apply("llava")
    model = make_tiny_llava(vision_path).train()
    isolator.attach(model, L)
    cfg = DualSpeedConfig(dualspeed=True, distill_alpha=0.5, distill_temperature=2.0)
    result = dualspeed_patch.slow_step(model, two_image_batch(), context.ModeSpec.from_config(cfg, context.SLOW), cfg)
    assert result.mode == "slow" and result.kl is not None and result.kl > 0
    torch.testing.assert_close(result.loss.detach(), result.ce + 0.5 * result.kl)
    assert result.state.teacher.inputs_embeds.shape[1] == 5 + L + K and not result.state.teacher.labels.requires_grad


def test_the_isolator_is_saved_into_each_checkpoint_by_the_callback(vision_path, tmp_path, clean):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer

    dualspeed_patch.apply("llava", config=DualSpeedConfig(dualspeed=True))
    model = make_tiny_llava(vision_path)
    isolator.attach(model, L)
    trainer = LLaVATrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                                               use_cpu=True, disable_tqdm=True))
    assert any(isinstance(c, hooks.IsolatorSaver) for c in trainer.callback_handler.callbacks)
    trainer.state.global_step = 3
    trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)
    saved = torch.load(tmp_path / "checkpoint-3" / "mode_isolator.bin", weights_only=True)["weight"]
    torch.testing.assert_close(saved, isolator.get(model).weight.detach())
    trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    assert (tmp_path / "mode_isolator.bin").is_file()
    dualspeed_patch.configure(None)  # switched off: the callback writes nothing
    (tmp_path / "mode_isolator.bin").unlink()
    trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    assert not (tmp_path / "mode_isolator.bin").exists()


def test_the_readme_plugin_example_registers_and_runs(vision_path, clean):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if '@register("topcls"' in b)
    try:
        exec(compile(block, "README.md", "exec"), {})
        assert {"topcls", "avgpool"} <= set(pruners.available())
        assert pruners.get_reducer("topcls").signals == ("cls_attention",)
        assert pruners.get_reducer("avgpool").kind == "merge"
        dualspeed_patch.apply("llava")
        model = make_tiny_llava(vision_path)
        isolator.attach(model, L)
        inputs = two_image_batch()
        for name in ("topcls", "avgpool"):
            with torch.no_grad(), context.mode(context.ModeSpec(context.FAST, name, 0.9, True)):
                out = model.prepare_inputs_labels_for_multimodal(inputs["input_ids"], None, inputs["attention_mask"],
                                                                 None, inputs["labels"], inputs["images"])
            assert out[4].shape[1] == 5 + L + K
    finally:
        for name in ("topcls", "avgpool"):
            if name in pruners.available():
                pruners.unregister(name)
