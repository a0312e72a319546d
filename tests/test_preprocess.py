"""Label masking of llava.train.preprocess, checked token by token against hand-built expectations."""
import copy
from types import SimpleNamespace

import pytest
import torch

from llava import conversation as cl
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import tokenizer_image_token
from llava.train.preprocess import (
    NoSupervisedTokensError,
    TokenizationMismatchError,
    _add_speaker_and_signal,
    _mask_targets,
    _tokenize_fn,
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
)

SYS_USER = ("A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.")

Q1, A1 = "what color is the circle", "red"
Q2, A2 = "how many", "two squares"


def _conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


@pytest.fixture
def use_template(monkeypatch):
    def _use(name):
        monkeypatch.setattr(cl, "default_conversation", cl.conv_templates[name])
        return cl.conv_templates[name]
    return _use


def _pieces(tok, ids):
    return [tok.convert_ids_to_tokens(int(i)) if int(i) >= 0 else int(i) for i in ids]


def _runs(labels):
    """Maximal runs of consecutive supervised positions, as lists of positions."""
    runs, cur = [], []
    for i, l in enumerate(labels.tolist()):
        if l != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _expected_labels(ids, supervised_positions):
    exp = [IGNORE_INDEX] * len(ids)
    for p in supervised_positions:
        exp[p] = int(ids[p])
    return exp


def _positions_after(pieces, marker):
    """Positions right after every occurrence of the token sequence ``marker``."""
    out = []
    for i in range(len(pieces) - len(marker) + 1):
        if pieces[i:i + len(marker)] == marker:
            out.append(i + len(marker))
    return out


def _one(d):
    assert set(d) == {"input_ids", "labels"}
    assert isinstance(d["input_ids"], list) and isinstance(d["labels"], list)
    ids, labels = d["input_ids"][0], d["labels"][0]
    assert ids.dtype == torch.long and labels.dtype == torch.long and ids.dim() == 1
    assert ids.shape == labels.shape
    return ids, labels


def _check_v1_like(tok, ids, labels, answers_with_end, answer_marker, end_piece="</s>"):
    """Supervised = from right after each ``answer_marker`` up to and including the next ``end_piece``."""
    pieces = _pieces(tok, ids)
    starts = _positions_after(pieces, answer_marker)
    assert len(starts) == len(answers_with_end)
    supervised = []
    for s in starts:
        e = pieces.index(end_piece, s)
        supervised.extend(range(s, e + 1))
    # label == input_id exactly on the answer tokens, IGNORE_INDEX everywhere else
    assert labels.tolist() == _expected_labels(ids, supervised)
    runs = _runs(labels)
    assert [r[0] for r in runs] == starts
    assert [tok.decode(ids[r].tolist()) for r in runs] == answers_with_end
    assert labels[0].item() == IGNORE_INDEX  # BOS
    assert all(labels[i].item() == IGNORE_INDEX for i in range(len(ids)) if ids[i] == IMAGE_TOKEN_INDEX)
    return pieces, runs


# ---------------------------------------------------------------------- tokenizer facts relied upon

