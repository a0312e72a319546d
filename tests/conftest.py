"""Shared fixtures: tiny offline assets are built once per test session."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory):
    """A tiny Vicuna-layout tokenizer folder, trained offline."""
    from dualspeed_lab.tiny.tokenizer import train_tokenizer

    words = ("what color shape is the object left right top bottom red green blue yellow circle square "
             "triangle how many are there describe picture a an of in on and it this image").split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(10)) for i in range(500)]
    return train_tokenizer(str(tmp_path_factory.mktemp("tok")), texts)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path)
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The tiny offline assets (models + data) built once per session by scripts/build_tiny_assets.py."""
    from dualspeed_lab.tiny.build import build_all

    return build_all(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def vision_path(tmp_path_factory):
    """A tiny CLIP tower folder, built once per test module (the tests that load it from disk share it)."""
    from tests.helpers import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-vit-tiny-patch14-336")
