"""Build a tiny, randomly initialised CLIP vision tower that stands in for openai/clip-vit-large-patch14-336.

Geometry matches the real tower (336px input, 14px patches, so 24x24 = 576 patch tokens plus CLS), but the
width and depth are tiny, so it runs on a CPU in milliseconds. The image processor settings are those of the
real checkpoint (shortest edge 336, centre crop 336x336, OpenAI CLIP mean/std, bicubic resize).

transformers 5 note: `CLIPImageProcessor` is the torchvision backend; without torchvision it falls back to
`CLIPImageProcessorPil` with a warning. We build and save with `CLIPImageProcessorPil` directly. The saved
`preprocessor_config.json` still says `"image_processor_type": "CLIPImageProcessor"` (as the hub file does),
which is what lets `CLIPImageProcessor`/`AutoImageProcessor` (and 4.x) load it too.

    build_vision_tower(out_dir, seed=0)   # the model + preprocessor_config.json
    make_image_processor()                # the processor alone (dualspeed_lab/toy/tower.py saves it too)
"""
from __future__ import annotations

import os

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

IMAGE_SIZE = 336
PATCH_SIZE = 14
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576

VISION_CONFIG = dict(
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    num_channels=3,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    projection_dim=64,
    hidden_act="quick_gelu",  # as in the OpenAI CLIP checkpoints
    layer_norm_eps=1e-5,
)


def make_image_processor():
    """The PIL-backed CLIP image processor with clip-vit-large-patch14-336 settings."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def build_vision_tower(out_dir: str, seed: int = 0) -> str:
    """Save a tiny `CLIPVisionModel` (fp32, weights drawn from `seed`) and its image processor to `out_dir`.

    Reload with `CLIPVisionModel.from_pretrained(out_dir)` and `CLIPImageProcessorPil.from_pretrained(out_dir)`
    (or `AutoImageProcessor.from_pretrained(out_dir)`, which picks the PIL backend when torchvision is absent).
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    os.makedirs(out_dir, exist_ok=True)
    config = CLIPVisionConfig(**VISION_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out_dir)
    make_image_processor().save_pretrained(out_dir)
    return out_dir
