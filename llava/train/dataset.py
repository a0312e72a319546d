"""LazySupervisedDataset and its collator: LLaVA's JSON format, read lazily, checked loudly.

Bad input stops with the sample named (its `id`, its index and the file): a missing or corrupt image, an
image sample whose text has no `<image>`, a sample whose supervised tokens would all be cut by
`model_max_length`. Samples that are only partly cut are truncated as upstream does, and counted."""
from __future__ import annotations

import copy
import json
import logging
import os

import torch
from torch.utils.data import Dataset

from llava import conversation as conversation_lib
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .collator import DataCollatorForSupervisedDataset
from .preprocess import TokenizationMismatchError, preprocess, preprocess_multimodal

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A training sample that cannot be used as it is; the message names it."""


def _load_records(data_path):
    if not data_path or not os.path.isfile(data_path):
        raise FileNotFoundError(f"--data_path {data_path!r} does not exist")
    with open(data_path) as f:
        if data_path.endswith(".jsonl"):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    if not isinstance(records, list):
        raise DataError(f"{data_path}: expected a JSON list of samples, got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("conversations"), list) or not r["conversations"]:
            raise DataError(f"{data_path}: sample #{i} (id={_sample_id(r, i)}) has no 'conversations' list")
    return records


def _sample_id(record, index):
    return record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"


class LazySupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning; images are opened and samples tokenized on access."""

    def __init__(self, data_path: str, tokenizer, data_args):
        super().__init__()
        self.data_path = data_path
        self.list_data_dict = _load_records(data_path)
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.skipped = []  # (index, id, reason) of samples skipped under on_tokenization_mismatch=skip
        self.truncated = set()
        logger.info("Loaded %d samples from %s", len(self.list_data_dict), data_path)

    def __len__(self):
        return len(self.list_data_dict)

    @property
    def lengths(self):
        return [sum(len(c["value"].split()) for c in s["conversations"]) + (128 if "image" in s else 0)
                for s in self.list_data_dict]

    @property
    def modality_lengths(self):
        # Positive for image samples, negative for text-only ones (the grouped sampler keys on the sign).
        out = []
        for s in self.list_data_dict:
            n = sum(len(c["value"].split()) for c in s["conversations"])
            out.append(n if "image" in s else -n)
        return out

    def __getitem__(self, i):
        tries = 0
        while True:
            try:
                return self._get(i)
            except TokenizationMismatchError as e:
                if self.data_args_value("on_tokenization_mismatch", "error") != "skip":
                    raise
                record = self.list_data_dict[i]
                self.skipped.append((i, _sample_id(record, i), str(e)))
                logger.warning("Skipping sample %s (%d skipped so far): %s", _sample_id(record, i), len(self.skipped), e)
                tries += 1
                if tries >= len(self):
                    raise DataError(f"{self.data_path}: every sample failed to tokenize") from e
                i = (i + 1) % len(self)

    def data_args_value(self, name, default):
        return getattr(self.data_args, name, default)

    def _get(self, i):
        record = self.list_data_dict[i]
        sid = _sample_id(record, i)
        where = f"{self.data_path}: sample {sid} (index {i})"
        has_image = "image" in record
        conversations = copy.deepcopy(record["conversations"])
        data = {}
        if has_image:
            if not any(DEFAULT_IMAGE_TOKEN in turn.get("value", "") for turn in conversations):
                raise DataError(f"{where} has an image but no {DEFAULT_IMAGE_TOKEN} in its text.")
            image, image_size = self._load_image(record["image"], where)
            data["image"] = image
            data["image_size"] = image_size
            sources = preprocess_multimodal([conversations], self.data_args)
        else:
            sources = [conversations]
        try:
            tokens = preprocess(sources, self.tokenizer, has_image=has_image, sample_id=sid)
        except ValueError as e:
            raise type(e)(f"{self.data_path} (index {i}): {e}") from e
        input_ids, labels = _first(tokens["input_ids"]), _first(tokens["labels"])
        self._check_length(input_ids, labels, has_image, where, i)
        data["input_ids"], data["labels"] = input_ids, labels
        if not has_image and self.data_args.is_multimodal:
            # A zero image keeps one image per sample, so the model's image cursor stays aligned.
            crop = self.data_args.image_processor.crop_size
            data["image"] = torch.zeros(3, crop["height"], crop["width"])
        return data

    def _load_image(self, image_file, where):
        from PIL import Image, UnidentifiedImageError

        from llava.mm_utils import expand2square, process_anyres_image

        if isinstance(image_file, list):
            raise DataError(f"{where}: a list of images per sample is not supported by this dataset.")
        path = os.path.join(self.data_args.image_folder or "", image_file)
        if not os.path.isfile(path):
            raise DataError(f"{where}: image file not found: {path}")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{where}: cannot read image {path}: {e}") from e
        processor = self.data_args.image_processor
        size = image.size
        if self.data_args.image_aspect_ratio == "pad":
            background = tuple(int(x * 255) for x in processor.image_mean)
            pixels = processor.preprocess(expand2square(image, background), return_tensors="pt")["pixel_values"][0]
        elif self.data_args.image_aspect_ratio == "anyres":
            pixels = process_anyres_image(image, processor, self.data_args.image_grid_pinpoints)
        else:
            pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        return pixels, size

    def _check_length(self, input_ids, labels, has_image, where, index):
        max_len = self.tokenizer.model_max_length
        supervised = (labels != IGNORE_INDEX).nonzero()
        if len(supervised) == 0:
            raise DataError(f"{where}: no token is supervised (all labels are masked).")
        # Length after the model replaces each image sentinel by its features.
        extra = 0
        tower_tokens = getattr(self.data_args, "image_tokens", None)
        if has_image and tower_tokens:
            extra = int((input_ids == IMAGE_TOKEN_INDEX).sum()) * (tower_tokens - 1)
        first = int(supervised[0]) + (extra if has_image else 0)
        if first >= max_len:
            raise DataError(f"{where} is longer than model_max_length={max_len}: its first supervised token is at "
                            f"position {first} (images expanded), so truncation would leave nothing to learn. "
                            "Raise --model_max_length or shorten the sample.")
        if len(input_ids) + extra > max_len and index not in self.truncated:
            self.truncated.add(index)
            logger.warning("%s has %d tokens (images expanded) > model_max_length=%d: truncated (%d samples so far).",
                           where, len(input_ids) + extra, max_len, len(self.truncated))


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) or (torch.is_tensor(x) and x.ndim == 2) else x


def make_supervised_data_module(tokenizer, data_args) -> dict:
    """Make dataset and collator for supervised fine-tuning."""
    train_dataset = LazySupervisedDataset(tokenizer=tokenizer, data_path=data_args.data_path, data_args=data_args)
    data_collator = DataCollatorForSupervisedDataset(tokenizer=tokenizer)
    return dict(train_dataset=train_dataset, eval_dataset=None, data_collator=data_collator)


__all__ = ["LazySupervisedDataset", "DataCollatorForSupervisedDataset", "make_supervised_data_module", "DataError",
           "conversation_lib"]
