"""Tiny offline LLaVA assets: a 336px CLIP with 576 patches, a tiny Llama, its tokenizer and a few samples.

Build them with `python -m dualspeed_lab.tiny.build` (or `python scripts/build_tiny_assets.py`)."""
