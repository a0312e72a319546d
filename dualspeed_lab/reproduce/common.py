"""Constants and small JSON helpers shared by the reproduction driver's modules.

    from dualspeed_lab.reproduce.common import REPO, SCHEMA, read_json, write_json, short_hash

REPO: the repository root (every script runs from there). SCHEMA: the tag of a cell's result JSON.
CONV_MODE: the prompt template of evaluation. QUESTION_TYPES: the toy task's question types, in report order.
short_hash(obj): a 10-character digest of a JSON-able value (run and cache keys); write_json(path, obj): an
atomic write; read_json(path): the parsed file, or None when it is missing or unreadable.
"""
from __future__ import annotations

import hashlib
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCHEMA = "dualspeed-reproduce/cell-v1"
CONV_MODE = "vicuna_v1"
QUESTION_TYPES = ("color", "shape", "count", "position", "glyph", "exists", "size")


def short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
