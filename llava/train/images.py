"""The training dataset's side of images: decode one sample's image into pixels, and count its visual tokens.

    pixels, (w, h) = load_sample_image(path, data_args)    # ImageError (a ValueError) naming the file
    n = visual_tokens_for((w, h), data_args)               # None until record_tower_geometry has run

`load_sample_image` decodes with :func:`llava.image_io.open_rgb` (every PIL mode by an explicit rule, alpha
over the processor's mean colour, decode errors named) and refuses images whose processing canvas would
exceed ``data_args.max_image_pixels`` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`), then pads / runs anyres /
runs the processor exactly as upstream LLaVA's dataset does.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from PIL import Image

from llava.image_io import DEFAULT_MAX_PIXELS, ImageError, open_for_processing, pad_colour
from llava.model.visual_tokens import visual_token_count

# Images whose processing canvas (see llava.image_io.processing_canvas: max(w, h)^2 for pad, the source
# for anyres, the shortest-edge resize otherwise) has more pixels are refused: Pillow's default guard.
DEFAULT_MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
MAX_PIXELS_FLAG = "--max_image_pixels"

# The attributes record_tower_geometry stores on data_args, read back by visual_tokens_for.
_GEOMETRY = ("mm_patch_merge_type", "tower_patches_per_side", "tower_image_size", "tokens_per_crop")


def max_image_pixels(data_args) -> int:
    """data_args.max_image_pixels, or the default when the flag is absent or None."""
    limit = getattr(data_args, "max_image_pixels", None)
    if limit is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if int(limit) <= 0:
        raise ValueError(f"{MAX_PIXELS_FLAG} must be positive, got {limit}")
    return int(limit)


def _let_pillow_decode(limit: int):
    """Raise Pillow's own guard to `limit` when the user asked for more than it allows.

    Pillow refuses at 2x Image.MAX_IMAGE_PIXELS (a process-wide setting) before we ever see the size, so a
    raised --max_image_pixels would otherwise still be refused with Pillow's number. Only ever raised, never
    lowered, so code that set a larger limit (or None) keeps it."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def load_sample_image(path, data_args) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """(pixels, (width, height)) of the image at `path` for data_args.image_aspect_ratio.

    ``pad``: centred on a square of the processor's mean colour, then processed -> [3, H, W].
    ``anyres``: :func:`llava.mm_utils.process_anyres_image` -> [1 + crops, 3, H, W].
    Otherwise: the processor's resize + centre crop -> [3, H, W].
    (width, height) is the decoded image's size, which the anyres merge needs."""
    from llava.mm_utils import expand2square, process_anyres_image

    processor = data_args.image_processor
    aspect = getattr(data_args, "image_aspect_ratio", None)
    limit = max_image_pixels(data_args)
    _let_pillow_decode(limit)
    image = open_for_processing(path, processor, aspect, max_pixels=limit,
                                limit_hint=f"; raise it with {MAX_PIXELS_FLAG} (data_args.max_image_pixels)")
    if aspect == "pad":
        pixels = processor.preprocess(expand2square(image, pad_colour(processor)), return_tensors="pt")
        return pixels["pixel_values"][0], image.size
    if aspect == "anyres":
        return process_anyres_image(image, processor, data_args.image_grid_pinpoints), image.size
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0], image.size


def record_tower_geometry(data_args, vision_tower, model_config) -> None:
    """Store on data_args what visual_tokens_for needs: the merge type and the tower's crop geometry.

    Call once the tower is built (train.setup_vision), so the dataset can count each image's tokens the way
    the model will lay them out."""
    data_args.mm_patch_merge_type = getattr(model_config, "mm_patch_merge_type", None) or "flat"
    data_args.tower_patches_per_side = int(vision_tower.num_patches_per_side)
    data_args.tower_image_size = int(vision_tower.config.image_size)
    # feature_select keeps the CLS token in front of the patches with cls_patch.
    cls = 1 if getattr(vision_tower, "select_feature", "patch") == "cls_patch" else 0
    data_args.tokens_per_crop = int(vision_tower.num_patches) + cls


def visual_tokens_for(image_size, data_args) -> Optional[int]:
    """Embeddings the model will put in place of one image of original `image_size` = (w, h); None when
    data_args has no tower geometry (record_tower_geometry not called)."""
    geometry = {name: getattr(data_args, name, None) for name in _GEOMETRY}
    if any(value is None for value in geometry.values()):
        return None
    return visual_token_count(
        tuple(image_size), aspect_ratio=getattr(data_args, "image_aspect_ratio", None),
        merge_type=geometry["mm_patch_merge_type"], grid_pinpoints=getattr(data_args, "image_grid_pinpoints", None),
        patches_per_side=geometry["tower_patches_per_side"], tower_image_size=geometry["tower_image_size"],
        tokens_per_crop=geometry["tokens_per_crop"])


__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ImageError", "MAX_PIXELS_FLAG", "load_sample_image", "max_image_pixels",
           "record_tower_geometry", "visual_tokens_for"]
