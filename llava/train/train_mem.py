"""Upstream's launcher target: train with flash-attention 2 (falls back to sdpa when flash-attn is unusable)."""
import os
import sys

if __package__ in (None, ""):  # run as a file (deepspeed llava/train/train_mem.py): make `llava` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.train.train import train  # noqa: E402

if __name__ == "__main__":
    train(attn_implementation="flash_attention_2")
