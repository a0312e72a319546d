"""The DualSpeed wrapper of prepare_inputs_labels_for_multimodal on our llava/."""
import pytest
import torch

import dualspeed_patch
from dualspeed_patch import context, isolator
from dualspeed_patch.pruners import budget, get_pruner
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.helpers import make_tiny_llava

K = budget(576, 0.9)  # 57
L = 4


@pytest.fixture(autouse=True)
def patched():
    dualspeed_patch.apply("llava")
    yield
    dualspeed_patch.remove()


def model_with_isolator(vision_path, **kw):
    model = make_tiny_llava(vision_path, **kw)
    isolator.attach(model, L)
    return model


def batch(pad_side="right"):
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8], [1, IMAGE_TOKEN_INDEX, 9, 10, 0, 0],
                        [1, 11, 12, 13, 14, 0]])
    mask = ids != 0
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    labels[labels == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    labels[~mask] = IGNORE_INDEX
    return ids, mask, labels, torch.randn(3, 3, 336, 336)  # third image: the text-only sample's dummy


def merge(model, spec, ids, mask, labels, images, **kw):
    with context.mode(spec) as state:
        out = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images, **kw)
    return out, state


def fast(method="divprune", iso=True, ratio=0.9):
    return context.ModeSpec(context.FAST, method, ratio, iso)


def text_labels(labels, mask):
    return [row[m & (row != IGNORE_INDEX)].tolist() for row, m in zip(labels, mask.bool())]


def test_outside_any_context_the_merge_is_the_forks_own(vision_path):
    model = model_with_isolator(vision_path)
    ids, mask, labels, images = batch()
    original = model.prepare_inputs_labels_for_multimodal.__func__.__dualspeed_original__
    expected = original(model, ids, None, mask, None, labels, images)
    got = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    torch.testing.assert_close(got[4], expected[4])
    assert torch.equal(got[5], expected[5])


@pytest.mark.parametrize("side", ["right", "left"])
def test_fast_mode_prunes_inserts_isolator_and_keeps_text(vision_path, side):
    model = model_with_isolator(vision_path, tokenizer_padding_side=side)
    ids, mask, labels, images = batch()
    full = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    (_, _, new_mask, _, embeds, new_labels), state = merge(model, fast(), ids, mask, labels, images)
    lengths = new_mask.sum(1).tolist()
    assert lengths == [5 + L + K, 3 + L + K, 5]  # text + isolator + kept tokens; text-only sample unchanged
    assert state.visual_total == 2 * 576 and state.visual_kept == 2 * K
    assert text_labels(new_labels, new_mask) == text_labels(full[5], full[2])
    with torch.no_grad():
        feats = model.encode_images(images)
    idx = get_pruner("divprune")(feats[:2], K)
    row = 0
    start = int(torch.nonzero(new_mask[row])[0])
    iso_weight = isolator.get(model).weight
    torch.testing.assert_close(embeds[row, start + 2:start + 2 + L], iso_weight)
    torch.testing.assert_close(embeds[row, start + 2 + L:start + 2 + L + K], feats[0, idx[0]])
    assert (new_labels[row, start + 2:start + 2 + L + K] == IGNORE_INDEX).all()
    if side == "left":
        assert not new_mask[1, 0] and new_mask[1, -1]


def test_without_isolator(vision_path):
    model = model_with_isolator(vision_path)
    ids, mask, labels, images = batch()
    (_, _, new_mask, _, _, _), _ = merge(model, fast(iso=False), ids, mask, labels, images)
    assert new_mask.sum(1).tolist() == [5 + K, 3 + K, 5]


def test_slow_mode_returns_full_sequence_and_stashes_the_pruned_one(vision_path):
    model = model_with_isolator(vision_path)
    ids, mask, labels, images = batch()
    full = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    slow_spec = context.ModeSpec(context.SLOW, "divprune", 0.9, True)
    out, state = merge(model, slow_spec, ids, mask, labels, images)
    torch.testing.assert_close(out[4], full[4])
    assert torch.equal(out[5], full[5]) and torch.equal(out[2], full[2])
    t = state.teacher
    p_embeds, p_labels = t.inputs_embeds, t.labels
    fast_out, _ = merge(model, fast(), ids, mask, labels, images)
    torch.testing.assert_close(p_embeds, fast_out[4])
    assert torch.equal(p_labels, fast_out[5]) and not p_embeds.requires_grad


