"""Sizes and defaults of the toy models (dualspeed_lab/toy/models.py builds them): the CLIP tower's and the LLM's
transformers configs, the folder names under the build's output, and the build's default step counts and
learning rates. Plain data, no imports: every toy module may read it.

    from dualspeed_lab.toy.config import VISION_CONFIG, LLM_CONFIG, DEFAULTS
"""
from __future__ import annotations

__all__ = ["VISION_DIR", "LLM_DIR", "VISION_CONFIG", "LLM_CONFIG", "DEFAULTS"]

VISION_DIR = "clip-vit-toy-patch14-336"
LLM_DIR = "vicuna-toy"

# Vision tower: width 128, 4 layers (the 4th is the identity LLaVA never reads), 4 heads.
VISION_CONFIG = dict(
    image_size=336,
    patch_size=14,
    num_channels=3,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    projection_dim=128,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
LLM_CONFIG = dict(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    initializer_range=0.02,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    use_cache=True,
)
DEFAULTS = dict(vision_steps=700, vision_batch=4, vision_lr=3e-3, lm_steps=250, lm_batch=16, lm_lr=3e-3,
                vocab_size=1000, threads=1, scene_steps=1000, scene_lr=1e-3)
