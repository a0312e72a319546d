"""Decode any image file Pillow can open into the RGB picture the vision tower should see.

`Image.open(path).convert("RGB")` is wrong for several modes: a 16-bit PNG (mode ``I;16``/``I``) is clipped
to 255, so mid-grey comes out white; alpha is dropped, so whatever colour the encoder left under transparent
pixels (often black) shows; ``F`` (float) is clipped the same way. :func:`to_rgb` gives every mode one
explicit rule, :func:`open_rgb` adds the file handling (decode errors and oversized images become
:class:`ImageError`, naming the file and the cause).

Rules per Pillow mode (what :func:`to_rgb` does):

* ``RGB``, ``RGBX``, ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own conversion to
  RGB (``1`` is black/white; ``P`` looks up its palette; ``CMYK`` uses Pillow's naive formula, no ICC
  profile; ``LAB`` is CIE L*a*b* to sRGB).
* Alpha (``RGBA``, ``RGBa`` premultiplied, ``LA``, ``La``, ``PA``, a ``P`` image whose palette has alpha, and
  ``1``/``L``/``P``/``RGB`` images with a ``transparency`` colour key): composited *over* the ``background``
  colour. LLaVA passes the image processor's mean colour, the colour ``pad`` fills the square with, so a
  transparent area looks to the model exactly like padding (and normalises to ~0).
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled from 0..65535 to 0..255 (rounded), so
  32768 becomes 128. A ``transparency`` key becomes alpha and is composited as above.
* ``I`` (32-bit signed): read as the same 0..65535 range, since that is what Pillow gives for 16-bit files
  (older Pillow opened 16-bit PNGs as ``I``). Values outside it have no known meaning and are refused.
* ``F`` (32-bit float): refused. Float images come as 0..1, 0..255, 0..65535 or physical units (depth,
  temperature); nothing in the file says which, and a guess silently trains on a wrong picture.
* Any other mode: refused, naming it.

Multi-frame files (GIF, APNG, TIFF pages) give their first frame; EXIF orientation is not applied (as in
upstream LLaVA, whose data were prepared without it).
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own default for Image.MAX_IMAGE_PIXELS (1 GiB of 24-bit pixels / 3 / 4), written out because
# the attribute is a mutable global that other code sets to None.
DEFAULT_MAX_PIXELS = 89_478_485

Size = Tuple[int, int]


class ImageError(ValueError):
    """An image that cannot be turned into model input; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------- mode rules

# Modes whose conversion to RGB Pillow does correctly (as long as they have no transparency).
_PLAIN_MODES = {"RGB", "RGBX", "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"}
# Modes with an alpha channel: the Pillow conversion that leads to straight (non-premultiplied) RGBA.
_ALPHA_STEPS = {"RGBA": (), "RGBa": ("RGBA",), "LA": ("RGBA",), "La": ("LA", "RGBA"), "PA": ("RGBA",)}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_SIXTEEN_BIT_MAX = 65535


def to_rgb(image: Image.Image, *, background, name: str = "image") -> Image.Image:
    """`image` (any mode, loaded) as an RGB image, by the rules in this module's docstring.

    `background` is the (r, g, b) colour transparent pixels are composited over; `name` goes in errors."""
    background = _check_colour(background)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        image = _sixteen_bit_to_grey(image, name)
    elif mode == "F":
        raise ImageError(f"{name}: mode F (32-bit float) image: its value range is unknown (0..1, 0..255, "
                         "0..65535 or physical units), so it cannot be mapped to colours safely. "
                         "Save it as 8- or 16-bit first.")
    if image.mode in _PLAIN_MODES and _has_transparency(image):
        image = image.convert("RGBA")  # Pillow turns a colour key or palette alpha into a real alpha channel
    if image.mode in _ALPHA_STEPS:
        for step in _ALPHA_STEPS[image.mode]:
            image = image.convert(step)
        return _composite(image, background)
    if image.mode in _PLAIN_MODES:
        return image.convert("RGB")
    raise ImageError(f"{name}: unsupported image mode {image.mode!r}; convert it to RGB first.")


def _has_transparency(image: Image.Image) -> bool:
    """A colour key (PNG tRNS, GIF transparent index) or a palette with alpha entries."""
    if image.info.get("transparency") is not None:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def _check_colour(colour) -> Tuple[int, int, int]:
    colour = tuple(int(c) for c in colour)
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"background must be three values in 0..255, got {colour}")
    return colour


