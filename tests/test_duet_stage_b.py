"""DUET-VLM stage B (`--duet_stage_b`): text-guided dropping of visual tokens between decoder layers.

Checked against what the method must equal: the unreduced model when nothing is dropped, attention weights of an
eager pass for the ranking, generation by full recompute for the KV cache, the other padding side for the
batch layout; plus the configured counts, gradients, the fallbacks and the errors."""
import types

import pytest
import torch

import dualspeed_patch
from dualspeed_patch import context, decoder_loop, isolator, layer_drop
from dualspeed_patch.config import DualSpeedConfig
from dualspeed_patch.layer_drop import LayerDropSpec
from dualspeed_patch.step import fast_step, slow_step
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

DEPTH = 4


def make_model(vision_path, depth=DEPTH, attn="sdpa", cls_name="LlavaLlamaForCausalLM", **config):
    import llava.model as models

    torch.manual_seed(0)
    config_cls = models.LlavaMistralConfig if "Mistral" in cls_name else models.LlavaConfig
    cfg = config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=depth,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **config)
    cfg._attn_implementation = attn
    model = getattr(models, cls_name)(cfg).eval()
    args = types.SimpleNamespace(vision_tower=vision_path, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    return model


@pytest.fixture
def patched():
    dualspeed_patch.apply("llava")
    yield
    dualspeed_patch.remove()


@pytest.fixture(scope="module")
def model(vision_path):
    return make_model(vision_path)


def batch(side="right", answers=True):
    """Three samples: image + instruction + answer, a shorter one (padded), and a text-only one."""
    rows = [[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, IMAGE_TOKEN_INDEX, 9, 10, 11], [1, 12, 13, 14]]
    n_prompt = [5, 3, 3]  # tokens up to and including the last instruction token
    L = max(map(len, rows))
    ids = torch.zeros((3, L), dtype=torch.long)
    labels = torch.full((3, L), IGNORE_INDEX)
    for i, (row, n) in enumerate(zip(rows, n_prompt)):
        sl = slice(L - len(row), L) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.tensor(row)
        lab = torch.tensor(row)
        lab[:n] = IGNORE_INDEX
        labels[i, sl] = lab
    torch.manual_seed(1)
    images = torch.randn(2, 3, 336, 336)
    out = dict(input_ids=ids, attention_mask=ids != 0, images=images, image_counts=torch.tensor([1, 1, 0]))
    if answers:
        out["labels"] = labels
    return out


def set_side(model, side):
    model.config.tokenizer_padding_side = side


def per_sample(logits, mask):
    """The logits of each sample's real tokens, in order (padding side removed)."""
    return [logits[i][mask[i]] for i in range(logits.shape[0])]


# ------------------------------------------------------------------------------------------- equivalences

@pytest.mark.parametrize("side", ["right", "left"])
def test_nothing_dropped_equals_the_unreduced_model(model, patched, side):
    set_side(model, side)
    b = batch(side)
    with torch.no_grad():
        with context.pruned_inference("uniform", 0.5, False) as ref_state:
            ref = model(**b)
        with context.pruned_inference("uniform", 0.5, False, stage_b=LayerDropSpec((1, 3), (1.0, 1.0))) as state:
            out = model(**b)
    assert state.layer_drop.counts[1].tolist() == [288, 288, 0]
    valid = state.layer_drop.tokens.valid
    torch.testing.assert_close(out.logits[valid], ref.logits[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)
    assert ref_state.visual_kept == state.visual_kept


def test_left_and_right_padding_give_the_same_samples(model, patched):
    results = {}
    for side in ("right", "left"):
        set_side(model, side)
        b = batch(side)
        with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True) as state:
            out = model(**b)
        results[side] = (per_sample(out.logits, state.layer_drop.tokens.valid), out.loss,
                         {k: v.tolist() for k, v in state.layer_drop.counts.items()})
    set_side(model, "right")
    for a, b_ in zip(results["right"][0], results["left"][0]):
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-5)
    torch.testing.assert_close(results["right"][1], results["left"][1], rtol=0, atol=1e-6)
    assert results["right"][2] == results["left"][2] == {2: [144, 144, 0], 3: [0, 0, 0]}


