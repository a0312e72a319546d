"""Reading LLaVA training records (JSON list or JSONL) and checking their structure up front.

Why a separate pass: the dataset is read lazily, so a malformed record would otherwise surface as a
KeyError or TypeError deep inside rendering, hours into a run, and only for the first bad sample hit.
Here every record is checked once when the dataset is built; all problems are collected and the run
stops before training with the file, the first few bad samples and the total count.

Accepted record shape (upstream LLaVA's)::

    {"id": <any, optional>, "image": "<non-empty relative path>" (optional),
     "conversations": [{"from": "human"|"gpt", "value": "<text>"}, ...]}

Role names are compared case-insensitively ("Human"/"GPT" are accepted), like upstream's legacy v0
renderer (``_add_speaker_and_signal`` lower-cases them); see :func:`llava.train.preprocess.normalize_role`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence

from llava.constants import DEFAULT_IMAGE_TOKEN

from .preprocess import ROLE_NAMES, normalize_role

logger = logging.getLogger(__name__)

# How many bad samples an error message lists before it only gives the count.
MAX_LISTED = 5
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A training sample (or data file) that cannot be used as it is; the message names it."""


class Records(list):
    """The records of one file; ``lines[i]`` is the 1-based line of record ``i`` (JSONL only, else None)."""

    def __init__(self, records, path: str, lines: Optional[List[int]] = None):
        super().__init__(records)
        self.path = path
        self.lines = lines


def sample_id(record, index: int):
    """The record's ``id``, or ``#<index>`` when it has none (ids are optional upstream)."""
    if isinstance(record, dict) and record.get("id") is not None:
        return record["id"]
    return f"#{index}"


def sample_label(record, index: int, line: Optional[int] = None) -> str:
    """``"sample <id> (index <i>)"``, plus ``" on line <n>"`` for JSONL."""
    label = f"sample {sample_id(record, index)} (index {index})"
    return f"{label} on line {line}" if line is not None else label


def describe(path: str, record, index: int, line: Optional[int] = None) -> str:
    """``"<file>: sample <id> (index <i>)"``, the prefix of every error about one sample."""
    return f"{path}: {sample_label(record, index, line)}"


def _report(path: str, bad: List[str], total: int, what: str) -> str:
    """One line for a single bad sample; else the count and the first few, one per line."""
    if len(bad) == 1:
        return f"{path}: {bad[0]}"
    shown = min(len(bad), MAX_LISTED)
    return (f"{path}: {len(bad)} of {total} samples {what}; the first {shown}:\n"
            + "\n".join("  " + b for b in bad[:MAX_LISTED]))


# ---------------------------------------------------------------------- reading

