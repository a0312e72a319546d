"""Image and prompt helpers shared by training, evaluation and serving (``llava.mm_utils``)."""
from __future__ import annotations

import ast
import math
from typing import List, Optional, Tuple

import torch
from transformers import StoppingCriteria

from llava.constants import IMAGE_TOKEN_INDEX


# ---------------------------------------------------------------------- anyres (LLaVA-1.6) helpers

def _parse_pinpoints(grid_pinpoints) -> List[Tuple[int, int]]:
    """Grid pinpoints come either as a list of ``[width, height]`` pairs or as its string repr."""
    if isinstance(grid_pinpoints, str):
        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    return [tuple(int(v) for v in res) for res in grid_pinpoints]


def select_best_resolution(original_size, possible_resolutions):
    """Pick the ``(width, height)`` among ``possible_resolutions`` that keeps most of the image.

    The image (``original_size = (width, height)``) is scaled to fit each candidate without changing
    its aspect ratio. The winner maximises the effective (kept) pixel count, capped at the original's
    pixel count; ties go to the candidate that wastes the fewest pixels.
    """
    orig_w, orig_h = original_size
    best = None
    best_effective = 0
    best_wasted = float("inf")
    for width, height in possible_resolutions:
        scale = min(width / orig_w, height / orig_h)
        scaled_w, scaled_h = int(orig_w * scale), int(orig_h * scale)
        effective = min(scaled_w * scaled_h, orig_w * orig_h)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best_effective = effective
            best_wasted = wasted
            best = (width, height)
    return best


def resize_and_pad_image(image, target_resolution):
    """Resize a PIL image to fit ``(width, height)`` keeping its aspect ratio, centred on black."""
    from PIL import Image

    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w = target_w / orig_w
    scale_h = target_h / orig_h
    if scale_w < scale_h:
        new_w = target_w
        new_h = min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_h = target_h
        new_w = min(math.ceil(orig_w * scale_h), target_w)
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image, patch_size):
    """Cut a PIL image into ``patch_size`` squares, row by row (top to bottom, left to right)."""
    width, height = image.size
    patches = []
    for top in range(0, height, patch_size):
        for left in range(0, width, patch_size):
            patches.append(image.crop((left, top, left + patch_size, top + patch_size)))
    return patches


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size):
    """Number of crops ``(columns, rows)`` that anyres processing makes for an image of ``image_size``."""
    width, height = select_best_resolution(image_size, _parse_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def process_anyres_image(image, processor, grid_pinpoints):
    """Anyres processing: a ``[1 + n_crops, 3, H, W]`` tensor.

    Entry 0 is the whole image resized to ``(shortest_edge, shortest_edge)`` and run through the
    processor; the rest are the crops of the image resized-and-padded to the best grid resolution,
    each ``crop_size['height']`` pixels square.
    """
    best = select_best_resolution(image.size, _parse_pinpoints(grid_pinpoints))
    padded = resize_and_pad_image(image, best)
    patches = divide_to_patches(padded, processor.crop_size["height"])
    edge = processor.size["shortest_edge"]
    base = image.resize((edge, edge))
    tiles = [base] + patches
    tensors = [processor.preprocess(tile, return_tensors="pt")["pixel_values"][0] for tile in tiles]
    return torch.stack(tensors, dim=0)


def load_image_from_base64(image):
    import base64
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img, background_color):
    """Centre ``pil_img`` on a square canvas (side = its longer edge) filled with ``background_color``."""
    from PIL import Image

    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    canvas = Image.new(pil_img.mode, (side, side), background_color)
    canvas.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return canvas


