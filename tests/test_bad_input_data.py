"""Bad training data: every error names the file, the sample (id and index) and the real cause.

One test per class of bad input. Each writes a tiny data file to tmp_path and checks the DataError
message (and, where an exception was wrapped, that the original is kept as ``__cause__``)."""
import json
import re
import time
import types

import pytest
import torch

from llava import conversation as conversation_lib
from llava.constants import IMAGE_TOKEN_INDEX
from llava.train.dataset import DataError, LazySupervisedDataset
from llava.train.images import ImageError
from llava.train.preprocess import NoSupervisedTokensError, TokenizationMismatchError


@pytest.fixture(autouse=True)
def v1_template(monkeypatch):
    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["v1"])


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessorPil

    # Built from defaults (no files needed); small sizes keep the tests fast.
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture
def tokenizer(tiny_tokenizer_path):
    from transformers import AutoTokenizer

    # A fresh tokenizer per test: tests change model_max_length.
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path, model_max_length=1024, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "img.png")
    return "img.png"


def data_args(folder, processor, **kw):
    args = dict(is_multimodal=True, image_folder=str(folder), image_aspect_ratio="pad", image_processor=processor,
                mm_use_im_start_end=False, image_grid_pinpoints=None, image_tokens=16,
                on_tokenization_mismatch="error")
    args.update(kw)
    return types.SimpleNamespace(**args)