def test_scores_rank_like_eager_attention_weights(vision_path, patched):
    """The explicit query-row scores equal the mean attention an eager pass of the next layer gives the same
    rows (so they rank alike), with the decoder itself on SDPA."""
    eager = make_model(vision_path, attn="eager")
    b = batch()
    layer = 2
    captured = {}

    def keep_input(module, args, kwargs):
        captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
        captured["pos"] = kwargs["position_ids"]

    handle = eager.get_model().layers[layer].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.no_grad(), context.pruned_inference("uniform", 0.5, False) as state:
            out = eager(**b, output_attentions=True)
    finally:
        handle.remove()
    attn = out.attentions[layer].float()                     # [B, H, L, L]
    assert state.layer_drop is None  # no stage B in that pass
    # The plan of the same merged batch (the merge is deterministic), taken from the merge alone.
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True) as state:
        eager.prepare_inputs_labels_for_multimodal(b["input_ids"], None, b["attention_mask"], None, b["labels"],
                                                   b["images"], image_counts=b["image_counts"])
    plan = state.layer_drop
    decoder_loop.set_plan(eager.get_model(), None)
    tokens = plan.tokens
    assert tokens.valid.shape == attn.shape[::3]
    rope = eager.get_model().rotary_emb(captured["hidden"], position_ids=captured["pos"])
    scores = layer_drop.text_to_visual_scores(eager.get_model().layers[layer], captured["hidden"], rope, tokens)
    expected = torch.zeros_like(scores)
    for i in range(scores.shape[0]):
        rows = tokens.query[i].nonzero().flatten()
        expected[i] = attn[i, :, rows].mean(0).mean(0)
    expected = torch.where(tokens.visual, expected, torch.zeros_like(expected))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
    assert float(scores[:2].sum()) > 0


# ------------------------------------------------------------------------------------------- counts

def test_duet_default_counts_307_153_0(vision_path, patched):
    """Stage A at DUET-LLaVA's 300 + 7, then the default schedule: 307 / 153 / 0 visual tokens."""
    model = make_model(vision_path, depth=8)
    b = batch()
    with torch.no_grad(), context.pruned_inference("duet", isolator=False, dominant=300, contextual=7,
                                                   stage_b=True) as state:
        model(**b)
    plan = state.layer_drop
    assert plan.n0.tolist() == [307, 307, 0]
    assert {k: v.tolist() for k, v in plan.counts.items()} == {4: [153, 153, 0], 6: [0, 0, 0]}


def test_layers_beyond_the_depth_are_refused(model, patched):
    with context.pruned_inference("uniform", 0.5, False, stage_b=LayerDropSpec((2, 4), (0.5, 0.0))), \
            pytest.raises(ValueError, match="layer 4 is beyond this LLM's 4 decoder layers"):
        model(**batch())


