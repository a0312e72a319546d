"""LazySupervisedDataset and its collator: LLaVA's JSON format, read lazily, checked loudly.

Every record is checked for structure when the dataset is built (see :mod:`llava.train.records`), so a
malformed file stops the run before training with the bad samples listed. Anything that goes wrong
later, while a sample is read, rendered or tokenized, is raised as a :class:`DataError` whose message
starts ``<file>: sample <id> (index <i>)`` and carries the original exception (type, message, and as
``__cause__``): a missing or corrupt image, ``<image>`` placeholders that do not match the sample's
images, a sample whose supervised tokens would all be cut by ``model_max_length``, and so on. Samples
that are only partly cut are truncated as upstream does, and counted."""
from __future__ import annotations

import copy
import logging
import os

import torch
from torch.utils.data import Dataset

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .collator import DataCollatorForSupervisedDataset
from .images import ImageError, load_sample_image, visual_tokens_for
from .preprocess import TokenizationMismatchError, preprocess, preprocess_multimodal
from .records import (DataError, check_placeholders, describe, load_records, placeholder_problem, sample_id,
                      warn_suspicious_records)

logger = logging.getLogger(__name__)

_sample_id = sample_id  # old private name, kept for callers of this module


class LazySupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning; images are opened and samples tokenized on access."""

    def __init__(self, data_path: str, tokenizer, data_args):
        super().__init__()
        self.data_path = data_path
        self.list_data_dict = load_records(data_path)  # raises DataError listing every malformed record
        self.tokenizer = tokenizer
        self.data_args = data_args
        if self._multimodal:
            check_placeholders(self.list_data_dict, data_path)
        warn_suspicious_records(self.list_data_dict, data_path)
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
            except DataError as e:
                if not isinstance(e.__cause__, TokenizationMismatchError):
                    raise
                if self.data_args_value("on_tokenization_mismatch", "error") != "skip":
                    raise
                self.skipped.append((i, sample_id(self.list_data_dict[i], i), str(e)))
                logger.warning("Skipping sample %s (%d skipped so far): %s",
                               sample_id(self.list_data_dict[i], i), len(self.skipped), e)
                tries += 1
                if tries >= len(self):
                    raise DataError(f"{self.data_path}: every sample failed to tokenize") from e
                i = (i + 1) % len(self)

    @property
    def _multimodal(self) -> bool:
        return bool(getattr(self.data_args, "is_multimodal", False))

    def data_args_value(self, name, default):
        return getattr(self.data_args, name, default)

    def _where(self, i) -> str:
        lines = getattr(self.list_data_dict, "lines", None)
        return describe(self.data_path, self.list_data_dict[i], i, lines[i] if lines else None)

    def _get(self, i):
        where = self._where(i)
        try:
            return self._build(i, where)
        except DataError:
            raise
        except MemoryError:
            raise  # not the sample's fault; wrapping it would send the user looking at the data
        except Exception as e:
            # Whatever reading, decoding, rendering or tokenizing raised, say which sample and keep
            # the original type and message (and traceback, via __cause__) visible.
            raise DataError(f"{where}: {type(e).__name__}: {e}") from e

    def _build(self, i, where):
        record = self.list_data_dict[i]
        has_image = "image" in record
        # Before the image is opened: the text alone decides. A text-only run (no vision tower) has no
        # placeholders, so a literal "<image>" there is just text.
        problem = placeholder_problem(record) if self._multimodal else None
        if problem:
            raise DataError(f"{where} {problem}.")
        conversations = copy.deepcopy(record["conversations"])
        data = {}
        if has_image:
            image, image_size = self._load_image(record["image"], where)
            data["image"] = image
            data["image_size"] = image_size
            sources = preprocess_multimodal([conversations], self.data_args)
        else:
            sources = [conversations]
        tokens = preprocess(sources, self.tokenizer, has_image=has_image, sample_id=sample_id(record, i))
        input_ids, labels = _first(tokens["input_ids"]), _first(tokens["labels"])
        if self._multimodal:
            self._check_placeholders(input_ids, 1 if has_image else 0, where)
        self._check_length(input_ids, labels, data.get("image_size"), where, i)
        data["input_ids"], data["labels"] = input_ids, labels
        data["index"] = i  # the collator passes it on as sample_index, so a NaN-loss error can name the samples
        if not has_image and self.data_args.is_multimodal:
            # A zero image keeps one image per sample, so the model's image cursor stays aligned.
            crop = self.data_args.image_processor.crop_size
            data["image"] = torch.zeros(3, crop["height"], crop["width"])
        return data

    @staticmethod
    def _check_placeholders(input_ids, n_images, where):
        # The text check in placeholder_problem cannot see what rendering does: a template may drop
        # a leading non-human turn (and the <image> in it), and the plain template rewrites the first
        # turn. The model pairs sentinels with images one to one, so check the tokens themselves.
        n_sentinels = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if n_sentinels != n_images:
            hint = ""
            if n_sentinels < n_images:
                hint = " (was <image> in a leading non-human turn, which the template drops?)"
            raise DataError(f"{where}: after rendering and tokenization it has {n_sentinels} image placeholder "
                            f"token(s) (IMAGE_TOKEN_INDEX) but brings {n_images} image(s); the model needs "
                            f"exactly one placeholder per image{hint}")

    def _load_image(self, image_file, where):
        path = os.path.join(self.data_args.image_folder or "", image_file)
        if not os.path.isfile(path):
            raise DataError(f"{where}: image file not found: {path}")
        try:
            return load_sample_image(path, self.data_args)
        except ImageError as e:  # it names the file and the cause; add the sample
            raise DataError(f"{where}: cannot read image: {e}") from e

    def _check_length(self, input_ids, labels, image_size, where, index):
        max_len = self.tokenizer.model_max_length
        supervised = (labels != IGNORE_INDEX).nonzero()
        if len(supervised) == 0:
            raise DataError(f"{where}: no token is supervised (all labels are masked).")
        # Length after the model replaces each image sentinel by its features.
        extra = 0
        if image_size is not None:  # one image, one sentinel (checked by _check_placeholders)
            tokens = visual_tokens_for(image_size, self.data_args)
            if tokens is None:  # tower geometry unknown: the flat count the tower reports, if any
                tokens = getattr(self.data_args, "image_tokens", None)
            if tokens:
                extra = tokens - 1  # the sentinel itself is replaced, not kept
        first = int(supervised[0]) + extra
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