def qa(question, answer, image=None, sid="s0"):
    record = {"id": sid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def dataset(path, tokenizer, processor, **kw):
    return LazySupervisedDataset(str(path), tokenizer, data_args(path.parent, processor, **kw))


def build(tmp_path, records, tokenizer, processor, name="data.json", **kw):
    return dataset(write(tmp_path, records, name), tokenizer, processor, **kw)


def raises_at_load(path, tokenizer, processor, pattern):
    """The DataError raised while building the dataset from ``path`` (must match ``pattern``)."""
    with pytest.raises(DataError, match=pattern) as ei:
        dataset(path, tokenizer, processor)
    return ei.value


# ---------------------------------------------------------------------- reading the file

def test_json_syntax_error_gives_line_and_column(tmp_path, tokenizer, processor):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b" "conversations": []}\n]')
    err = raises_at_load(path, tokenizer, processor,
                         r"broken\.json: not valid JSON: Expecting ',' delimiter at line 3 column 14")
    assert isinstance(err.__cause__, json.JSONDecodeError)


def test_jsonl_content_in_a_json_file_gets_a_hint(tmp_path, tokenizer, processor):
    path = tmp_path / "lines.json"
    path.write_text(json.dumps(qa("Q?", "A.")) + "\n" + json.dumps(qa("Q?", "A.")) + "\n")
    raises_at_load(path, tokenizer, processor, r"lines\.json: not valid JSON: Extra data at line 2 column 1 "
                                               r"\(one JSON value per line\? then name the file \.jsonl\)")


def test_jsonl_syntax_errors_give_the_file_line_of_each(tmp_path, tokenizer, processor):
    path = tmp_path / "data.jsonl"
    good = json.dumps(qa("Q?", "A."))
    path.write_text(f"{good}\n\n{{\"id\": \"x\",}}\n{good}\n[1, 2\n")
    err = raises_at_load(path, tokenizer, processor,
                         r"data\.jsonl: 2 line\(s\) are not valid JSON .*\n  line 3: Expecting property name "
                         r"enclosed in double quotes at column 12\n  line 5: Expecting ',' delimiter")
    assert isinstance(err.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("name", ["latin1.json", "latin1.jsonl"])
def test_file_that_is_not_utf8(tmp_path, tokenizer, processor, name):
    path = tmp_path / name
    record = json.dumps(qa("Q?", "caf\u00e9"), ensure_ascii=False)
    text = f"[\n{record}\n]" if name.endswith(".json") else f"{json.dumps(qa('Q?', 'A.'))}\n{record}\n"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    err = raises_at_load(path, tokenizer, processor,
                         rf"{re.escape(name)}: not UTF-8: byte 0xe9 at byte offset {offset} \(line 2, byte \d+ of "
                         r"that line\) is invalid \(invalid continuation byte\); re-encode the file as UTF-8")
    assert isinstance(err.__cause__, UnicodeDecodeError)


def test_utf8_bom_is_accepted(tmp_path, tokenizer, processor):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([qa("Q?", "caf\u00e9")]).encode())
    assert dataset(path, tokenizer, processor).list_data_dict[0]["conversations"][1]["value"] == "caf\u00e9"


def test_top_level_not_a_list(tmp_path, tokenizer, processor):
    path = write(tmp_path, {"conversations": []}, "obj.json")
    raises_at_load(path, tokenizer, processor, r"obj\.json: expected a JSON list of samples at the top level, "
                                               r"got an object")


# ---------------------------------------------------------------------- record structure

@pytest.mark.parametrize("record, cause", [
    ("just text", r"is a JSON string, not an object"),
    ({"id": "r1"}, r"has no 'conversations' key"),
    ({"id": "r1", "conversations": "human: hi"}, r"'conversations' is a JSON string, not a list"),
    ({"id": "r1", "conversations": []}, r"'conversations' is an empty list"),
    ({"id": "r1", "conversations": ["hi", {"from": "gpt", "value": "A."}]},
     r"turn 0: is a JSON string, not an object"),
    ({"id": "r1", "conversations": [{"value": "Q?"}, {"from": "gpt", "value": "A."}]}, r"turn 0: has no 'from' key"),
    ({"id": "r1", "conversations": [{"from": "human"}, {"from": "gpt", "value": "A."}]}, r"turn 0: has no 'value' key"),
    ({"id": "r1", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "A."}]},
     r"turn 0: 'value' is a JSON null, not a string"),
    ({"id": "r1", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": 42}]},
     r"turn 1: 'value' is a JSON number, not a string"),
    ({"id": "r1", "conversations": [{"from": 1, "value": "Q?"}, {"from": "gpt", "value": "A."}]},
     r"turn 0: 'from' is a JSON number, not a string"),
    ({"id": "r1", "conversations": [{"from": "user", "value": "Q?"}, {"from": "assistant", "value": "A."}]},
     r"turn 0: unknown role 'user' in 'from'; accepted: 'human', 'gpt' \(any letter case\); "
     r"turn 1: unknown role 'assistant'"),
    (dict(qa("<image>\nQ?", "A.", sid="r1"), image=None), r"'image' is a JSON null, not a string"),
    (dict(qa("<image>\nQ?", "A.", sid="r1"), image=7), r"'image' is a JSON number, not a string"),
    (dict(qa("<image>\nQ?", "A.", sid="r1"), image="  "), r"'image' is an empty string"),
    (dict(qa("<image>\nQ?", "A.", sid="r1"), image=["a.jpg", "b.jpg"]),
     r"'image' is a list: a list of images per sample is not supported"),
])
def test_malformed_record_is_named_with_its_cause(tmp_path, tokenizer, processor, record, cause):
    path = write(tmp_path, [qa("Q?", "A.", sid="fine"), record])
    sid = "r1" if isinstance(record, dict) else "#1"  # a record that is not an object has no id
    raises_at_load(path, tokenizer, processor, rf"^\S*data\.json: sample {sid} \(index 1\): {cause}")


def test_missing_id_falls_back_to_the_index(tmp_path, tokenizer, processor):
    path = write(tmp_path, [qa("Q?", "A."), {"conversations": [{"from": "human"}]}])
    raises_at_load(path, tokenizer, processor, r"data\.json: sample #1 \(index 1\): turn 0: has no 'value' key")


def test_jsonl_record_errors_give_the_line(tmp_path, tokenizer, processor):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(qa("Q?", "A.")) + "\n\n" + json.dumps({"id": "r9", "conversations": []}) + "\n")
    raises_at_load(path, tokenizer, processor,
                   r"data\.jsonl: sample r9 \(index 1\) on line 3: 'conversations' is an empty list")