def test_default_layers_scale_with_depth():
    assert LayerDropSpec().resolve(32) == (16, 24)
    assert LayerDropSpec().resolve(40) == (20, 30)
    assert LayerDropSpec().resolve(4) == (2, 3)
    with pytest.raises(ValueError, match="give --duet_stage_b_layers"):
        LayerDropSpec().resolve(2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(duet_stage_b_layers="16,24"), "add --duet_stage_b True"),
    (dict(duet_stage_b=True, duet_stage_b_ratios="0.5,0.7"), "must not increase"),
    (dict(duet_stage_b=True, duet_stage_b_ratios="1.5,0.0"), r"in \[0, 1\]"),
    (dict(duet_stage_b=True, duet_stage_b_layers="16", duet_stage_b_ratios="0.5,0.0"), "same length"),
    (dict(duet_stage_b=True, duet_stage_b_layers="24,16"), "strictly increasing"),
    (dict(duet_stage_b=True, duet_stage_b_layers="0,16"), "strictly increasing and >= 1"),
    (dict(duet_stage_b=True, duet_stage_b_layers="a,b"), "comma-separated"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DualSpeedConfig(**kwargs)


def test_config_builds_the_spec():
    cfg = DualSpeedConfig(dualspeed=True, vtp_method="duet", duet_stage_b=True, duet_stage_b_layers="8;12",
                          duet_stage_b_ratios="0.5, 0.25")
    spec = context.ModeSpec.from_config(cfg, context.FAST)
    assert spec.stage_b == LayerDropSpec((8, 12), (0.5, 0.25))
    assert context.ModeSpec.from_config(DualSpeedConfig(), context.FAST).stage_b is None


# ------------------------------------------------------------------------------------------- queries

def test_query_rule_and_fallbacks():
    """Training: the IGNORE-labelled text after the first visual token; caption data (answer right after the
    image): the text before it; nothing else: the last visual token."""
    valid = torch.ones(3, 6, dtype=torch.bool)
    visual = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]).bool()
    labels = torch.tensor([[-100, -100, -100, -100, 7, 8],    # instruction at 3, answer 4..5
                           [-100, -100, -100, 5, 6, 7],       # caption right after the image
                           [-100, -100, -100, 5, 6, 7]])      # no prompt text at all
    plan = layer_drop.build_plan(LayerDropSpec(), torch.zeros(3, 6, 2), labels, valid, visual, "right")
    assert plan.tokens.query.int().tolist() == [[0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    at_inference = layer_drop.build_plan(LayerDropSpec(), torch.zeros(3, 6, 2), None, valid, visual, "right")
    assert at_inference.tokens.query[0].int().tolist() == [0, 0, 0, 1, 1, 1]


def test_caption_batch_trains_without_nan(model, patched):
    b = batch()
    b["labels"] = torch.where(b["attention_mask"], b["input_ids"], torch.full_like(b["input_ids"], IGNORE_INDEX))
    b["labels"][b["input_ids"] == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    b["labels"][:, 0] = IGNORE_INDEX
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True) as state:
        out = model(**b)
    assert torch.isfinite(out.loss)
    assert state.layer_drop.counts[2].tolist() == [144, 144, 0]


# ------------------------------------------------------------------------------------------- generation

@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("spec", [True, LayerDropSpec((1, 3), (0.3, 0.1))], ids=["default", "custom"])
def test_kv_cache_generation_equals_full_recompute(model, patched, side, spec):
    """Greedy generation (drop at prefill, per-stage caches) equals recomputing the whole sequence each step
    with the same schedule, the generated tokens marked as answers so they never become queries."""
    set_side(model, side)
    b = batch(side, answers=False)
    ids, mask, steps = b["input_ids"][:2], b["attention_mask"][:2], 5
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=spec):
        generated = model.generate(ids, images=b["images"], attention_mask=mask, max_new_tokens=steps,
                                   do_sample=False, pad_token_id=0)
    for i in range(2):
        seq = ids[i:i + 1][mask[i:i + 1]].unsqueeze(0)
        n = seq.shape[1]
        for _ in range(steps):
            labels = torch.full_like(seq, IGNORE_INDEX)
            labels[:, n:] = seq[:, n:]
            with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=spec):
                logits = model(input_ids=seq, images=b["images"][i:i + 1], labels=labels).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert generated[i].tolist() == seq[0, n:].tolist(), (side, i)
    set_side(model, "right")


def test_a_cache_from_a_stage_b_prefill_is_not_reused_for_another(model, patched):
    from transformers.cache_utils import DynamicCache

    b = batch()
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True):
        model(**b, use_cache=True, past_key_values=cache)
        with pytest.raises(RuntimeError, match="fresh cache"):
            model(**b, use_cache=True, past_key_values=cache)


def test_output_hidden_states_is_refused(model, patched):
    with context.pruned_inference("uniform", 0.5, False, stage_b=True), \
            pytest.raises(ValueError, match="output_hidden_states is not supported"):
        model(**batch(), output_hidden_states=True)


# ------------------------------------------------------------------------------------------- training

def lora_model(vision_path):
    from peft import LoraConfig, get_peft_model

    model = make_model(vision_path)
    isolator.attach(model, 4)
    model.train()
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))


def _grads(model):
    names = {"projector": "mm_projector", "isolator": "mode_isolator", "lora": "lora_"}
    found = {key: 0.0 for key in names}
    for name, p in model.named_parameters():
        for key, part in names.items():
            if part in name and p.grad is not None:
                found[key] += float(p.grad.abs().sum())
    return found


def _fast_step_grads(vision_path, checkpointing):
    model = lora_model(vision_path)
    for name, p in model.named_parameters():
        if "mm_projector" in name or "mode_isolator" in name:  # trainable in a DualSpeed LoRA run
            p.requires_grad_(True)
    if checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = DualSpeedConfig(dualspeed=True, vtp_method="uniform", pruning_ratio=0.5, duet_stage_b=True)
    result = fast_step(model, batch(), context.ModeSpec.from_config(cfg, context.FAST))
    result.loss.backward()
    grads = _grads(model)
    assert result.state.layer_drop.counts[2].tolist() == [144, 144, 0]
    return result.loss.detach(), grads