def load_records(path: str) -> Records:
    """Read ``path`` (``.jsonl``: one record per line; otherwise one JSON list) and check every record.

    Raises FileNotFoundError for a missing file and :class:`DataError` for a file that is not UTF-8,
    not valid JSON/JSONL, not a list of records, or has malformed records (see :func:`check_records`).
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"--data_path {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    text = _decode_utf8(raw, path)
    del raw  # the mix665k file is ~1 GB: do not keep the bytes alongside the text
    if path.endswith(".jsonl"):
        records = _parse_jsonl(text, path)
    else:
        records = Records(_parse_json_list(text, path), path)
    check_records(records, path)
    return records


def _decode_utf8(raw: bytes, path: str) -> str:
    # Upstream opens the file in the locale's encoding, which can silently turn a Latin-1 file into
    # mojibake that is then trained on; insist on UTF-8 and point at the first bad byte instead.
    skip = len(_BOM) if raw.startswith(_BOM) else 0  # a BOM is harmless, json.loads would reject it
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = raw.count(b"\n", 0, offset) + 1
        column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
        bad = raw[offset:offset + 1].hex()
        raise DataError(f"{path}: not UTF-8: byte 0x{bad} at byte offset {offset} (line {line}, byte {column} "
                        f"of that line) is invalid ({e.reason}); re-encode the file as UTF-8") from e


def _parse_json_list(text: str, path: str) -> list:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":
            hint = " (one JSON value per line? then name the file .jsonl)"
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{hint}") from e
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of samples at the top level, got "
                        f"{_with_article(_json_type(records))}")
    return records


def _parse_jsonl(text: str, path: str) -> Records:
    # Split on "\n" only: str.splitlines() would also split on U+2028 etc., which may appear inside
    # JSON strings, and would shift the line numbers given in messages.
    records, lines, bad = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            bad.append((number, e))
            continue
        lines.append(number)
    if bad:
        listed = "\n".join(f"  line {n}: {e.msg} at column {e.colno}" for n, e in bad[:MAX_LISTED])
        raise DataError(f"{path}: {len(bad)} line(s) are not valid JSON (JSONL needs one record per line); "
                        f"the first {min(len(bad), MAX_LISTED)}:\n{listed}") from bad[0][1]
    return Records(records, path, lines)


# ---------------------------------------------------------------------- structure

def check_records(records: Sequence, path: str) -> None:
    """Raise :class:`DataError` listing the first few malformed records and how many there are.

    One pass of cheap type checks per record and turn (about a second for 665K records).
    """
    lines = getattr(records, "lines", None)
    bad = []
    for i, record in enumerate(records):
        problems = record_problems(record)
        if problems:
            bad.append(f"{sample_label(record, i, lines[i] if lines else None)}: {'; '.join(problems)}")
    if bad:
        raise DataError(_report(path, bad, len(records), "are malformed"))


def record_problems(record) -> List[str]:
    """What is structurally wrong with one record (empty when nothing is)."""
    if not isinstance(record, dict):
        return [f"is a JSON {_json_type(record)}, not an object"]
    problems = []
    if "conversations" not in record:
        problems.append("has no 'conversations' key")
    elif not isinstance(record["conversations"], list):
        problems.append(f"'conversations' is a JSON {_json_type(record['conversations'])}, not a list")
    elif not record["conversations"]:
        problems.append("'conversations' is an empty list")
    else:
        for j, turn in enumerate(record["conversations"]):
            problems.extend(f"turn {j}: {p}" for p in turn_problems(turn))
    if "image" in record:
        problem = _image_problem(record["image"])
        if problem:
            problems.append(problem)
    return problems


def turn_problems(turn) -> List[str]:
    """What is wrong with one ``{"from": ..., "value": ...}`` turn."""
    if not isinstance(turn, dict):
        return [f"is a JSON {_json_type(turn)}, not an object {{\"from\": ..., \"value\": ...}}"]
    problems = []
    if "from" not in turn:
        problems.append("has no 'from' key")
    elif not isinstance(turn["from"], str):
        problems.append(f"'from' is a JSON {_json_type(turn['from'])}, not a string")
    elif normalize_role(turn["from"]) is None:
        problems.append(f"unknown role {turn['from']!r} in 'from'; accepted: "
                        f"{', '.join(repr(r) for r in ROLE_NAMES)} (any letter case)")
    if "value" not in turn:
        problems.append("has no 'value' key")
    elif not isinstance(turn["value"], str):
        problems.append(f"'value' is a JSON {_json_type(turn['value'])}, not a string")
    return problems


def _image_problem(image) -> Optional[str]:
    if isinstance(image, list):
        return "'image' is a list: a list of images per sample is not supported by this dataset"
    if not isinstance(image, str):
        return f"'image' is a JSON {_json_type(image)}, not a string (omit the key for a text-only sample)"
    if not image.strip():
        return "'image' is an empty string (omit the key for a text-only sample)"
    return None


# ---------------------------------------------------------------------- image placeholders

def placeholder_problem(record) -> Optional[str]:
    """Whether the ``<image>`` placeholders in the text disagree with the images the record brings.

    This dataset gives each sample at most one image, so an image sample needs exactly one
    ``<image>`` and a text-only sample none. Upstream silently merges several ``<image>`` of one turn
    into one, and tokenizes ``<image>`` in a text-only sample as plain text; both hide a malformed
    sample, so both are reported here. Expects a record that passed :func:`record_problems`.
    """
    n_images = 1 if "image" in record else 0
    per_turn = [turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in record["conversations"]]
    n_text = sum(per_turn)
    if n_text == n_images:
        return _answer_placeholder(record, per_turn)
    turns = ", ".join(str(j) for j, n in enumerate(per_turn) if n)
    if n_images == 0:
        return (f"is text-only (no 'image' key) but its text has {n_text} {DEFAULT_IMAGE_TOKEN} "
                f"placeholder(s) (turn {turns}), and 0 images; add the image or remove the placeholder")
    if n_text == 0:
        return f"has an image but no {DEFAULT_IMAGE_TOKEN} in its text (1 image, 0 placeholders)"
    return (f"has {n_text} {DEFAULT_IMAGE_TOKEN} placeholders in its text (turn {turns}) but brings 1 image; "
            f"this dataset supports one image per sample, with exactly one {DEFAULT_IMAGE_TOKEN} for it "
            f"(upstream would silently merge placeholders within one turn)")


def _answer_placeholder(record, per_turn) -> Optional[str]:
    """An ``<image>`` in an answer turn: preprocessing would move it to the start of that answer, so the image
    features would sit inside the text the model is trained to predict."""
    for j, n in enumerate(per_turn):
        if n and normalize_role(record["conversations"][j]["from"]) == "gpt":
            return (f"has its {DEFAULT_IMAGE_TOKEN} placeholder in turn {j}, an answer ('gpt') turn; the image "
                    f"belongs in a question ('human') turn")
    return None


def warn_suspicious_records(records: Sequence, path: str) -> None:
    """Log, before training, what is legal but loses or confuses data: samples whose leading answer turn the
    chat templates drop (as upstream does), and ids used by more than one sample (errors name samples by id)."""
    lines = getattr(records, "lines", None)
    leading, first_index, repeated = [], {}, []
    for i, record in enumerate(records):
        label = sample_label(record, i, lines[i] if lines else None)
        if normalize_role(record["conversations"][0]["from"]) == "gpt":
            leading.append(label)
        rid = record.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool):
            if rid in first_index:
                repeated.append(f"{label} repeats the id of index {first_index[rid]}")
            else:
                first_index[rid] = i
    if leading:
        logger.warning("%s\n(the v1, llama_2 and mpt templates drop a leading answer turn, as upstream LLaVA does)",
                       _report(path, [f"{b} starts with an answer ('gpt') turn" for b in leading], len(records),
                               "start with an answer ('gpt') turn"))
    if repeated:
        logger.warning("%s\n(errors and reports name samples by id and index; the index is unique)",
                       _report(path, repeated, len(records), "reuse an id"))


def check_placeholders(records: Sequence, path: str) -> None:
    """Refuse, before training, every sample whose ``<image>`` placeholders disagree with its images.

    Found at start-up rather than hours into a run; the same check runs again when a sample is read
    (for datasets built around these records some other way). Raises DataError listing the first few."""
    lines = getattr(records, "lines", None)
    bad = []
    for i, record in enumerate(records):
        problem = placeholder_problem(record)
        if problem:
            bad.append(f"{sample_label(record, i, lines[i] if lines else None)} {problem}")
    if bad:
        raise DataError(_report(path, bad, len(records), "have <image> placeholders that do not match their images"))


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _json_type(value) -> str:
    """The JSON name of a parsed value's type (users wrote JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