def test_tiny_tokenizer_special_tokens_in_text(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("ASSISTANT: red</s>USER: hi").input_ids
    assert ids.count(tok.eos_token_id) == 1
    pieces = _pieces(tok, ids)
    # legacy=False: no word-prefix marker after a special token ("USER", not "▁USER")
    assert pieces[pieces.index("</s>") + 1] == "USER"
    assert tok.decode(tok("red</s>", add_special_tokens=False).input_ids) == "red</s>"


# ---------------------------------------------------------------------- v1

def test_v1_single_turn_text_only(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess([_conv(Q1, A1)], tok))
    prompt = SYS_USER + f" USER: {Q1} ASSISTANT: {A1}</s>"
    assert ids.tolist() == tok(prompt).input_ids
    pieces, runs = _check_v1_like(tok, ids, labels, ["red</s>"], ["▁ASSISTANT", ":"])
    assert [pieces[i] for i in runs[0]] == ["▁red", "</s>"]
    assert runs[0][-1] == len(ids) - 1 and ids[-1].item() == tok.eos_token_id


def test_v1_multi_turn_text_only(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess_v1([_conv(Q1, A1, Q2, A2)], tok))
    prompt = SYS_USER + f" USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>"
    assert ids.tolist() == tok(prompt).input_ids
    pieces, runs = _check_v1_like(tok, ids, labels, ["red</s>", "two squares</s>"], ["▁ASSISTANT", ":"])
    assert [[pieces[i] for i in r] for r in runs] == [["▁red", "</s>"], ["▁two", "▁square", "s", "</s>"]]
    # the second "USER" (after </s>) is not supervised
    assert labels[runs[0][-1] + 1].item() == IGNORE_INDEX


def test_v1_single_turn_with_image(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess([_conv("<image>\n" + Q1, A1)], tok, has_image=True))
    prompt = SYS_USER + f" USER: <image>\n{Q1} ASSISTANT: {A1}</s>"
    assert ids.tolist() == tokenizer_image_token(prompt, tok)
    assert ids.tolist().count(IMAGE_TOKEN_INDEX) == 1 and ids.tolist().count(tok.bos_token_id) == 1
    pieces = _pieces(tok, ids)
    k = pieces.index(IMAGE_TOKEN_INDEX)
    assert pieces[k - 3:k + 4] == ["▁USER", ":", "▁", IMAGE_TOKEN_INDEX, "▁", "<0x0A>", "what"]
    assert labels[k].item() == IGNORE_INDEX
    _check_v1_like(tok, ids, labels, ["red</s>"], ["▁ASSISTANT", ":"])


def test_v1_multi_turn_with_image(tiny_tokenizer, use_template):
    use_template("llava_v1")  # same format as vicuna_v1, other system text
    tok = tiny_tokenizer
    sources = [_conv("<image>\n" + Q1, A1, Q2, A2)]
    ids, labels = _one(preprocess(sources, tok, has_image=True))
    _check_v1_like(tok, ids, labels, ["red</s>", "two squares</s>"], ["▁ASSISTANT", ":"])
    # without has_image the same text keeps "<image>" as plain text tokens
    ids2, labels2 = _one(preprocess(copy.deepcopy(sources), tok, has_image=False))
    assert IMAGE_TOKEN_INDEX not in ids2.tolist()
    _check_v1_like(tok, ids2, labels2, ["red</s>", "two squares</s>"], ["▁ASSISTANT", ":"])


def test_v1_drops_leading_gpt_turn(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    src = [{"from": "gpt", "value": "hello"}] + _conv(Q1, A1)
    ids, labels = _one(preprocess([src], tiny_tokenizer))
    _check_v1_like(tiny_tokenizer, ids, labels, ["red</s>"], ["▁ASSISTANT", ":"])


def test_v1_batch_of_two_returns_lists(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    d = preprocess([_conv(Q1, A1), _conv(Q1, A1, Q2, A2)], tiny_tokenizer)
    assert len(d["input_ids"]) == len(d["labels"]) == 2
    assert len(_runs(d["labels"][0])) == 1 and len(_runs(d["labels"][1])) == 2


# ---------------------------------------------------------------------- plain

def test_plain(tiny_tokenizer, use_template):
    use_template("plain")
    tok = tiny_tokenizer
    caption = "a red circle on the left"
    sources = [_conv("describe <image> this", caption)]
    ids, labels = _one(preprocess(sources, tok, has_image=True))
    assert sources[0][0]["value"] == "<image>"  # the first turn is replaced by exactly <image>
    body = tok(caption + "\n").input_ids[1:]
    assert ids.tolist() == [tok.bos_token_id, IMAGE_TOKEN_INDEX] + body
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX] + body
    assert tok.decode(body) == caption + "\n"
    assert _pieces(tok, ids)[-1] == "<0x0A>"
    # direct call, and the multimodal pre-pass (with start/end tokens) does not matter for plain
    src2 = preprocess_multimodal([_conv("describe <image> this", caption)],
                                 SimpleNamespace(is_multimodal=True, mm_use_im_start_end=True))
    ids2, labels2 = _one(preprocess_plain(src2, tok))
    assert ids2.tolist() == ids.tolist() and labels2.tolist() == labels.tolist()


def test_plain_requires_two_turns_with_image(tiny_tokenizer, use_template):
    use_template("plain")
    with pytest.raises(ValueError, match="capt-7"):
        preprocess([_conv("no image here", "caption")], tiny_tokenizer, sample_id="capt-7")
    with pytest.raises(ValueError):
        preprocess([_conv("<image>", "caption", "q", "a")], tiny_tokenizer)


# ---------------------------------------------------------------------- llama_2

def test_llama_2(tiny_tokenizer, use_template):
    use_template("llava_llama_2")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess([_conv("<image>\n" + Q1, A1, Q2, A2)], tok, has_image=True))
    pieces, runs = _check_v1_like(tok, ids, labels, ["red </s>", "two squares </s>"], ["▁[/", "INST", "]"])
    assert [[pieces[i] for i in r] for r in runs] == [
        ["▁red", "▁", "</s>"], ["▁two", "▁square", "s", "▁", "</s>"]]
    # the "<s>" written between rounds is the BOS id and is not supervised
    nxt = runs[0][-1] + 1
    assert ids[nxt].item() == tok.bos_token_id and labels[nxt].item() == IGNORE_INDEX
    assert ids.tolist().count(tok.bos_token_id) == 2


def test_mistral_instruct_goes_through_llama_2(tiny_tokenizer, use_template):
    use_template("mistral_instruct")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess_llama_2([_conv(Q1, A1, Q2, A2)], tok))
    assert ids.tolist() == tok(f"[INST] {Q1} [/INST] {A1} </s>[INST] {Q2} [/INST] {A2} </s>").input_ids
    _check_v1_like(tok, ids, labels, ["red </s>", "two squares </s>"], ["▁[/", "INST", "]"])