def test_fast_step_gradients_reach_projector_isolator_and_lora(vision_path, patched):
    _, grads = _fast_step_grads(vision_path, checkpointing=False)
    assert all(v > 0 for v in grads.values()), grads


def test_gradient_checkpointing_gives_the_same_step(vision_path, patched):
    plain = _fast_step_grads(vision_path, False)
    ckpt = _fast_step_grads(vision_path, True)
    torch.testing.assert_close(plain[0], ckpt[0])
    for key in plain[1]:
        assert plain[1][key] == pytest.approx(ckpt[1][key], rel=1e-4)


def test_slow_step_teacher_drops_in_the_decoder(vision_path, patched):
    model = lora_model(vision_path)
    cfg = DualSpeedConfig(dualspeed=True, vtp_method="uniform", pruning_ratio=0.5, duet_stage_b=True)
    result = slow_step(model, batch(), context.ModeSpec.from_config(cfg, context.SLOW), cfg)
    teacher_plan = result.state.teacher.layer_drop
    assert teacher_plan is not None and teacher_plan.counts[2].tolist() == [144, 144, 0]
    assert torch.isfinite(result.loss) and result.kl is not None
    result.loss.backward()
    assert decoder_loop.pending_plan(model.get_base_model().get_model()) is None


def test_mistral_class(vision_path, patched):
    model = make_model(vision_path, cls_name="LlavaMistralForCausalLM", sliding_window=None)
    b = batch()
    with torch.no_grad():
        with context.pruned_inference("uniform", 0.5, False) as ref_state:
            ref = model(**b)
        with context.pruned_inference("uniform", 0.5, False, stage_b=LayerDropSpec((1, 3), (1.0, 1.0))) as state:
            same = model(**b)
        with context.pruned_inference("uniform", 0.5, False, stage_b=True) as state2:
            model(**b)
    valid = state.layer_drop.tokens.valid
    torch.testing.assert_close(same.logits[valid], ref.logits[valid], rtol=0, atol=1e-5)
    assert state2.layer_drop.counts[3].tolist() == [0, 0, 0]


def test_remove_takes_the_decoder_forward_back(vision_path):
    from llava.model.llava_arch import LlavaMetaModel

    assert "forward" not in vars(LlavaMetaModel)
    dualspeed_patch.apply("llava")
    assert getattr(vars(LlavaMetaModel)["forward"], "__dualspeed_layer_drop__", False)
    dualspeed_patch.remove()
    assert "forward" not in vars(LlavaMetaModel)


# ------------------------------------------------------------------------------------------- the user's route