def test_all_malformed_records_are_counted_and_the_first_few_listed(tmp_path, tokenizer, processor):
    records = [qa("Q?", "A.", sid=f"ok{i}") for i in range(3)] + [{"id": f"bad{i}"} for i in range(8)]
    path = write(tmp_path, records)
    err = raises_at_load(path, tokenizer, processor, r"data\.json: 8 of 11 samples are malformed; the first 5:\n")
    listed = str(err).splitlines()[1:]
    assert listed == [f"  sample bad{i} (index {i + 3}): has no 'conversations' key" for i in range(5)]


def test_capitalised_roles_are_accepted_and_render_like_lowercase(tmp_path, tokenizer, processor):
    lower = qa("what color is it", "red", sid="lower")
    upper = {"id": "upper", "conversations": [{"from": "Human", "value": "what color is it"},
                                              {"from": "GPT", "value": "red"}]}
    ds = build(tmp_path, [lower, upper], tokenizer, processor, is_multimodal=False)
    assert torch.equal(ds[0]["input_ids"], ds[1]["input_ids"]) and torch.equal(ds[0]["labels"], ds[1]["labels"])


def test_structural_check_is_cheap_enough_for_665k_records():
    from llava.train.records import check_records

    turn = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A cat."}] * 2
    records = [{"id": str(i), "image": f"coco/{i}.jpg", "conversations": turn} for i in range(665_000)]
    start = time.perf_counter()
    check_records(records, "mix665k.json")
    # About a second on one core; the bound only catches an accidental quadratic or per-record I/O.
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------- <image> placeholders

def test_text_only_sample_with_image_placeholder(tmp_path, tokenizer, processor):
    # Refused when the dataset is built, before any training step.
    with pytest.raises(DataError, match=r"data\.json: sample t1 \(index 1\) is text-only \(no 'image' key\) but its "
                                        r"text has 1 <image> placeholder\(s\) \(turn 0\), and 0 images"):
        build(tmp_path, [qa("Q?", "A.", sid="fine"), qa("look <image> here", "A.", sid="t1")], tokenizer, processor)


def test_several_placeholder_problems_are_listed_together(tmp_path, tokenizer, processor, image):
    records = [qa("a <image>", "A.", sid=f"t{i}") for i in range(7)] + [qa("What?", "A.", image, "no-token")]
    with pytest.raises(DataError, match=r"data\.json: 8 of 8 samples have <image> placeholders that do not match "
                                        r"their images; the first 5:\n  sample t0 \(index 0\) is text-only"):
        build(tmp_path, records, tokenizer, processor)


def test_image_placeholders_in_two_turns(tmp_path, tokenizer, processor, image):
    record = {"id": "two", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."},
        {"from": "human", "value": "<image>\nAgain?"}, {"from": "gpt", "value": "B."}]}
    with pytest.raises(DataError, match=r"data\.json(?s:.*)sample two \(index 0\) has 2 <image> placeholders in "
                                        r"its text \(turn 0, 2\) but brings 1 image"):
        build(tmp_path, [record], tokenizer, processor)


def test_two_image_placeholders_in_one_turn_are_not_merged_silently(tmp_path, tokenizer, processor, image):
    with pytest.raises(DataError, match=r"sample one-turn \(index 0\) has 2 <image> placeholders in its text "
                                        r"\(turn 0\) but brings 1 image.*upstream would silently merge"):
        build(tmp_path, [qa("<image> left, <image> right?", "A.", image, "one-turn")], tokenizer, processor)


def test_image_sample_without_placeholder(tmp_path, tokenizer, processor, image):
    with pytest.raises(DataError, match=r"data\.json(?s:.*)sample no-token \(index 0\) has an image but no <image> "
                                        r"in its text \(1 image, 0 placeholders\)"):
        build(tmp_path, [qa("What is this?", "A.", image, "no-token")], tokenizer, processor)


