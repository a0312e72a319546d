"""DataCollatorForSupervisedDataset: pads a list of dataset samples into one training batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX

# Batch key of each sample's dataset index, read from the instance's "index" key. Not a model input: the
# trainer pops it to name the samples of a batch whose loss is not finite.
SAMPLE_INDEX_KEY = "sample_index"


def _images_of(instance):
    """The image tensors one sample brings: none, one (a tensor, anyres crops included), or a list of them."""
    image = instance.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _sizes_of(instance, n_images):
    """The original (width, height) of each of the sample's images: one size, or a list when it has a list."""
    size = instance.get("image_size")
    if isinstance(instance.get("image"), (list, tuple)):
        sizes = list(size) if size is not None else [None] * n_images
        if len(sizes) != n_images:
            raise ValueError(f"A sample has {n_images} images but {len(sizes)} image sizes.")
        return sizes
    return [size] * n_images


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads ids (pad id) and labels (IGNORE_INDEX), truncates to model_max_length, stacks images.

    Besides the model inputs the batch carries `image_counts` (LongTensor [B]: how many entries of `images`
    belong to each sample, a text-only sample's dummy counted as 1) so the merge can check every sample on its
    own, and `sample_index` (LongTensor [B]) when every instance has an "index"."""

    tokenizer: object

    def __call__(self, instances):
        input_ids = [x["input_ids"] for x in instances]
        labels = [x["labels"] for x in instances]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (LLaVA uses the unk token).")
        max_len = self.tokenizer.model_max_length
        input_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=pad_id)[:, :max_len]
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)[:, :max_len]
        # From lengths, not `ids != pad`: with pad = unk, upstream also masked every real unk token.
        lengths = torch.tensor([min(len(x["input_ids"]), max_len) for x in instances])
        attention_mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        batch.update(self._images(instances))
        if all(x.get("index") is not None for x in instances):
            batch[SAMPLE_INDEX_KEY] = torch.tensor([int(x["index"]) for x in instances], dtype=torch.long)
        return batch

    @staticmethod
    def _images(instances):
        """images (stacked when all shapes agree, else a list, in sample order), image_sizes, image_counts."""
        per_sample = [_images_of(x) for x in instances]
        images = [image for sample in per_sample for image in sample]
        if not images:
            return {}
        out = {}
        if all(x.shape == images[0].shape for x in images):
            out["images"] = torch.stack(images)
        else:
            out["images"] = images
        if any("image_size" in x for x in instances):
            out["image_sizes"] = [size for x, sample in zip(instances, per_sample)
                                  for size in _sizes_of(x, len(sample))]
        # Batch totals cannot tell which sample an image belongs to; these counts let the merge check each one.
        out["image_counts"] = torch.tensor([len(sample) for sample in per_sample], dtype=torch.long)
        return out