@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dualspeed", "duet_alone"])
def test_finetune_lora_with_both_stages_then_pruned_inference(tiny_assets, tmp_path, recipe):
    """DUET as DualSpeed's fast mode (fast steps A+B with the isolator, slow steps full with a teacher that drops
    too), and DUET alone (A+B on every step, no isolator): finetune_lora.sh, then pruned inference with both
    stages through the runner."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import BIN, ROOT, run_script

    pretrain = tmp_path / "pretrain"
    run_script("pretrain.sh", tiny_assets, pretrain, extra=["--max_steps", "1"])
    out = tmp_path / f"llava-tiny-lora-{recipe}"
    stage_b = ["--duet_stage_b", "True", "--duet_stage_b_layers", "1", "--duet_stage_b_ratios", "0.5"]
    recipe_flags = (["--slow_mode_ratio", "0.5"] if recipe == "dualspeed"
                    else ["--slow_mode_ratio", "0", "--use_isolator", "False"])
    proc = run_script("finetune_lora.sh", tiny_assets, out, DUALSPEED="1",
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain / "mm_projector.bin"),
                      extra=["--vtp_method", "duet", *stage_b, *recipe_flags, "--max_steps", "4",
                             "--logging_steps", "1"])
    log = proc.stdout + proc.stderr
    assert "'dualspeed/visual_layer_avg_frac'" in log
    assert ("'dualspeed/kl'" in log) == (recipe == "dualspeed")
    with open(tiny_assets["finetune_data"]) as f:
        image = next(os.path.join(tiny_assets["image_folder"], r["image"]) for r in json.load(f) if "image" in r)
    question = tmp_path / "q.jsonl"
    question.write_text(json.dumps({"question_id": 1, "image": os.path.basename(image), "text": "Color?"}) + "\n")
    answers = tmp_path / "answers.jsonl"
    isolator_flags = [] if recipe == "dualspeed" else ["--no_isolator"]
    cmd = [sys.executable, "-m", "dualspeed_patch.run", "--pruned", "--vtp_method", "duet", "--pruning_ratio", "0.9",
           *isolator_flags, *[f for f in stage_b if f != "True"], "llava.eval.model_vqa_loader", "--model-path",
           str(out), "--model-base", tiny_assets["model"], "--image-folder", os.path.dirname(image),
           "--question-file", str(question), "--answers-file", str(answers), "--conv-mode", "vicuna_v1",
           "--temperature", "0", "--max_new_tokens", "3", "--num-workers", "0", "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DUET stage B LayerDropSpec(layers=(1,), ratios=(0.5,))" in run.stderr
    assert json.loads(answers.read_text())["question_id"] == 1


def test_runner_refuses_stage_b_without_pruned():
    from dualspeed_patch.run import build_parser, configure_inference

    args = build_parser().parse_args(["--duet_stage_b", "llava.eval.run_llava"])
    with pytest.raises(SystemExit, match="--duet_stage_b given without --pruned"):
        configure_inference(args)


def test_bf16_forward(vision_path, patched):
    """bf16 weights: the forward with stage B runs in bf16 (the ranking casts to fp32 after the projections),
    with a finite loss and the configured counts."""
    model = make_model(vision_path).to(torch.bfloat16)
    b = batch()
    b["images"] = b["images"].to(torch.bfloat16)
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True) as state:
        out = model(**b)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert state.layer_drop.counts[2].tolist() == [144, 144, 0]


def _llava_qwen2(vision_path, **config):
    """A LLaVA-on-Qwen2 class as LLaVA-NeXT-style forks define one (our llava/ ships Llama and Mistral)."""
    from torch import nn
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model
    from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

    from llava.model.config import LlavaConfigMixin
    from llava.model.language_model.generation import LlavaGenerationMixin
    from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel

    class LlavaQwen2Config(LlavaConfigMixin, Qwen2Config):
        model_type = "llava_qwen2_stage_b_test"

    class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
        config_class = LlavaQwen2Config

    class LlavaQwen2ForCausalLM(LlavaGenerationMixin, Qwen2ForCausalLM, LlavaMetaForCausalLM):
        config_class = LlavaQwen2Config

        def __init__(self, cfg):
            Qwen2PreTrainedModel.__init__(self, cfg)
            self.model = LlavaQwen2Model(cfg)
            self.vocab_size = cfg.vocab_size
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            self.post_init()

    torch.manual_seed(0)
    cfg = LlavaQwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=DEPTH,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **config)
    cfg._attn_implementation = "sdpa"
    model = LlavaQwen2ForCausalLM(cfg).eval()
    args = types.SimpleNamespace(vision_tower=vision_path, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    return model


@pytest.mark.parametrize("sliding", [False, True], ids=["full", "sliding-window-layers"])
def test_qwen2_class(vision_path, patched, sliding):
    """A Qwen2 decoder (q/k/v biases; with sliding, half its layers use a 64-token window, shorter than the
    sequence, so the windowed masks and sliding caches are exercised): nothing dropped equals the unreduced
    model, and KV-cache generation equals recompute."""
    extra = dict(use_sliding_window=True, sliding_window=64, max_window_layers=2) if sliding else {}
    model = _llava_qwen2(vision_path, **extra)
    if sliding:
        assert "sliding_attention" in model.config.layer_types
    b = batch()
    with torch.no_grad():
        with context.pruned_inference("uniform", 0.5, False):
            ref = model(**b)
        with context.pruned_inference("uniform", 0.5, False, stage_b=LayerDropSpec((1, 3), (1.0, 1.0))) as state:
            same = model(**b)
    valid = state.layer_drop.tokens.valid
    torch.testing.assert_close(same.logits[valid], ref.logits[valid], rtol=0, atol=1e-5)
    ids, mask = b["input_ids"][:1], b["attention_mask"][:1]
    with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True):
        generated = model.generate(ids, images=b["images"][:1], attention_mask=mask, max_new_tokens=4,
                                   do_sample=False, pad_token_id=0)
    seq, n = ids, ids.shape[1]
    for _ in range(4):
        labels = torch.full_like(seq, IGNORE_INDEX)
        labels[:, n:] = seq[:, n:]
        with torch.no_grad(), context.pruned_inference("uniform", 0.5, False, stage_b=True):
            logits = model(input_ids=seq, images=b["images"][:1], labels=labels).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert generated[0].tolist() == seq[0, n:].tolist()
