"""How many embeddings one image becomes in the LLM's sequence, without running the model.

The dataset needs this to know where a sample's answer lands once the `<image>` sentinel is replaced by
the image's features: with ``anyres`` it is far more than the tower's 576 tokens (base image + crop grid,
unpadded, plus newline tokens), and a count that is too low lets the model's truncation cut the whole answer
away unnoticed. :func:`visual_token_count` mirrors ``LlavaMetaForCausalLM._image_features_per_image`` and
``_merge_spatial`` step by step; ``tests/test_bad_input_images.py`` checks it against the real merge.
"""
from __future__ import annotations

from typing import Tuple


def visual_token_count(image_size: Tuple[int, int], *, aspect_ratio, merge_type: str, grid_pinpoints,
                       patches_per_side: int, tower_image_size: int, tokens_per_crop: int) -> int:
    """Embeddings the model puts in place of one image whose original size is `image_size` = (w, h).

    * not ``anyres`` (``pad``, ``square``, ...): one crop, batched as a 4-D tensor, so `tokens_per_crop`
      whatever the merge type.
    * ``anyres`` + ``flat``: every crop's tokens in a row: (1 + crops) * `tokens_per_crop`.
    * ``anyres`` + ``spatial``: base crop + the crop grid re-laid as one (rows*side) x (cols*side) map.
    * ``anyres`` + ``spatial_unpad``: base + that map with the rows (or columns) of padding that
      resize-and-pad added cut away, plus one newline token at the end of each remaining row.

    `patches_per_side` and `tower_image_size` are the tower's (24 and 336 for CLIP ViT-L/14-336);
    `tokens_per_crop` is what the tower+projector yield per crop (576, or 577 with ``cls_patch``)."""
    if aspect_ratio != "anyres":
        return tokens_per_crop
    from llava.mm_utils import get_anyres_image_grid_shape  # the function the merge itself calls

    cols, rows = get_anyres_image_grid_shape(image_size, grid_pinpoints, tower_image_size)
    if merge_type == "flat":
        return (1 + cols * rows) * tokens_per_crop
    if not merge_type.startswith("spatial"):
        raise ValueError(f"Unexpected mm_patch_merge_type: {merge_type}")
    if tokens_per_crop != patches_per_side ** 2:
        # The merge views each crop as a side x side map; extra tokens (CLS) make that view fail.
        raise ValueError(f"mm_patch_merge_type={merge_type} needs {patches_per_side}x{patches_per_side} tokens per "
                         f"crop, the tower gives {tokens_per_crop} (use mm_vision_select_feature=patch)")
    height, width = rows * patches_per_side, cols * patches_per_side
    if "unpad" not in merge_type:
        return tokens_per_crop + height * width
    kept_h, kept_w = unpadded_shape(image_size, (height, width))
    return tokens_per_crop + kept_h * (kept_w + 1)


def unpadded_shape(original_size: Tuple[int, int], grid_shape: Tuple[int, int]) -> Tuple[int, int]:
    """(rows, cols) that ``llava_arch.unpad_image`` keeps of a `grid_shape` = (rows, cols) feature map.

    Same float expressions, in the same order, so the int() truncations agree. The cut is the same amount on
    both sides, `(extra // 2)` each, so an odd amount of padding keeps one row/column more than the image."""
    original_width, original_height = original_size
    current_height, current_width = grid_shape
    if original_width / original_height > current_width / current_height:
        new_height = int(original_height * current_width / original_width)
        pad = (current_height - new_height) // 2
        return current_height - 2 * pad, current_width
    new_width = int(original_width * current_height / original_height)
    pad = (current_width - new_width) // 2
    return current_height, current_width - 2 * pad


__all__ = ["visual_token_count", "unpadded_shape"]