def _composite(rgba: Image.Image, background) -> Image.Image:
    """Straight-alpha `rgba` over an opaque `background`: out = a * colour + (1 - a) * background."""
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _sixteen_bit_to_grey(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit (or 0..65535 mode I) grey image as 8-bit L, or LA when it has a transparency key."""
    values = np.asarray(image)  # uint16 of either byte order, or int32 for mode I
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > _SIXTEEN_BIT_MAX:
        raise ImageError(f"{name}: mode {image.mode} image has values {low}..{high}; only 0..{_SIXTEEN_BIT_MAX} "
                         "(16-bit, what Pillow gives for 16-bit files) has a known meaning. "
                         "Save it as 8- or 16-bit first.")
    wide = values.astype(np.uint32)
    grey = ((wide * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(wide == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1))  # (h, w, 2) uint8: LA
    return Image.fromarray(grey)  # (h, w) uint8: L


# ---------------------------------------------------------------------------------------------- canvas

def processing_canvas(size: Size, aspect_ratio: Optional[str], shortest_edge: Optional[int] = None) -> Size:
    """The largest picture (w, h) LLaVA's preprocessing builds from a source image of `size`.

    ``pad``: the square of the longer side (``expand2square``). ``anyres``: the source itself, since its crops
    and base image are resized to at most the grid pinpoints. Otherwise the processor's resize of the shortest
    edge to `shortest_edge` (a 10000x10 image becomes 336000x336), or the source if that is larger."""
    width, height = size
    if aspect_ratio == "pad":
        side = max(width, height)
        return side, side
    if aspect_ratio == "anyres" or not shortest_edge:
        return width, height
    scale = shortest_edge / min(width, height)
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    return max(resized, size, key=lambda s: s[0] * s[1])


def pad_colour(image_processor) -> Tuple[int, int, int]:
    """The processor's mean colour in 0..255: what ``pad`` fills with, and what alpha is composited over."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def _shortest_edge(image_processor) -> Optional[int]:
    if not getattr(image_processor, "do_resize", True):
        return None
    try:
        return int(image_processor.size["shortest_edge"])
    except (KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------- files

# What Pillow raises for a file it cannot decode: UnidentifiedImageError and "image file is truncated" are
# OSErrors; some plugins raise SyntaxError/struct.error/EOFError on corrupt headers, ValueError on oversized
# text chunks; DecompressionBombError/Warning are raised (or turned into errors below) for huge headers.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def open_rgb(source, *, background, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
             canvas: Optional[Callable[[Size], Size]] = None, limit_hint: str = "",
             name: Optional[str] = None) -> Image.Image:
    """Decode `source` (a path or a binary file object) into an RGB image by :func:`to_rgb`'s rules.

    Before any pixel is decoded, the header's size is checked: ``canvas(size)`` (default: the size itself) must
    have at most `max_pixels` pixels (None: no limit of ours; Pillow's Image.MAX_IMAGE_PIXELS guard still
    applies). `limit_hint` is appended to that refusal (e.g. the flag that raises the limit). Decode errors,
    truncated files and Pillow's decompression-bomb guard raise :class:`ImageError` naming the file and the
    cause; a missing or unreadable path raises the usual OSError (FileNotFoundError, ...)."""
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        with open(source, "rb") as f:  # outside the decode handling: "no such file" is not a decode error
            return _decode(f, name, background, max_pixels, canvas, limit_hint)
    name = name or getattr(source, "name", None) or "<in-memory image>"
    return _decode(source, name, background, max_pixels, canvas, limit_hint)


def _decode(f, name, background, max_pixels, canvas, limit_hint) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its limit; an image that large is refused, not decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(f)
        except _DECODE_ERRORS as e:
            raise ImageError(f"{name}: cannot decode image: {_cause(e)}") from e
        with image:
            _check_size(image.size, name, max_pixels, canvas, limit_hint)
            try:
                image.load()  # the actual decode: truncated or corrupt data fails here
            except _DECODE_ERRORS as e:
                raise ImageError(f"{name}: cannot decode {image.format or 'image'} data: {_cause(e)}") from e
            return to_rgb(image, background=background, name=name)


def _cause(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):  # its own text repeats the file object's repr
        return "Pillow cannot identify it as an image (not an image file, or a format this Pillow cannot read)"
    text = str(e) or type(e).__name__
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"Pillow's decompression-bomb guard refused it (PIL.Image.MAX_IMAGE_PIXELS): {text}"
    return text


def _check_size(size: Size, name, max_pixels, canvas, limit_hint):
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height}).")
    if max_pixels is None:
        return
    needed = tuple(canvas(size)) if canvas is not None else tuple(size)
    area = needed[0] * needed[1]
    if area <= max_pixels:
        return
    if needed == tuple(size):
        raise ImageError(f"{name}: image of {width}x{height} ({area:,} pixels) is over the limit of "
                         f"{max_pixels:,} pixels{limit_hint}.")
    raise ImageError(f"{name}: image of {width}x{height} needs a {needed[0]}x{needed[1]} canvas ({area:,} pixels) "
                     f"to process, over the limit of {max_pixels:,} pixels{limit_hint}.")


def open_for_processing(source, image_processor, aspect_ratio: Optional[str], *,
                        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, limit_hint: str = "",
                        name: Optional[str] = None) -> Image.Image:
    """:func:`open_rgb` with LLaVA's settings: alpha over the processor's mean colour (the ``pad`` colour) and
    the canvas that `aspect_ratio` (``pad``, ``anyres`` or other) builds checked against `max_pixels`."""
    edge = _shortest_edge(image_processor)
    return open_rgb(source, background=pad_colour(image_processor), max_pixels=max_pixels, name=name,
                    canvas=lambda size: processing_canvas(size, aspect_ratio, edge), limit_hint=limit_hint)


def open_base64(data: str, image_processor, aspect_ratio: Optional[str], *, name: str = "<base64 image>",
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`open_for_processing` for a base64-encoded image (MMBench's TSV rows)."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"{name}: not valid base64: {e}") from e
    return open_for_processing(io.BytesIO(raw), image_processor, aspect_ratio, max_pixels=max_pixels, name=name)


__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "open_base64", "open_for_processing", "open_rgb", "pad_colour",
           "processing_canvas", "to_rgb"]