def process_images(images, image_processor, model_cfg):
    """Turn PIL images into model pixel tensors following ``model_cfg.image_aspect_ratio``.

    ``'pad'``: square-pad with the processor's mean colour, then preprocess (``[3, H, W]`` each).
    ``'anyres'``: :func:`process_anyres_image` (``[1 + n_crops, 3, H, W]`` each).
    Otherwise the processor is called on the whole list (resize + center-crop) and its batch returned.
    The per-image results are stacked when all shapes agree, else returned as a list.
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)  # any config-like object (e.g. a namespace)
    out = []
    if aspect == "pad":
        fill = tuple(int(x * 255) for x in image_processor.image_mean)
        for image in images:
            image = expand2square(image, fill)
            out.append(image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
    elif aspect == "anyres":
        for image in images:
            out.append(process_anyres_image(image, image_processor, model_cfg.image_grid_pinpoints))
    else:
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if len(out) > 0 and all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out


# ---------------------------------------------------------------------- prompt tokenization

def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenize ``prompt`` with ``image_token_index`` in place of every literal ``<image>``.

    Each text chunk is tokenized on its own (with the tokenizer's special tokens). When the first
    chunk starts with BOS that single BOS is kept and the leading BOS of every later chunk is
    dropped. Returns a list of ints, or a 1-D LongTensor for ``return_tensors='pt'``.
    """
    if return_tensors not in (None, "pt"):
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    keep_bos = len(chunks) > 0 and len(chunks[0]) > 0 and bos is not None and chunks[0][0] == bos

    input_ids: List[int] = []
    for i, ids in enumerate(chunks):
        ids = list(ids)
        if i > 0:
            input_ids.append(image_token_index)
        if keep_bos:
            if i == 0:
                input_ids.append(ids[0])
                ids = ids[1:]
            elif len(ids) > 0 and ids[0] == bos:
                ids = ids[1:]
        input_ids.extend(ids)

    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    return input_ids


def get_model_name_from_path(model_path):
    """Last path component; ``<parent>_checkpoint-N`` for a ``checkpoint-N`` folder."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop generation once every row has produced one of ``keywords``.

    Only tokens generated after the prompt are inspected. ``input_ids`` (the prompt handed to
    ``generate``) may be None. Whether the sequences passed to ``__call__`` start with that prompt
    (generation from ``input_ids``) or hold only new tokens (generation from ``inputs_embeds``) is
    decided on the first call and kept for the rest of that generation, so a keyword present in the
    prompt never triggers a stop.

    ``__call__`` returns a Python bool: True only when all rows have stopped.
    """

    def __init__(self, keywords, tokenizer, input_ids=None):
        if isinstance(keywords, str):
            keywords = [keywords]
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        self.max_keyword_len = 0
        bos = tokenizer.bos_token_id
        for kw in self.keywords:
            ids = list(tokenizer(kw).input_ids)
            if len(ids) > 1 and bos is not None and ids[0] == bos:
                ids = ids[1:]
            self.max_keyword_len = max(self.max_keyword_len, len(ids))
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        if input_ids is None:
            self.prompt_ids = None
            self.start_len = 0
        else:
            prompt = torch.as_tensor(input_ids)
            if prompt.dim() == 1:
                prompt = prompt.unsqueeze(0)
            self.prompt_ids = prompt
            self.start_len = prompt.shape[1]
        self._prompt_len: Optional[int] = None  # decided on the first call
        self._last_len = -1

    def _new_token_offset(self, output_ids: torch.Tensor) -> int:
        cur_len = output_ids.shape[1]
        if self._prompt_len is None or cur_len < self._last_len:
            # First call of a generation (or the object is reused for a new one).
            prompt_len = 0
            if self.prompt_ids is not None and cur_len > self.start_len and self.start_len > 0:
                head = output_ids[:, : self.start_len]
                prompt = self.prompt_ids.to(device=output_ids.device, dtype=output_ids.dtype)
                if prompt.shape[0] != head.shape[0]:
                    if head.shape[0] % prompt.shape[0] == 0:
                        prompt = prompt.repeat_interleave(head.shape[0] // prompt.shape[0], dim=0)
                    else:
                        prompt, head = prompt[:1], head[:1]
                if torch.equal(head, prompt):
                    prompt_len = self.start_len
            self._prompt_len = prompt_len
        self._last_len = cur_len
        return self._prompt_len

    def _row_stopped(self, new_ids: torch.Tensor) -> bool:
        n_new = new_ids.shape[0]
        if n_new == 0:
            return False
        for kw_ids in self.keyword_ids:
            k = kw_ids.shape[0]
            if 0 < k <= n_new and torch.equal(new_ids[-k:], kw_ids.to(new_ids.device)):
                return True
        window = min(n_new, self.max_keyword_len)
        if window <= 0:
            return False
        text = self.tokenizer.decode(new_ids[-window:].tolist(), skip_special_tokens=True)
        return any(kw in text for kw in self.keywords)

    def call_for_batch(self, output_ids: torch.LongTensor, scores=None, **kwargs) -> bool:
        offset = self._new_token_offset(output_ids)
        return self._row_stopped(output_ids[0, offset:])

    def __call__(self, output_ids: torch.LongTensor, scores=None, **kwargs) -> bool:
        offset = self._new_token_offset(output_ids)
        return all(self._row_stopped(output_ids[i, offset:]) for i in range(output_ids.shape[0]))
