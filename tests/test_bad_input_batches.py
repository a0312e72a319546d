"""Batches whose images do not belong to the right sample, fastervlm on multi-crop images, and non-finite losses:
each is refused with an error that names what is wrong, and legitimate batches still pass."""
import types

import pytest
import torch
import transformers
from torch import nn

import dualspeed_patch
from dualspeed_patch import context, multimodal, signals
from dualspeed_patch.pruners import budget, get_pruner
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX as IMG
from llava.model.llava_arch import LlavaMetaForCausalLM
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.llava_trainer import LLaVATrainer
from tests.helpers import make_tiny_llava

K = budget(576, 0.9)
# The merge as our llava defines it, whether or not another test left the DualSpeed patch on.
OWN_MERGE = getattr(LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal, "__dualspeed_original__",
                    LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal)


@pytest.fixture(scope="module")
def model(vision_path):
    return make_tiny_llava(vision_path)


@pytest.fixture
def patched():
    dualspeed_patch.apply("llava")
    yield
    dualspeed_patch.remove()


def padded(rows):
    """ids (right-padded with 0), mask, labels (text supervised, images and padding ignored)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = ids != 0
    labels = ids.clone()
    labels[(ids == IMG) | ~mask] = IGNORE_INDEX
    return ids, mask, labels


def merge(model, rows, images, **kw):
    ids, mask, labels = padded(rows)
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images, **kw)


def fast(method):
    return context.ModeSpec(context.FAST, method, 0.9, False)


# The bug: sample 0 has two <image> placeholders but brought one image; sample 1 is text-only with its dummy.
# Two images, two placeholders: the batch totals look like "one image per placeholder".
SHORT_ROWS = [[1, IMG, 5, IMG, 6], [1, 7, 8, 9]]


# ------------------------------------------------------------------------------------------ merge checks

def test_sample_short_of_images_is_named_with_counts(model):
    with pytest.raises(ValueError, match=r"Batch row 0 has 2 <image> token\(s\) but 1 image\(s\) "
                                         r"\(image_counts\[0\]\)"):
        merge(model, SHORT_ROWS, torch.randn(2, 3, 336, 336), image_counts=torch.tensor([1, 1]))


def test_sample_short_of_images_without_counts_is_refused_as_ambiguous(model):
    with pytest.raises(ValueError, match=r"Ambiguous image batch: 2 images for 2 samples .* row 0 has 2 <image> "
                                         r"tokens and rows \[1\] are text-only.*Pass image_counts"):
        merge(model, SHORT_ROWS, torch.randn(2, 3, 336, 336))


@pytest.mark.parametrize("counts, message", [
    ([2, 2], r"Batch row 1 is text-only \(0 <image> tokens\) but has 2 images"),
    ([2, 1], r"image_counts sums to 3 images but 4 images were passed"),
    ([2], r"image_counts has 1 entries for a batch of 2 samples"),
])
def test_other_count_errors(model, counts, message):
    with pytest.raises(ValueError, match=message):
        merge(model, SHORT_ROWS, torch.randn(4, 3, 336, 336), image_counts=counts)


def test_forward_hands_image_counts_to_the_merge_and_drops_sample_index(model):
    ids, mask, labels = padded(SHORT_ROWS)
    images = torch.randn(2, 3, 336, 336)
    with torch.no_grad(), pytest.raises(ValueError, match="Batch row 0"):
        model(input_ids=ids, attention_mask=mask, labels=labels, images=images, image_counts=torch.tensor([1, 1]))
    ids, mask, labels = padded([[1, IMG, 5, 6], [1, 7, 8, 9]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images,
                    image_counts=torch.tensor([1, 1]), sample_index=torch.tensor([4, 9]))
    assert torch.isfinite(out.loss)


def test_dummy_and_per_placeholder_conventions_still_pass(model):
    rows = [[1, IMG, 4], [1, 8, 9, 10], [1, IMG, 5]]
    images = torch.randn(3, 3, 336, 336)  # the middle one is the text-only sample's dummy
    expected = merge(model, rows, images)[4]
    torch.testing.assert_close(merge(model, rows, images, image_counts=torch.tensor([1, 1, 1]))[4], expected)
    # One image per placeholder, with and without counts (eval / generate style).
    torch.testing.assert_close(merge(model, rows, images[[0, 2]], image_counts=[1, 0, 1])[4], expected)
    torch.testing.assert_close(merge(model, rows, images[[0, 2]])[4], expected)


def test_multi_image_sample_with_correct_counts(model):
    rows = [[1, IMG, 7, IMG, 8], [1, 9, 10]]
    images = torch.randn(3, 3, 336, 336)  # sample 0's two images, then sample 1's dummy
    _, _, mask, _, emb, labels = merge(model, rows, images, image_counts=torch.tensor([2, 1]))
    with torch.no_grad():
        feats = model.encode_images(images)
    torch.testing.assert_close(emb[0, 1:577], feats[0])
    torch.testing.assert_close(emb[0, 578:1154], feats[1])
    assert labels[0, 577] == 7 and mask.sum(1).tolist() == [3 + 2 * 576, 3]
    # The same batch without the dummy: counts say sample 1 has none.
    torch.testing.assert_close(merge(model, rows, images[:2], image_counts=[2, 0])[4], emb)


# ------------------------------------------------------------------------------------------ the collator

class FakeTokenizer:
    pad_token_id = 0
    model_max_length = 64


def sample(n_image_tokens, image=None, index=None, size=None):
    ids = torch.tensor([1] + [IMG, 5] * n_image_tokens + [6])
    out = {"input_ids": ids, "labels": ids.clone()}
    if image is not None:
        out["image"] = image
    if size is not None:
        out["image_size"] = size
    if index is not None:
        out["index"] = index
    return out


def test_collator_counts_images_per_sample():
    a, b, c = torch.randn(3, 8, 8), torch.zeros(3, 8, 8), [torch.randn(3, 8, 8), torch.randn(3, 8, 8)]
    instances = [sample(1, a, 0, (8, 8)), sample(0, b, 1), sample(2, c, 2, [(8, 8), (9, 9)]), sample(0, None, 3)]
    batch = DataCollatorForSupervisedDataset(FakeTokenizer())(instances)
    assert batch["image_counts"].tolist() == [1, 1, 2, 0] and batch["image_counts"].dtype == torch.long
    assert batch["images"].shape == (4, 3, 8, 8)
    assert torch.equal(batch["images"][2], c[0]) and torch.equal(batch["images"][3], c[1])
    assert batch["image_sizes"] == [(8, 8), None, (8, 8), (9, 9)]
    assert batch["sample_index"].tolist() == [0, 1, 2, 3]
    # Crops of different counts (anyres) stay a list, one entry per image; no index -> no sample_index.
    batch = DataCollatorForSupervisedDataset(FakeTokenizer())([sample(1, torch.randn(3, 3, 8, 8)),
                                                               sample(0, torch.zeros(3, 8, 8))])
    assert isinstance(batch["images"], list) and batch["image_counts"].tolist() == [1, 1]
    assert "sample_index" not in batch


def test_collated_short_sample_fails_in_the_model_naming_its_row(model):
    instances = [sample(0, torch.zeros(3, 336, 336), 0), sample(2, torch.randn(3, 336, 336), 1)]
    batch = DataCollatorForSupervisedDataset(FakeTokenizer())(instances)
    batch.pop("sample_index")
    with torch.no_grad(), pytest.raises(ValueError, match=r"Batch row 1 has 2 <image> token\(s\) but 1 image"):
        model(**batch)


# ------------------------------------------------------------------------------------------ DualSpeed wrapper

def test_image_counts_reach_our_merge_through_the_dualspeed_wrapper(model, patched):
    ids, mask, labels = padded(SHORT_ROWS)
    with context.mode(fast("divprune")), pytest.raises(ValueError, match="Batch row 0"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, torch.randn(2, 3, 336, 336),
                                                   None, torch.tensor([1, 1]))  # positional, as upstream style


def test_wrapper_adds_no_keyword_for_a_merge_without_image_counts(model):
    def upstream_merge(self, input_ids, position_ids, attention_mask, past_key_values, labels, images,
                       image_sizes=None):
        return OWN_MERGE(self, input_ids, position_ids, attention_mask, past_key_values, labels, images,
                         image_sizes)

    wrapped = multimodal.wrap(upstream_merge, types.SimpleNamespace(inference_spec=None))
    ids, mask, labels = padded([[1, IMG, 5, 6], [1, 7, 8, 9]])
    with context.mode(fast("fastervlm")) as state:
        out = wrapped(model, ids, None, mask, None, labels, torch.randn(2, 3, 336, 336), image_sizes=None)
    assert out[2].sum(1).tolist() == [3 + K, 4] and state.visual_kept == K


def own_cls_attention(model, image):
    """The [CLS] attention of `image` alone, as the capture computes it."""
    with signals.span_cls_attention(model) as capture, torch.no_grad():
        model.encode_images(image[None])
    return capture.per_call[0]["cls_attention"]


@pytest.mark.parametrize("counts", [None, torch.tensor([1, 1])])
def test_fastervlm_scores_each_span_with_its_own_image(model, patched, counts):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 336, 336)  # a random "dummy" first, so pairing with it would change the choice
    ids, mask, labels = padded([[1, 7, 8, 9], [1, IMG, 5, 6]])
    with context.mode(fast("fastervlm")):
        _, _, new_mask, _, emb, _ = model.prepare_inputs_labels_for_multimodal(
            ids, None, mask, None, labels, images, image_counts=counts)
    with torch.no_grad():
        feats = model.encode_images(images)
    idx = get_pruner("fastervlm")(feats[1:], K, cls_attention=own_cls_attention(model, images[1]))
    torch.testing.assert_close(emb[1, 1:1 + K], feats[1, idx[0]])
    wrong = get_pruner("fastervlm")(feats[1:], K, cls_attention=own_cls_attention(model, images[0]))
    assert not torch.equal(idx, wrong)  # the test would see a mispairing


def test_fastervlm_refuses_multi_crop_images(model, patched):
    # A text-only sample's dummy with two crops, then a one-crop image whose span is the plain 576 tokens:
    # before the fix the cursor gave that span the dummy's first crop's [CLS] attention.
    images = [torch.randn(2, 3, 336, 336), torch.randn(3, 336, 336)]
    ids, mask, labels = padded([[1, 7, 8, 9], [1, IMG, 5, 6]])
    for counts in (None, torch.tensor([1, 1])):
        with context.mode(fast("fastervlm")), pytest.raises(
                NotImplementedError, match=r"one vision-tower row per image; the tower saw 3 rows for 2 images"):
            model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images, image_counts=counts)
    # Other methods do not read the tower's rows and keep working on the same batch.
    with context.mode(fast("divprune")):
        out = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    assert out[2].sum(1).tolist() == [4, 3 + K]


def test_fastervlm_refuses_anyres(vision_path, patched):
    from PIL import Image

    from llava.mm_utils import process_images

    model = make_tiny_llava(vision_path, merge="spatial_unpad", image_aspect_ratio="anyres",
                            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    image = Image.new("RGB", (700, 300), (10, 200, 30))
    pixels = process_images([image], model.get_vision_tower().image_processor, model.config)
    ids, mask, labels = padded([[1, 5, IMG, 6]])
    with context.mode(fast("fastervlm")), pytest.raises(NotImplementedError, match="4 rows for 1 images"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, [pixels[0]],
                                                   image_sizes=[image.size])


# ------------------------------------------------------------------------------------------ non-finite loss

class NanOnCall(nn.Module):
    """Loss finite until forward call `bad`; records each batch's first token (= sample index + 1)."""

    def __init__(self, bad):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.bad, self.calls, self.seen = bad, 0, []

    def forward(self, input_ids, labels=None, attention_mask=None):  # no **kwargs: sample_index must not arrive
        self.calls += 1
        self.seen.append([int(i) - 1 for i in input_ids[:, 0]])
        loss = self.weight * input_ids.float().mean()
        return {"loss": loss * float("nan") if self.calls == self.bad else loss}


class IndexedDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.list_data_dict = [{"id": f"s{i}"} for i in range(n)]

    def __len__(self):
        return len(self.list_data_dict)

    def __getitem__(self, i):
        ids = torch.tensor([i + 1, 2, 3])
        return {"input_ids": ids, "labels": ids.clone(), "index": i}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_nan_loss_stops_training_naming_step_and_samples(tmp_path, accumulation):
    model = NanOnCall(bad=3)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
        per_device_train_batch_size=2, gradient_accumulation_steps=accumulation, max_steps=4,
        remove_unused_columns=False, logging_steps=1)
    trainer = LLaVATrainer(model=model, args=args, train_dataset=IndexedDataset(8),
                           data_collator=DataCollatorForSupervisedDataset(FakeTokenizer()))
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    step = 2 // accumulation  # optimizer steps completed before the third micro-batch
    indices = model.seen[-1]
    message = str(err.value)
    assert f"Non-finite training loss nan at global step {step} " in message
    assert f"Batch sample indices (this rank): {indices}." in message
    assert f"Sample ids: {[f's{i}' for i in indices]}." in message
    assert "Likely causes" in message and model.calls == 3


def test_nan_guard_without_sample_index(tmp_path):
    model = NanOnCall(bad=1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True,
                                          save_strategy="no", per_device_train_batch_size=2, max_steps=1)
    trainer = LLaVATrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
    ids = torch.tensor([[1, 2, 3], [2, 2, 3]])
    with pytest.raises(FloatingPointError, match=r"global step 0 .*\n.*no 'index' key"):
        trainer.training_step(model, {"input_ids": ids, "labels": ids})
