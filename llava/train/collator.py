"""DataCollatorForSupervisedDataset: pads a list of dataset samples into one training batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads ids (pad id) and labels (IGNORE_INDEX), truncates to model_max_length, stacks images."""

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
        if "image" in instances[0]:
            images = [x["image"] for x in instances]
            if all(x is not None and x.shape == images[0].shape for x in images):
                batch["images"] = torch.stack(images)
            else:
                batch["images"] = images
            if any("image_size" in x for x in instances):
                batch["image_sizes"] = [x.get("image_size") for x in instances]
        return batch