def test_placeholder_check_runs_again_when_a_sample_is_read(tmp_path, tokenizer, processor, image):
    ds = build(tmp_path, [qa("<image>\nQ?", "A.", image, "ok")], tokenizer, processor)
    ds.list_data_dict[0] = qa("look <image> and <image>", "A.", image, "edited")  # after the start-up check
    with pytest.raises(DataError, match=r"data\.json: sample edited \(index 0\) has 2 <image> placeholders"):
        ds[0]


def test_literal_image_text_is_plain_text_in_a_text_only_run(tmp_path, tokenizer, processor):
    ds = build(tmp_path, [qa("what does <image> mean in HTML?", "A tag.", sid="html")], tokenizer, processor,
               is_multimodal=False)
    assert int((ds[0]["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 0


def test_placeholder_in_an_answer_turn(tmp_path, tokenizer, processor, image):
    # Preprocessing would move it to the start of the answer: the image inside the text to predict.
    record = {"id": "ans", "image": image, "conversations": [
        {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "<image>\nA."}]}
    with pytest.raises(DataError, match=r"data\.json: sample ans \(index 0\) has its <image> placeholder in turn 1, "
                                        r"an answer \('gpt'\) turn"):
        build(tmp_path, [record], tokenizer, processor)


def test_placeholder_lost_in_rendering_is_caught_on_the_tokens(tmp_path, tokenizer, processor, image, monkeypatch):
    # The text check passes; the second line of defence counts IMAGE_TOKEN_INDEX in what was tokenized.
    import llava.train.dataset as dataset_module

    real = dataset_module.preprocess

    def drops_the_sentinel(sources, tokenizer, has_image=False, sample_id=None):
        out = real(sources, tokenizer, has_image=has_image, sample_id=sample_id)
        keep = out["input_ids"][0] != IMAGE_TOKEN_INDEX
        return dict(input_ids=[out["input_ids"][0][keep]], labels=[out["labels"][0][keep]])

    monkeypatch.setattr(dataset_module, "preprocess", drops_the_sentinel)
    ds = build(tmp_path, [qa("<image>\nQ?", "A.", image, "lost")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample lost \(index 0\): after rendering and tokenization it has "
                                        r"0 image placeholder token\(s\) \(IMAGE_TOKEN_INDEX\) but brings 1 image"):
        ds[0]


def test_leading_answer_turns_and_repeated_ids_are_reported_at_start_up(tmp_path, tokenizer, processor, caplog):
    lead = {"id": "lead", "conversations": [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Q?"},
                                            {"from": "gpt", "value": "A."}]}
    records = [lead, qa("Q?", "A.", sid="dup"), qa("Q2?", "B.", sid="dup")]
    with caplog.at_level("WARNING"):
        build(tmp_path, records, tokenizer, processor)
    assert "sample lead (index 0) starts with an answer ('gpt') turn" in caplog.text
    assert "drop a leading answer turn" in caplog.text
    assert "sample dup (index 2) repeats the id of index 1" in caplog.text


def test_good_image_sample_has_one_sentinel(tmp_path, tokenizer, processor, image):
    item = build(tmp_path, [qa("<image>\nWhat color?", "red", image, "ok")], tokenizer, processor)[0]
    assert int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1 and item["image_size"] == (40, 30)


# ---------------------------------------------------------------------- rendering / tokenizing

def test_rendering_error_is_wrapped_with_sample_and_original_cause(tmp_path, tokenizer, processor):
    record = {"id": "alt", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    ds = build(tmp_path, [record], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample alt \(index 0\): ValueError: roles do not alternate "
                                        r"human/gpt in sample 'alt' at turn 1") as ei:
        ds[0]
    assert type(ei.value.__cause__) is ValueError


def test_unexpected_exception_is_wrapped(tmp_path, tokenizer, processor, monkeypatch):
    import llava.train.dataset as dataset_module

    def broken(*args, **kwargs):
        raise KeyError("conv_template")

    monkeypatch.setattr(dataset_module, "preprocess", broken)
    ds = build(tmp_path, [qa("Q?", "A.", sid="k")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample k \(index 0\): KeyError: 'conv_template'") as ei:
        ds[0]
    assert isinstance(ei.value.__cause__, KeyError)


def test_unknown_role_in_preprocess_is_a_value_error_not_a_key_error(tokenizer):
    from llava.train.preprocess import preprocess

    bad = [{"from": "user", "value": "Q?"}, {"from": "gpt", "value": "A."}]
    with pytest.raises(ValueError, match=r"sample 'u1' turn 0: unknown role 'user' in 'from'; accepted: 'human', "
                                         r"'gpt'"):
        preprocess([bad], tokenizer, sample_id="u1")


def test_unknown_role_in_legacy_v0_is_not_rendered_as_unknown(tokenizer, monkeypatch):
    from llava.train.preprocess import preprocess

    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["llava_v0"])
    bad = [{"from": "human", "value": "Q?"}, {"from": "bot", "value": "A."}]
    with pytest.raises(ValueError, match=r"sample 'v0' turn 1: unknown role 'bot'"):
        preprocess([bad], tokenizer, sample_id="v0")


def test_no_supervised_tokens(tmp_path, tokenizer, processor):
    ds = build(tmp_path, [qa("Q?", "", sid="empty")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample empty \(index 0\): NoSupervisedTokensError: no supervised "
                                        r"token in sample 'empty'") as ei:
        ds[0]
    assert isinstance(ei.value.__cause__, NoSupervisedTokensError)


def test_too_long_sample(tmp_path, tokenizer, processor, image):
    tokenizer.model_max_length = 60
    ds = build(tmp_path, [qa("<image>\n" + "describe the red circle on the left " * 10, "red", image, "long")],
               tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample long \(index 0\) is longer than model_max_length=60: "
                                        r"its first supervised token is at position \d+ \(images expanded\)"):
        ds[0]


def _mismatch_on(sample, monkeypatch):
    """Make tokenization of sample ``sample`` fail the decode check, as a real mismatch would."""
    import llava.train.dataset as dataset_module

    real = dataset_module.preprocess

    def preprocess(sources, tokenizer, has_image=False, sample_id=None):
        if sample_id == sample:
            raise TokenizationMismatchError(f"tokenization mismatch in sample {sample_id!r}: supervised tokens "
                                            "decode to 'x' but the supervised text is 'y'")
        return real(sources, tokenizer, has_image=has_image, sample_id=sample_id)

    monkeypatch.setattr(dataset_module, "preprocess", preprocess)


def test_tokenization_mismatch_is_an_error_by_default(tmp_path, tokenizer, processor, monkeypatch):
    _mismatch_on("bad", monkeypatch)
    ds = build(tmp_path, [qa("Q?", "A.", sid="bad"), qa("Q?", "A.", sid="good")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample bad \(index 0\): TokenizationMismatchError: "
                                        r"tokenization mismatch in sample 'bad'") as ei:
        ds[0]
    assert isinstance(ei.value.__cause__, TokenizationMismatchError)


def test_tokenization_mismatch_skip_moves_to_the_next_sample(tmp_path, tokenizer, processor, monkeypatch):
    _mismatch_on("bad", monkeypatch)
    ds = build(tmp_path, [qa("Q?", "A.", sid="bad"), qa("Q?", "A.", sid="good")], tokenizer, processor,
               on_tokenization_mismatch="skip")
    assert torch.equal(ds[0]["input_ids"], ds[1]["input_ids"])  # sample 1 served in place of sample 0
    assert [(i, sid) for i, sid, _ in ds.skipped] == [(0, "bad")]
    assert "sample bad (index 0)" in ds.skipped[0][2]


def test_skip_does_not_hide_other_errors(tmp_path, tokenizer, processor):
    ds = build(tmp_path, [qa("Q?", "", sid="empty"), qa("Q?", "A.", sid="good")], tokenizer, processor,
               on_tokenization_mismatch="skip")
    with pytest.raises(DataError, match=r"sample empty \(index 0\): NoSupervisedTokensError"):
        ds[0]


# ---------------------------------------------------------------------- images

def test_missing_image_file(tmp_path, tokenizer, processor):
    ds = build(tmp_path, [qa("<image>\nQ?", "A.", "nope/missing.jpg", "m1")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample m1 \(index 0\): image file not found: \S*nope/missing\.jpg"):
        ds[0]


def test_corrupt_image(tmp_path, tokenizer, processor):
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    ds = build(tmp_path, [qa("<image>\nQ?", "A.", "bad.jpg", "c1")], tokenizer, processor)
    with pytest.raises(DataError, match=r"data\.json: sample c1 \(index 0\): cannot read image: \S*bad\.jpg: "
                                        r"cannot decode image: Pillow cannot identify it as an image") as ei:
        ds[0]
    assert isinstance(ei.value.__cause__, ImageError)


def test_image_over_the_pixel_limit(tmp_path, tokenizer, processor, image):
    ds = build(tmp_path, [qa("<image>\nQ?", "A.", image, "big")], tokenizer, processor, max_image_pixels=100)
    with pytest.raises(DataError, match=r"data\.json: sample big \(index 0\): cannot read image: \S*img\.png: image "
                                        r"of 40x30 needs a 40x40 canvas \(1,600 pixels\) to process, over the limit"):
        ds[0]


def test_length_check_counts_the_visual_tokens_of_the_tower_geometry(tmp_path, tokenizer, processor, image):
    # image_tokens is deliberately wrong (huge): when the tower geometry is known, the per-image count
    # from llava.train.images.visual_tokens_for is used instead; without it, image_tokens is the fallback.
    tokenizer.model_max_length = 200
    records = [qa("<image>\nWhat color?", "red", image, "fits")]
    geometry = dict(mm_patch_merge_type="flat", tower_patches_per_side=4, tower_image_size=32, tokens_per_crop=16)
    item = build(tmp_path, records, tokenizer, processor, image_tokens=5000, **geometry)[0]
    assert len(item["input_ids"]) + 15 <= 200
    with pytest.raises(DataError, match=r"sample fits \(index 0\) is longer than model_max_length=200"):
        build(tmp_path, records, tokenizer, processor, image_tokens=5000)[0]


def test_anyres_sample_whose_answer_the_merge_would_cut_is_refused(tmp_path, tokenizer, processor, image):
    # The bug this guards: the check counted one crop's tokens per image, the anyres merge makes base + grid
    # (+ newline tokens), so the model's truncation cut the whole answer away and the loss was NaN.
    from llava.train.images import visual_tokens_for

    geometry = dict(image_aspect_ratio="anyres", image_grid_pinpoints="[[64, 32], [32, 64], [64, 64]]",
                    mm_patch_merge_type="spatial_unpad", tower_patches_per_side=4, tower_image_size=32,
                    tokens_per_crop=16, image_tokens=16)
    records = [qa("<image>\nWhat color?", "red", image, "grid")]
    anyres_tokens = visual_tokens_for((40, 30), types.SimpleNamespace(**geometry))
    assert anyres_tokens > 2 * 16  # base crop + a grid of crops
    text_len = len(build(tmp_path, records, tokenizer, processor, **geometry)[0]["input_ids"])
    # Room for one crop's tokens, not for the grid's: under the old count this sample looked fine.
    tokenizer.model_max_length = text_len + 16 + 2
    ds = build(tmp_path, records, tokenizer, processor, **geometry)
    with pytest.raises(DataError, match=r"sample grid \(index 0\) is longer than model_max_length=\d+: its first "
                                        r"supervised token is at position \d+ \(images expanded\)"):
        ds[0]