# ---------------------------------------------------------------------- mpt

def test_mpt_text_separators(tiny_tokenizer, use_template):
    """<|im_end|> is ordinary text for the tiny tokenizer: it is several tokens, all supervised."""
    use_template("mpt")
    tok = tiny_tokenizer
    ids, labels = _one(preprocess([_conv("<image>\n" + Q1, A1, Q2, A2)], tok, has_image=True))
    pieces = _pieces(tok, ids)
    im_end = ["<|", "im", "_", "end", "|>"]
    starts = _positions_after(pieces, ["a", "ssistant", "<0x0A>"])
    assert len(starts) == 2
    supervised = []
    for s in starts:
        e = next(i for i in range(s, len(pieces)) if pieces[i:i + 5] == im_end) + 4
        supervised.extend(range(s, e + 1))
    assert labels.tolist() == _expected_labels(ids, supervised)
    runs = _runs(labels)
    assert [[pieces[i] for i in r] for r in runs] == [["red"] + im_end, ["t", "wo", "▁square", "s"] + im_end]
    assert [tok.decode(ids[r].tolist()) for r in runs] == ["red<|im_end|>", "two squares<|im_end|>"]


def test_mpt_special_separators(tiny_tokenizer_path, use_template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    use_template("chatml_direct")
    ids, labels = _one(preprocess_mpt([_conv(Q1, A1, Q2, A2)], tok))
    pieces = _pieces(tok, ids)
    starts = _positions_after(pieces, ["<|im_start|>", "a", "ssistant", "<0x0A>"])
    supervised = []
    for s in starts:
        supervised.extend(range(s, pieces.index("<|im_end|>", s) + 1))
    assert labels.tolist() == _expected_labels(ids, supervised)
    runs = _runs(labels)
    assert [[pieces[i] for i in r] for r in runs] == [["red", "<|im_end|>"],
                                                      ["t", "wo", "▁square", "s", "<|im_end|>"]]
    assert all(ids[r[-1]].item() == im_end for r in runs)


# ---------------------------------------------------------------------- legacy v0

def test_legacy_v0(tiny_tokenizer, use_template):
    conv = use_template("llava_v0")
    tok = tiny_tokenizer
    sources = [_conv(Q1, A1, Q2, A2)]
    ids, labels = _one(preprocess(sources, tok))
    assert sources[0][0]["value"] == Q1  # not mutated
    prompt = (f"{conv.system}\n\n### Human: {Q1}\n### Assistant: {A1}\n"
              f"### Human: {Q2}\n### Assistant: {A2}\n### ")
    assert ids.tolist() == tok(prompt).input_ids
    runs = _runs(labels)
    # each answer turn plus the "###" that follows it
    assert [tok.decode(ids[r].tolist()) for r in runs] == [
        "### Assistant: red\n###", "### Assistant: two squares\n###"]
    assert labels.tolist() == _expected_labels(ids, [p for r in runs for p in r])


# ---------------------------------------------------------------------- errors

def test_mismatch_names_the_sample(tiny_tokenizer, monkeypatch):
    """A token that straddles the instruction/answer boundary cannot be labelled correctly."""
    conv = cl.Conversation(system="<|im_start|>system\nsys", roles=("<|im_start|>user\n", "<|im_start|>assistant\nre"),
                           messages=(), offset=0, sep_style=cl.SeparatorStyle.MPT, sep="<|im_end|>", version="mpt")
    monkeypatch.setattr(cl, "default_conversation", conv)
    tok = tiny_tokenizer
    assert "red" in _pieces(tok, tok("assistant\nred circle").input_ids)
    with pytest.raises(TokenizationMismatchError) as ei:
        preprocess([_conv(Q1, "d circle")], tok, sample_id="sample-42")
    msg = str(ei.value)
    assert "'sample-42'" in msg
    assert "'d circle<|im_end|>'" in msg and "'red circle<|im_end|>'" in msg
    assert "<|im_start|>system" in msg
    assert isinstance(ei.value, ValueError)


def test_mismatch_when_special_tokens_are_split(tiny_tokenizer_path, use_template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path, split_special_tokens=True)
    assert tok("red</s>").input_ids[-1] != tok.eos_token_id
    use_template("vicuna_v1")
    with pytest.raises(TokenizationMismatchError, match=r"sample #0 .*'</s>'"):
        preprocess([_conv(Q1, A1), _conv(Q2, A2)], tok)


def test_no_supervised_tokens_names_the_sample(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    with pytest.raises(NoSupervisedTokensError, match="'img-003'"):
        preprocess([_conv(Q1)], tiny_tokenizer, sample_id="img-003")
    # an empty answer renders as "ASSISTANT:" with nothing to learn
    with pytest.raises(NoSupervisedTokensError, match="'b'") as ei:
        preprocess([_conv(Q1, A1), _conv(Q1, "")], tiny_tokenizer, sample_id=["a", "b"])
    assert "A chat between a curious user" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_roles_must_alternate(tiny_tokenizer, use_template):
    use_template("vicuna_v1")
    bad = [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]
    with pytest.raises(ValueError, match="x1"):
        preprocess([bad], tiny_tokenizer, sample_id="x1")


# ---------------------------------------------------------------------- helpers

def test_preprocess_multimodal():
    v = lambda s: [[{"from": "human", "value": s}, {"from": "gpt", "value": "ok"}]]  # noqa: E731
    args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
    assert preprocess_multimodal(v("what is this <image>"), args)[0][0]["value"] == "<image>\nwhat is this"
    assert preprocess_multimodal(v("<image>"), args)[0][0]["value"] == "<image>"
    args_se = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=True)
    assert preprocess_multimodal(v("q <image>"), args_se)[0][0]["value"] == "<im_start><image><im_end>\nq"
    off = SimpleNamespace(is_multimodal=False, mm_use_im_start_end=True)
    assert preprocess_multimodal(v("q <image>"), off)[0][0]["value"] == "q <image>"


def test_preprocess_multimodal_mmtag(use_template):
    use_template("v1_mmtag")
    args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
    out = preprocess_multimodal([[{"from": "human", "value": "q <image>"}]], args)
    assert out[0][0]["value"] == "<Image><image></Image>\nq"


def test_add_speaker_and_signal(use_template):
    use_template("llava_v0")
    src = _conv("q", "a")
    text = _add_speaker_and_signal("H\n\n", src)
    assert text == "H\n\n### Human: q\n### Assistant: a\n### "
    assert src[1]["value"] == "### Assistant: a\n"


def test_tokenize_fn_and_mask_targets(tiny_tokenizer):
    out = _tokenize_fn(["what is it", "red"], tiny_tokenizer)
    assert [x.tolist() for x in out["input_ids"]] == [tiny_tokenizer("what is it").input_ids,
                                                      tiny_tokenizer("red").input_ids]
    assert out["input_ids_lens"] == [4, 2] and out["labels_lens"] == [4, 2]
    target = torch.arange(10)
    _mask_targets(target, [2, 4, 4], ["human", "gpt"])
    assert target.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8, 9]