def test_fast_mode_llm_sees_fewer_tokens_and_grads_reach_projector_and_isolator(vision_path):
    model = model_with_isolator(vision_path).train()
    ids, mask, labels, images = batch()
    seen = []
    hook = model.get_model().layers[0].register_forward_pre_hook(lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]),
                                                                  with_kwargs=True)
    with context.mode(fast()):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, images=images).loss
    model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    hook.remove()
    assert seen == [5 + L + K, 5 + 576]  # padded batch length: pruned vs full
    loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    assert isolator.get(model).weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["divprune", "cdpruner", "fastervlm", "random", "uniform", "duet"])
def test_every_method_runs_in_the_wrapper(vision_path, method):
    model = model_with_isolator(vision_path)
    ids, mask, labels, images = batch()
    (_, _, new_mask, _, _, _), state = merge(model, fast(method), ids, mask, labels, images)
    assert new_mask.sum(1).tolist() == [5 + L + K, 3 + L + K, 5] and state.visual_kept == 2 * K


def test_anyres_pruning_keeps_the_merge_intact(vision_path):
    from PIL import Image

    from llava.mm_utils import process_images

    model = model_with_isolator(vision_path, merge="spatial_unpad", image_aspect_ratio="anyres",
                                image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    image = Image.new("RGB", (700, 300), (10, 200, 30))
    pixels = process_images([image], model.get_vision_tower().image_processor, model.config)
    pixels = [pixels[0]]
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6]])
    full = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, labels, pixels, image_sizes=[image.size])
    span = full[4].shape[1] - 3  # the fork's merged span: base + unpadded crops + newline tokens
    (_, _, _, _, embeds, new_labels), state = merge(model, fast(), ids, None, labels, pixels, image_sizes=[image.size])
    k = budget(span, 0.9)
    assert state.visual_total == span and embeds.shape[1] == 3 + L + k
    # Every kept vector is a token of the fork's merged span, in the span's order.
    merged = full[4][0, 2:2 + span]
    kept = embeds[0, 2 + L:2 + L + k]
    positions = [int(torch.nonzero((merged == v).all(-1))[0]) for v in kept]
    assert positions == sorted(positions) and len(set(positions)) == k
    assert new_labels[0, -1] == 6


def test_pruned_generation_equals_hand_fed_pruned_embeddings(vision_path):
    model = model_with_isolator(vision_path)
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7]])
    images = torch.randn(1, 3, 336, 336)
    with dualspeed_patch.pruned_inference("divprune", 0.9, isolator=True):
        out = model.generate(ids, images=images, max_new_tokens=6, do_sample=False, pad_token_id=0)
        _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images)
    assert embeds.shape[1] == 4 + L + K
    from transformers import LlamaForCausalLM

    # The plain LM's generate on the pruned embeddings (LLaVA's own generate refuses inputs_embeds).
    by_hand = LlamaForCausalLM.generate(model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6,
                                        do_sample=False, pad_token_id=0)
    assert torch.equal(out, by_hand)
    full = model.generate(ids, images=images, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert full.shape == out.shape  # outside the context inference is full again


def test_missing_isolator_is_a_clear_error(vision_path):
    model = make_tiny_llava(vision_path)
    ids, mask, labels, images = batch()
    with pytest.raises(RuntimeError, match="mode_isolator"):
        merge(model, fast(iso=True), ids, mask, labels, images)


def test_bf16_forward_backward_full_and_fast(vision_path):
    """bf16 weights end to end (tower, projector, isolator, LLM): no dtype mismatch in either mode."""
    model = model_with_isolator(vision_path).to(torch.bfloat16).train()
    ids, mask, labels, images = batch()
    images = images.to(torch.bfloat16)
    full = model(input_ids=ids, attention_mask=mask, labels=labels, images=images).loss
    with context.mode(fast()):
        fast_loss = model(input_ids=ids, attention_mask=mask, labels=labels, images=images).loss
    (full + fast_loss).backward()
    assert torch.isfinite(full) and torch.isfinite(fast_loss)
    assert isolator.get(model).weight.grad.dtype == torch.bfloat16
