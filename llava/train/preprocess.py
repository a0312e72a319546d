"""Conversation -> (input_ids, labels) for supervised training.

Interface of upstream LLaVA's ``preprocess*`` helpers (``llava.train.train`` re-exports them), with
one deliberate difference: label masking.

Upstream derives how many tokens to mask by re-tokenizing fragments of the prompt and doing length
arithmetic; whenever that arithmetic disagrees with the real tokenization (tokenizer version,
``legacy`` flag, template change) it silently masks the whole sample and trains on zero loss.

Here the prompt is rendered once together with the character spans of its supervised parts (see
:meth:`llava.conversation.Conversation.get_prompt_segments`), tokenized once with offset mappings
(``<image>`` chunks handled exactly like :func:`llava.mm_utils.tokenizer_image_token`), and a token is
supervised iff its character span overlaps a supervised span. The result is then verified: the
supervised tokens of every span must decode back to that span's text (a single leading space of
difference, from the tokenizer's word-prefix marker, is tolerated). A disagreement raises
:class:`TokenizationMismatchError`; a sample without any supervised token raises
:class:`NoSupervisedTokensError`. Both name the sample.

Supervised text per template:

* v1 (``TWO``): each answer plus ``</s>``, e.g. ``"A</s>"``;
* llama_2 (``LLAMA_2``): each answer plus ``" </s>"``, e.g. ``"A </s>"``;
* mpt (``MPT``): each answer plus ``<|im_end|>``;
* plain: the caption plus ``"\\n"``;
* legacy v0: each ``"### Assistant: A\\n"`` turn plus the ``"###"`` that follows it.

BOS, the ``IMAGE_TOKEN_INDEX`` sentinel and everything else get ``IGNORE_INDEX``. No truncation is
done here (the collator truncates to ``model_max_length``).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from llava import conversation as conversation_lib
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)

__all__ = [
    "TokenizationMismatchError",
    "NoSupervisedTokensError",
    "_tokenize_fn",
    "_mask_targets",
    "_add_speaker_and_signal",
    "preprocess_multimodal",
    "preprocess_plain",
    "preprocess_v1",
    "preprocess_llama_2",
    "preprocess_mpt",
    "preprocess",
    "ROLE_NAMES",
    "normalize_role",
]

# The speaker names of LLaVA data. Compared case-insensitively: upstream's legacy v0 renderer
# (``_add_speaker_and_signal``) lower-cases them, and a capitalised "Human" is unambiguous, so every
# template accepts the same spellings rather than some crashing with a KeyError on them.
ROLE_NAMES = ("human", "gpt")


class TokenizationMismatchError(ValueError):
    """The tokens selected as supervised do not decode to the text that should be supervised."""


class NoSupervisedTokensError(ValueError):
    """A sample has no supervised token at all (it would contribute zero loss)."""


def normalize_role(name) -> Optional[str]:
    """``"human"`` or ``"gpt"`` for an accepted speaker name (any letter case), else None."""
    if isinstance(name, str) and name.lower() in ROLE_NAMES:
        return name.lower()
    return None


def _check_turns(source, name: str) -> None:
    """Reject turns the renderers would otherwise fail on with a bare KeyError/TypeError.

    :class:`llava.train.dataset.LazySupervisedDataset` checks this for every record up front; this
    guard is for callers of :func:`preprocess` that build ``sources`` themselves.
    """
    for j, turn in enumerate(source):
        if not isinstance(turn, dict):
            raise ValueError(f"sample {name} turn {j} is a {type(turn).__name__}, not a dict with 'from' and 'value'")
        if normalize_role(turn.get("from")) is None:
            raise ValueError(f"sample {name} turn {j}: unknown role {turn.get('from')!r} in 'from'; accepted: "
                             f"{', '.join(repr(r) for r in ROLE_NAMES)} (any letter case)")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"sample {name} turn {j}: 'value' must be a string, got {turn.get('value')!r}")


# ---------------------------------------------------------------------- upstream helpers

def _tokenize_fn(strings: Sequence[str], tokenizer) -> Dict:
    """Tokenize each string separately (truncated to ``model_max_length``), as upstream does.

    Returns ``dict(input_ids, labels, input_ids_lens, labels_lens)``; ``input_ids``/``labels`` are
    the same list of 1-D LongTensors and the lengths count the non-pad tokens.
    """
    tokenized = [
        tokenizer(text, return_tensors="pt", padding="longest",
                  max_length=tokenizer.model_max_length, truncation=True)
        for text in strings
    ]
    input_ids = labels = [t.input_ids[0] for t in tokenized]
    lens = [int(t.input_ids.ne(tokenizer.pad_token_id).sum().item()) for t in tokenized]
    return dict(input_ids=input_ids, labels=labels, input_ids_lens=lens, labels_lens=lens)


def _mask_targets(target, tokenized_lens, speakers):
    """Legacy (v0) length-based masking, kept for interface compatibility.

    ``tokenized_lens[0]`` is the header length; then one length per sentence. Human sentences are
    masked except their first two tokens. :func:`preprocess` does not use this (it masks by offsets).
    """
    cur = tokenized_lens[0]
    target[:cur] = IGNORE_INDEX
    for length, speaker in zip(tokenized_lens[1:], speakers):
        if speaker == "human":
            target[cur + 2: cur + length] = IGNORE_INDEX
        cur += length


_BEGIN_SIGNAL = "### "
_END_SIGNAL = "\n"


def _add_speaker_and_signal(header, source, get_conversation=True):
    """Legacy v0 rendering: prefix each sentence with ``"### <Role>: "`` and end it with ``"\\n"``.

    Mutates ``sentence["value"]`` in place (as upstream) and returns the whole conversation
    (``header`` + sentences + a final ``"### "``).
    """
    roles = conversation_lib.default_conversation.roles
    conversation = header
    for sentence in source:
        who = sentence["from"].lower()
        if who == "human":
            name = roles[0]
        elif who == "gpt":
            name = roles[1]
        else:
            name = "unknown"
        sentence["value"] = _BEGIN_SIGNAL + name + ": " + sentence["value"] + _END_SIGNAL
        if get_conversation:
            conversation += sentence["value"]
    conversation += _BEGIN_SIGNAL
    return conversation


def preprocess_multimodal(sources, data_args):
    """Normalise ``<image>`` placement in place and return ``sources``.

    With ``data_args.is_multimodal``: any sentence containing ``<image>`` becomes
    ``"<image>\\n" + rest`` (stripped); for ``mmtag`` conversation versions the token is wrapped as
    ``<Image><image></Image>``; with ``data_args.mm_use_im_start_end`` it becomes
    ``<im_start><image><im_end>``.
    """
    if not getattr(data_args, "is_multimodal", False):
        return sources
    use_start_end = getattr(data_args, "mm_use_im_start_end", False)
    mmtag = "mmtag" in conversation_lib.default_conversation.version
    for source in sources:
        for sentence in source:
            value = sentence["value"]
            if DEFAULT_IMAGE_TOKEN in value:
                value = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                value = (DEFAULT_IMAGE_TOKEN + "\n" + value).strip()
                if mmtag:
                    value = value.replace(DEFAULT_IMAGE_TOKEN, "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
            if use_start_end:
                value = value.replace(DEFAULT_IMAGE_TOKEN,
                                      DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
            sentence["value"] = value
    return sources


# ---------------------------------------------------------------------- offset-based masking

def _sample_name(sample_id, index: int, n_sources: int) -> str:
    if sample_id is None:
        return f"#{index}"
    if isinstance(sample_id, (list, tuple)):
        if len(sample_id) == n_sources:
            return repr(sample_id[index])
        return f"{sample_id!r}[{index}]"
    if n_sources == 1:
        return repr(sample_id)
    return f"{sample_id!r}[{index}]"


def _describe(name: str, prompt: str) -> str:
    return f"sample {name} (conversation starts {prompt[:80]!r})"


def _tokenize_with_offsets(prompt: str, tokenizer, has_image: bool):
    """Token ids and per-token ``(start, end)`` character spans in ``prompt``.

    With ``has_image`` the prompt is split on ``<image>`` and assembled like
    ``tokenizer_image_token``: one leading BOS, later chunks' BOS dropped, ``IMAGE_TOKEN_INDEX``
    between chunks. The sentinel and tokens without a span get ``None``.
    """
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN) if has_image else [prompt]
    bos = tokenizer.bos_token_id
    ids: List[int] = []
    spans: List[Optional[Tuple[int, int]]] = []
    keep_bos = False
    pos = 0
    for i, chunk in enumerate(chunks):
        try:
            enc = tokenizer(chunk, return_offsets_mapping=True)
        except NotImplementedError as e:  # pure-Python tokenizers have no offset mapping
            raise TypeError(
                "label masking needs a tokenizers-backed tokenizer that supports "
                "return_offsets_mapping=True; got " + type(tokenizer).__name__) from e
        c_ids = list(enc["input_ids"])
        c_offs = [tuple(o) for o in enc["offset_mapping"]]
        if i == 0:
            keep_bos = len(c_ids) > 0 and bos is not None and c_ids[0] == bos
        else:
            ids.append(IMAGE_TOKEN_INDEX)
            spans.append(None)
            if keep_bos and len(c_ids) > 0 and c_ids[0] == bos:
                c_ids, c_offs = c_ids[1:], c_offs[1:]
        for tid, (s, e) in zip(c_ids, c_offs):
            ids.append(tid)
            spans.append((pos + s, pos + e) if e > s else None)
        pos += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    return ids, spans


def _segments_to_spans(segments: Sequence[Tuple[str, bool]], has_image: bool) -> List[Tuple[int, int]]:
    """Character spans of the supervised segments (adjacent ones merged, ``<image>`` cut out)."""
    spans: List[Tuple[int, int]] = []
    pos = 0
    for text, supervised in segments:
        if supervised and text:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        pos += len(text)
    if not has_image:
        return spans
    prompt = "".join(t for t, _ in segments)
    out: List[Tuple[int, int]] = []
    for a, b in spans:
        start = a
        while True:
            k = prompt.find(DEFAULT_IMAGE_TOKEN, start, b)
            if k < 0 or k + len(DEFAULT_IMAGE_TOKEN) > b:
                break
            if k > start:
                out.append((start, k))
            start = k + len(DEFAULT_IMAGE_TOKEN)
        if start < b:
            out.append((start, b))
    return out


def _same_up_to_leading_space(decoded: str, expected: str) -> bool:
    if decoded == expected:
        return True
    strip1 = lambda s: s[1:] if s.startswith(" ") else s  # noqa: E731
    return strip1(decoded) == strip1(expected)


def _check_special_tokens(prompt: str, ids: Sequence[int], tokenizer, name: str) -> None:
    """Special tokens written as text (e.g. ``</s>``) must have become their single ids."""
    seen = set()
    for tok in getattr(tokenizer, "all_special_tokens", []) or []:
        if not tok or tok in seen:
            continue
        seen.add(tok)
        n_text = prompt.count(tok)
        if n_text == 0:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None:
            continue
        n_ids = sum(1 for x in ids if x == tid)
        if n_ids < n_text:
            raise TokenizationMismatchError(
                f"tokenization mismatch in {_describe(name, prompt)}: the special token {tok!r} "
                f"appears {n_text} time(s) in the text but its id {tid} only {n_ids} time(s) in "
                f"the tokens; the tokenizer splits special tokens written as text")


def _labels_for_prompt(prompt: str, segments, tokenizer, has_image: bool, name: str):
    """Return ``(input_ids, labels)`` 1-D LongTensors for one rendered prompt."""
    ids, tok_spans = _tokenize_with_offsets(prompt, tokenizer, has_image)
    _check_special_tokens(prompt, ids, tokenizer, name)
    sup_spans = _segments_to_spans(segments, has_image)

    labels = [IGNORE_INDEX] * len(ids)
    owner = [-1] * len(ids)
    for k, (a, b) in enumerate(sup_spans):
        picked = []
        for t, span in enumerate(tok_spans):
            if span is None or ids[t] == IMAGE_TOKEN_INDEX:
                continue
            s, e = span
            if s < b and e > a:
                if owner[t] != -1:
                    raise TokenizationMismatchError(
                        f"tokenization mismatch in {_describe(name, prompt)}: token {t} "
                        f"({tokenizer.convert_ids_to_tokens(ids[t])!r}) straddles two supervised parts "
                        f"{prompt[sup_spans[owner[t]][0]:sup_spans[owner[t]][1]]!r} and {prompt[a:b]!r}")
                owner[t] = k
                picked.append(t)
        expected = prompt[a:b]
        decoded = tokenizer.decode([ids[t] for t in picked], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        if not _same_up_to_leading_space(decoded, expected):
            raise TokenizationMismatchError(
                f"tokenization mismatch in {_describe(name, prompt)}: supervised tokens decode to "
                f"{decoded!r} but the supervised text is {expected!r}")
        for t in picked:
            labels[t] = ids[t]

    if all(x == IGNORE_INDEX for x in labels):
        raise NoSupervisedTokensError(
            f"no supervised token in {_describe(name, prompt)}: the sample would give zero loss "
            f"(no non-empty assistant answer?)")
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def _render_with_template(source, conv, index: int, name: str):
    """Fill ``conv`` (a copy of the template) with a ``[{"from", "value"}, ...]`` sample."""
    _check_turns(source, name)
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    if len(source) > 0 and normalize_role(source[0]["from"]) != "human":
        source = source[1:]  # drop a leading non-human turn, as upstream
    conv.messages = []
    for j, sentence in enumerate(source):
        role = roles[normalize_role(sentence["from"])]
        if role != conv.roles[j % 2]:
            raise ValueError(f"roles do not alternate human/gpt in sample {name} at turn {j}")
        conv.append_message(role, sentence["value"])
    return conv.get_prompt(), conv.get_prompt_segments()


def _preprocess_templated(sources, tokenizer, has_image, sample_id):
    conv = conversation_lib.default_conversation.copy()
    input_ids, labels = [], []
    for i, source in enumerate(sources):
        name = _sample_name(sample_id, i, len(sources))
        prompt, segments = _render_with_template(source, conv, i, name)
        ids, lab = _labels_for_prompt(prompt, segments, tokenizer, has_image, name)
        input_ids.append(ids)
        labels.append(lab)
    return dict(input_ids=input_ids, labels=labels)


# ---------------------------------------------------------------------- public preprocessors

def preprocess_plain(sources, tokenizer, sample_id=None) -> Dict[str, List[torch.Tensor]]:
    """Pretraining (``plain``) samples: ``"<image>" + caption + "\\n"``.

    Each source must have exactly two turns with ``<image>`` in the first; the first turn is replaced
    (in place, as upstream) by exactly ``<image>``. Only the caption and the trailing newline are
    supervised.

    Returns ``dict(input_ids=[1-D LongTensor, ...], labels=[1-D LongTensor, ...])`` (one per source).
    Raises ValueError for a malformed source, :class:`TokenizationMismatchError`,
    :class:`NoSupervisedTokensError`.
    """
    sep = conversation_lib.default_conversation.sep
    input_ids, labels = [], []
    for i, source in enumerate(sources):
        name = _sample_name(sample_id, i, len(sources))
        _check_turns(source, name)
        if len(source) != 2:
            raise ValueError(f"plain sample {name} must have exactly 2 turns, got {len(source)}")
        if DEFAULT_IMAGE_TOKEN not in source[0]["value"]:
            raise ValueError(f"plain sample {name}: the first turn must contain {DEFAULT_IMAGE_TOKEN}")
        source[0]["value"] = DEFAULT_IMAGE_TOKEN
        segments = [(DEFAULT_IMAGE_TOKEN, False), (source[1]["value"] + sep, True)]
        prompt = "".join(t for t, _ in segments)
        ids, lab = _labels_for_prompt(prompt, segments, tokenizer, True, name)
        input_ids.append(ids)
        labels.append(lab)
    return dict(input_ids=input_ids, labels=labels)


def preprocess_v1(sources, tokenizer, has_image=False, sample_id=None) -> Dict[str, List[torch.Tensor]]:
    """Vicuna-v1 style samples (``USER: Q ASSISTANT: A</s>...``) rendered with the default template.

    Supervised: every answer plus its ``</s>``. Returns
    ``dict(input_ids=[1-D LongTensor, ...], labels=[1-D LongTensor, ...])`` (one per source).
    Raises ValueError (non-alternating roles), :class:`TokenizationMismatchError`,
    :class:`NoSupervisedTokensError`.
    """
    return _preprocess_templated(sources, tokenizer, has_image, sample_id)


def preprocess_llama_2(sources, tokenizer, has_image=False, sample_id=None) -> Dict[str, List[torch.Tensor]]:
    """LLaMA-2 chat samples (``[INST] Q [/INST] A </s><s>[INST] ...``).

    Supervised: every answer plus ``" </s>"``. Same return value and errors as :func:`preprocess_v1`.
    """
    return _preprocess_templated(sources, tokenizer, has_image, sample_id)


def preprocess_mpt(sources, tokenizer, has_image=False, sample_id=None) -> Dict[str, List[torch.Tensor]]:
    """ChatML/MPT samples (``<|im_start|>assistant\\nA<|im_end|>``).

    Supervised: every answer plus ``<|im_end|>``. Same return value and errors as :func:`preprocess_v1`.
    """
    return _preprocess_templated(sources, tokenizer, has_image, sample_id)


def _preprocess_v0(sources, tokenizer, has_image, sample_id):
    conv = conversation_lib.default_conversation
    header = f"{conv.system}\n\n"
    input_ids, labels = [], []
    for i, source in enumerate(sources):
        name = _sample_name(sample_id, i, len(sources))
        _check_turns(source, name)  # _add_speaker_and_signal would render unknown roles as "unknown"
        source = copy.deepcopy(source)
        _add_speaker_and_signal(header, source)
        segments: List[Tuple[str, bool]] = [(header, False)]
        prev_gpt = False
        stop = _BEGIN_SIGNAL.rstrip()  # "###"; its trailing space belongs to the next word's token
        for sentence in source:
            value = sentence["value"]
            if prev_gpt:  # the "###" that closes an answer is part of what the model must emit
                segments.append((stop, True))
                value = value[len(stop):]
            is_gpt = sentence["from"].lower() == "gpt"
            segments.append((value, is_gpt))
            prev_gpt = is_gpt
        segments.append((stop, prev_gpt))
        segments.append((_BEGIN_SIGNAL[len(stop):], False))
        prompt = "".join(t for t, _ in segments)
        ids, lab = _labels_for_prompt(prompt, segments, tokenizer, has_image, name)
        input_ids.append(ids)
        labels.append(lab)
    return dict(input_ids=input_ids, labels=labels)


def preprocess(sources, tokenizer, has_image: bool = False, sample_id=None) -> Dict[str, List[torch.Tensor]]:
    """Dispatch on ``llava.conversation.default_conversation`` (read at call time).

    PLAIN style -> :func:`preprocess_plain`; LLAMA_2 style -> :func:`preprocess_llama_2`; version
    starting with ``"v1"`` -> :func:`preprocess_v1`; version ``"mpt"`` -> :func:`preprocess_mpt`;
    anything else -> the legacy v0 ``"### Human: ...\\n### Assistant: ...\\n"`` format.

    ``sources`` is a list of conversations (each a list of ``{"from": "human"|"gpt", "value": str}``).
    ``sample_id`` (optional; one id, or one per source) is used in error messages.

    Returns ``dict(input_ids=[1-D LongTensor, ...], labels=[1-D LongTensor, ...])``, one entry per
    source, unpadded and untruncated; ``labels`` is ``IGNORE_INDEX`` except on supervised tokens, where
    it equals ``input_ids``. With ``has_image`` every ``<image>`` is the ``IMAGE_TOKEN_INDEX`` sentinel.

    Raises :class:`TokenizationMismatchError` (a ValueError) when the supervised tokens do not decode
    to the supervised text, :class:`NoSupervisedTokensError` (a ValueError) when nothing is
    supervised, and ValueError for malformed samples.
    """
    conv = conversation_lib.default_conversation
    style = conversation_lib.SeparatorStyle
    if conv.sep_style == style.PLAIN:
        return preprocess_plain(sources, tokenizer, sample_id=sample_id)
    if conv.sep_style == style.LLAMA_2:
        return preprocess_llama_2(sources, tokenizer, has_image=has_image, sample_id=sample_id)
    if conv.version.startswith("v1"):
        return preprocess_v1(sources, tokenizer, has_image=has_image, sample_id=sample_id)
    if conv.version == "mpt":
        return preprocess_mpt(sources, tokenizer, has_image=has_image, sample_id=sample_id)
    return _preprocess_v0(sources, tokenizer, has_image, sample_id)
