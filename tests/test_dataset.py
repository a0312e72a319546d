"""LazySupervisedDataset / collator on the tiny assets, and the bad-input errors that name the sample."""
import json
import shutil
import types

import pytest
import torch

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@pytest.fixture
def v1_template():
    saved = conversation_lib.default_conversation
    conversation_lib.default_conversation = conversation_lib.conv_templates["v1"]
    yield
    conversation_lib.default_conversation = saved


@pytest.fixture(scope="module")
def processor(tiny_assets):
    from llava.model.multimodal_encoder.clip_encoder import load_clip_image_processor

    return load_clip_image_processor(tiny_assets["vision_tower"])


@pytest.fixture
def tokenizer(tiny_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"], model_max_length=1024, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


def data_args(folder, processor, **kw):
    return types.SimpleNamespace(is_multimodal=True, image_folder=str(folder), image_aspect_ratio="pad",
                                 image_processor=processor, mm_use_im_start_end=False, image_grid_pinpoints=None,
                                 image_tokens=576, on_tokenization_mismatch="error", **kw)


def qa(question, answer, image=None, sid="s0"):
    record = {"id": sid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


def make_dataset(tmp_path, records, tokenizer, processor, **kw):
    from llava.train.dataset import LazySupervisedDataset

    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return LazySupervisedDataset(str(path), tokenizer, data_args(tmp_path, processor, **kw))


@pytest.fixture
def an_image(tiny_assets, tmp_path):
    with open(tiny_assets["finetune_data"]) as f:
        src = next(r["image"] for r in json.load(f) if "image" in r)
    shutil.copy(f"{tiny_assets['image_folder']}/{src}", tmp_path / "img.jpg")
    return "img.jpg"


def test_image_and_text_samples_and_collator(tmp_path, tokenizer, processor, an_image, v1_template):
    from llava.train.dataset import DataCollatorForSupervisedDataset

    ds = make_dataset(tmp_path, [qa("<image>\nWhat color is it?", "Red.", an_image, "a"),
                                 qa("Say hi.", "Hi there.", None, "b")], tokenizer, processor)
    a, b = ds[0], ds[1]
    assert a["image"].shape == (3, 336, 336) and (a["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    assert b["image"].abs().sum() == 0  # zero image keeps one image per sample
    assert ds.modality_lengths[0] > 0 > ds.modality_lengths[1]
    batch = DataCollatorForSupervisedDataset(tokenizer)([a, b])
    assert batch["images"].shape == (2, 3, 336, 336)
    lengths = [len(a["input_ids"]), len(b["input_ids"])]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    # The answer is supervised: its tokens decode back to the answer text.
    sup = a["labels"][a["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(sup, skip_special_tokens=True).strip() == "Red."


def test_missing_image_names_sample_and_path(tmp_path, tokenizer, processor, v1_template):
    from llava.train.dataset import DataError

    ds = make_dataset(tmp_path, [qa("<image>\nQ?", "A.", "nope/missing.jpg", "sample-42")], tokenizer, processor)
    with pytest.raises(DataError, match=r"sample-42.*missing\.jpg"):
        ds[0]


def test_corrupt_image(tmp_path, tokenizer, processor, v1_template):
    from llava.train.dataset import DataError

    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    ds = make_dataset(tmp_path, [qa("<image>\nQ?", "A.", "bad.jpg", "corrupt-1")], tokenizer, processor)
    with pytest.raises(DataError, match=r"corrupt-1.*cannot read image"):
        ds[0]


def test_image_sample_without_image_token(tmp_path, tokenizer, processor, an_image, v1_template):
    from llava.train.dataset import DataError

    # Refused when the dataset is built, before any training step.
    with pytest.raises(DataError, match=r"no-token.*no <image>"):
        make_dataset(tmp_path, [qa("What is this?", "A.", an_image, "no-token")], tokenizer, processor)


def test_sample_longer_than_model_max_length(tmp_path, tokenizer, processor, an_image, v1_template):
    from llava.train.dataset import DataError

    tokenizer.model_max_length = 700  # 576 image tokens + the system prompt leave ~80 for the conversation
    long_question = "<image>\n" + "describe the red circle on the left " * 20
    ds = make_dataset(tmp_path, [qa(long_question, "Red.", an_image, "too-long"),
                                 qa("<image>\nColor?", "red " * 200, an_image, "long-answer")], tokenizer, processor)
    with pytest.raises(DataError, match=r"too-long.*longer than model_max_length=700"):
        ds[0]
    item = ds[1]  # only the end of the answer is cut: kept, truncated later by the collator, and counted
    assert 1 in ds.truncated and item["input_ids"].numel() + 575 > 700


def test_empty_answer_is_an_error_not_a_zero_loss(tmp_path, tokenizer, processor, an_image, v1_template):
    ds = make_dataset(tmp_path, [qa("<image>\nQ?", "", an_image, "empty-answer")], tokenizer, processor)
    with pytest.raises(ValueError, match="empty-answer"):
        ds[0]


def test_bad_json_is_named(tmp_path, tokenizer, processor):
    from llava.train.dataset import DataError, LazySupervisedDataset

    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "x", "conversations": []}]))
    with pytest.raises(DataError, match=r"bad\.json: sample x \(index 0\): 'conversations' is an empty list"):
        LazySupervisedDataset(str(path), tokenizer, data_args(tmp_path, processor))
    with pytest.raises(FileNotFoundError):
        LazySupervisedDataset(str(tmp_path / "absent.json"), tokenizer, data_args(tmp_path, processor))


def test_legacy_flags_are_accepted(tmp_path):
    from transformers import HfArgumentParser

    from llava.train.arguments import TrainingArguments

    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--evaluation_strategy", "no", "--warmup_ratio", "0.03", "--tf32", "True",
         "--report_to", "none"])
    assert args.eval_strategy == "no" and args.warmup_steps == pytest.approx(0.03)
    assert args.tf32 is None or torch.cuda.is_available()
    assert args.remove_unused_columns is False and args.optim == "adamw_torch"