def test_byte_level_tokenizer_without_bos(use_template):
    """A GPT-NeoX/MPT-like byte-level tokenizer (no BOS, "Ġ" word prefix) is labelled the same way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bt = Tokenizer(models.BPE())
    bt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bt.decoder = decoders.ByteLevel()
    bt.train_from_iterator(["what color is the circle red two squares how many assistant user system"] * 20,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                               "<|im_end|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bt, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert tok.bos_token_id is None
    use_template("mpt")
    ids, labels = _one(preprocess([_conv("<image>\n" + Q1, A1, Q2, A2)], tok, has_image=True))
    assert ids.tolist() == tokenizer_image_token(_mpt_prompt("<image>\n" + Q1, A1, Q2, A2), tok)
    runs = _runs(labels)
    assert [tok.decode(ids[r].tolist()) for r in runs] == ["red<|im_end|>", "two squares<|im_end|>"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [ids[r[-1]].item() for r in runs] == [im_end, im_end]
    assert labels.tolist() == _expected_labels(ids, [p for r in runs for p in r])
    use_template("plain")
    ids, labels = _one(preprocess([_conv("<image>", "red circle")], tok, has_image=True))
    assert ids[0].item() == IMAGE_TOKEN_INDEX and labels[0].item() == IGNORE_INDEX
    assert labels[1:].tolist() == ids[1:].tolist() and tok.decode(ids[1:].tolist()) == "red circle\n"


def _mpt_prompt(*turns):
    conv = cl.conv_mpt.copy()
    for i, t in enumerate(turns):
        conv.append_message(conv.roles[i % 2], t)
    return conv.get_prompt()
