"""Images in every PIL mode, alpha, 16-bit, decode errors, oversized canvases, and the per-image visual token
count (llava.image_io, llava.train.images, llava.model.visual_tokens). Every image here is a real file
written with Pillow, unless its mode has no file format (then it is built in memory)."""
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from llava.image_io import ImageError, open_rgb, pad_colour, processing_canvas, to_rgb
from llava.model.visual_tokens import unpadded_shape, visual_token_count
from llava.train.images import (DEFAULT_MAX_IMAGE_PIXELS, load_sample_image, record_tower_geometry,
                                visual_tokens_for)

BG = (122, 116, 104)  # the CLIP mean colour, int(mean * 255), as the dataset passes it
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
RED, GREEN = (220, 20, 30), (10, 200, 40)


def _save(image, path, **kw):
    image.save(path, **kw)
    return str(path)


def _rgb(path, **kw):
    return open_rgb(path, background=BG, **kw)


def _blend(colour, alpha):
    return tuple(round(c * alpha / 255 + b * (255 - alpha) / 255) for c, b in zip(colour, BG))


def _close(actual, expected, tol=1):
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected)), (actual, expected)


# ---------------------------------------------------------------------------------------------- 16-bit and I

def test_16bit_png_keeps_its_grey_levels(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    assert Image.open(path).convert("RGB").getpixel((2, 0)) == (255, 255, 255)  # the bug being fixed
    out = _rgb(path)
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(4)] == [(0,) * 3, (100,) * 3, (128,) * 3,
                                                                              (255,) * 3]


def test_16bit_big_endian_tiff(tmp_path):
    path = _save(Image.fromarray(np.full((3, 5), 32768, dtype=">u2")), tmp_path / "grey16b.tif")
    assert Image.open(path).mode == "I;16B"
    assert _rgb(path).getpixel((4, 2)) == (128, 128, 128)


def test_16bit_transparency_key_is_composited(tmp_path):
    path = _save(Image.fromarray(np.array([[1000, 65535]], dtype=np.uint16)), tmp_path / "key16.png",
                 transparency=1000)
    out = _rgb(path)
    assert out.getpixel((0, 0)) == BG and out.getpixel((1, 0)) == (255, 255, 255)


def test_mode_i_in_16bit_range_is_scaled(tmp_path):
    path = _save(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)), tmp_path / "int32.tif")
    assert Image.open(path).mode == "I"
    assert [_rgb(path).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("bad", [-5, 70000])
def test_mode_i_outside_16bit_range_is_refused(tmp_path, bad):
    path = _save(Image.fromarray(np.array([[0, bad]], dtype=np.int32)), tmp_path / "int32.tif")
    with pytest.raises(ImageError) as e:
        _rgb(path)
    assert path in str(e.value) and "mode I" in str(e.value) and str(bad) in str(e.value)
    assert "0..65535" in str(e.value)


def test_float_image_is_refused(tmp_path):
    path = _save(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)), tmp_path / "float.tif")
    with pytest.raises(ImageError) as e:
        _rgb(path)
    assert path in str(e.value) and "mode F" in str(e.value) and "range is unknown" in str(e.value)


# ---------------------------------------------------------------------------------------------- opaque modes

def test_bilevel_grey_palette_rgb_files(tmp_path):
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert [_rgb(_save(bilevel, tmp_path / "1.png")).getpixel((x, 0)) for x in range(2)] == [(0,) * 3, (255,) * 3]
    assert _rgb(_save(Image.new("L", (2, 2), 77), tmp_path / "l.png")).getpixel((1, 1)) == (77, 77, 77)
    palette = Image.new("P", (2, 1))
    palette.putpalette(list(RED) + list(GREEN))
    palette.putpixel((1, 0), 1)
    out = _rgb(_save(palette, tmp_path / "p.png"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [RED, GREEN]
    assert _rgb(_save(Image.new("RGB", (2, 2), RED), tmp_path / "rgb.png")).getpixel((0, 1)) == RED


def test_cmyk_ycbcr_lab_files(tmp_path):
    assert _rgb(_save(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "cmyk.tif")).getpixel((0, 0)) == (255, 0, 0)
    source = Image.new("RGB", (2, 2), RED)
    _close(_rgb(_save(source.convert("YCbCr"), tmp_path / "ycc.tif")).getpixel((1, 1)), RED, tol=3)
    from PIL import ImageCms

    srgb, cielab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    lab = ImageCms.applyTransform(source, ImageCms.buildTransform(srgb, cielab, "RGB", "LAB"))
    path = _save(lab, tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    # 8-bit L*a*b* cannot hold RED exactly; the reference is LittleCMS's own way back to sRGB.
    reference = ImageCms.applyTransform(lab, ImageCms.buildTransform(cielab, srgb, "LAB", "RGB")).getpixel((0, 0))
    _close(_rgb(path).getpixel((0, 0)), reference)
    _close(reference, RED, tol=6)


@pytest.mark.parametrize("mode,value,expected", [
    ("RGBX", (1, 2, 3, 4), (1, 2, 3)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("La", (100, 255), (100, 100, 100)),          # opaque: premultiplied == straight
    ("RGBa", (100, 50, 0, 128), _blend((199, 99, 0), 128)),  # un-premultiplied, then composited
])
def test_modes_without_a_file_format(mode, value, expected):
    _close(to_rgb(Image.new(mode, (1, 1), value), background=BG).getpixel((0, 0)), expected)


# ---------------------------------------------------------------------------------------------- alpha

def test_rgba_and_la_are_composited_over_the_background(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    for x, alpha in enumerate((0, 128, 255)):
        rgba.putpixel((x, 0), RED + (alpha,))
    out = _rgb(_save(rgba, tmp_path / "rgba.png"))
    assert out.getpixel((0, 0)) == BG and out.getpixel((2, 0)) == RED
    _close(out.getpixel((1, 0)), _blend(RED, 128))
    la = Image.new("LA", (2, 1), (200, 0))
    la.putpixel((1, 0), (200, 255))
    out = _rgb(_save(la, tmp_path / "la.png"))
    assert out.getpixel((0, 0)) == BG and out.getpixel((1, 0)) == (200, 200, 200)


def test_palette_transparency_index_and_palette_alpha(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette(list(RED) + list(GREEN))
    image.putpixel((1, 0), 1)
    out = _rgb(_save(image, tmp_path / "index.png", transparency=0))
    assert out.getpixel((0, 0)) == BG and out.getpixel((1, 0)) == GREEN
    out = _rgb(_save(image, tmp_path / "alphas.png", transparency=bytes([64, 255])))  # per-entry alpha
    _close(out.getpixel((0, 0)), _blend(RED, 64))
    assert out.getpixel((1, 0)) == GREEN
    gif = _rgb(_save(image, tmp_path / "index.gif", transparency=0))
    assert gif.getpixel((0, 0)) == BG and gif.getpixel((1, 0)) == GREEN


def test_pa_tiff(tmp_path):
    image = Image.new("PA", (2, 1))
    image.putpalette(list(RED) + list(GREEN))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (1, 255))
    path = _save(image, tmp_path / "pa.tif")
    assert Image.open(path).mode == "PA"
    out = _rgb(path)
    assert out.getpixel((0, 0)) == BG and out.getpixel((1, 0)) == GREEN


@pytest.mark.parametrize("mode,opaque,key", [("1", 255, 0), ("L", 90, 10), ("RGB", RED, (1, 2, 3))])
def test_colour_key_transparency(tmp_path, mode, opaque, key):
    image = Image.new(mode, (2, 1), key)
    image.putpixel((1, 0), opaque)
    out = _rgb(_save(image, tmp_path / f"key_{mode}.png", transparency=key))
    expected = opaque if isinstance(opaque, tuple) else (opaque,) * 3
    assert out.getpixel((0, 0)) == BG and out.getpixel((1, 0)) == expected


def test_transparent_area_looks_like_padding(tmp_path):
    """In pad mode the transparent half and the padding normalise to the same pixels."""
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 20), RED + (255,)), (20, 0))
    pixels, size = load_sample_image(_save(image, tmp_path / "half.png"), _data_args("pad"))
    assert size == (40, 20)
    padding, transparent, opaque = pixels[:, 10, 168], pixels[:, 168, 40], pixels[:, 168, 300]
    torch.testing.assert_close(transparent, padding)
    assert (opaque - padding).abs().max() > 0.5


# ---------------------------------------------------------------------------------------------- decode errors

def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ImageError) as e:
        _rgb(str(path))
    assert str(path) in str(e.value) and "cannot identify" in str(e.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as e:
        _rgb(str(path))
    assert str(path) in str(e.value) and "truncated" in str(e.value) and fmt in str(e.value)


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        _rgb(str(empty))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        _rgb(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("side", [40, 100])  # 1,600 px: Pillow's warning; 10,000 px: its error (2x limit)
def test_pillow_decompression_bomb_guard(tmp_path, monkeypatch, side):
    path = _save(Image.new("RGB", (side, side)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError) as e:
        _rgb(path, max_pixels=None)
    assert path in str(e.value) and "decompression-bomb" in str(e.value) and f"{side * side} pixels" in str(e.value)


# ---------------------------------------------------------------------------------------------- canvas limit

def _data_args(aspect, **kw):
    from dualspeed_lab.tiny.vision import make_image_processor

    return types.SimpleNamespace(image_processor=make_image_processor(), image_aspect_ratio=aspect,
                                 image_grid_pinpoints=PINPOINTS, **kw)


def test_pad_canvas_over_the_limit_is_refused(tmp_path):
    path = _save(Image.new("RGB", (10, 2000)), tmp_path / "tall.png")
    with pytest.raises(ImageError) as e:
        load_sample_image(path, _data_args("pad", max_image_pixels=1_000_000))
    message = str(e.value)
    for part in (path, "10x2000", "2000x2000", "4,000,000", "1,000,000", "--max_image_pixels"):
        assert part in message, (part, message)
    # anyres resizes to the pinpoints, so only the source's 20,000 pixels count.
    pixels, size = load_sample_image(path, _data_args("anyres", max_image_pixels=1_000_000))
    assert size == (10, 2000) and pixels.shape[1:] == (3, 336, 336)


def test_square_mode_counts_the_shortest_edge_resize(tmp_path):
    path = _save(Image.new("RGB", (2000, 10)), tmp_path / "wide.png")
    assert processing_canvas((2000, 10), "square", 336) == (67200, 336)
    with pytest.raises(ImageError, match="67200x336"):
        load_sample_image(path, _data_args("square", max_image_pixels=1_000_000))


def test_default_limit_applies_without_the_flag(tmp_path):
    # A 1x10000 strip is a tiny file, but padding it would allocate a 10000x10000 (100M pixel) canvas.
    path = _save(Image.new("L", (1, 10_000)), tmp_path / "strip.png")
    with pytest.raises(ImageError) as e:
        load_sample_image(path, _data_args("pad"))
    assert f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in str(e.value) and "10000x10000" in str(e.value)
    args = _data_args("pad", max_image_pixels=None)  # the flag present but unset: the default too
    with pytest.raises(ImageError, match="10000x10000"):
        load_sample_image(path, args)


def test_raised_limit_also_lifts_pillows_guard(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (100, 100), RED), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pixels, size = load_sample_image(path, _data_args("square", max_image_pixels=200_000))
    assert size == (100, 100) and pixels.shape == (3, 336, 336)


@pytest.mark.parametrize("aspect", ["pad", "anyres", "square"])
def test_rgb_pixels_match_the_previous_pipeline(tmp_path, aspect):
    """For an ordinary RGB file nothing changes: same tensor as convert('RGB') + the old processing."""
    from llava.mm_utils import expand2square, process_anyres_image

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (90, 170, 3), dtype=np.uint8))
    path = _save(image, tmp_path / "photo.png")
    args = _data_args(aspect)
    processor = args.image_processor
    if aspect == "pad":
        expected = processor.preprocess(expand2square(image, pad_colour(processor)), return_tensors="pt")["pixel_values"][0]
    elif aspect == "anyres":
        expected = process_anyres_image(image, processor, PINPOINTS)
    else:
        expected = processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
    pixels, size = load_sample_image(path, args)
    assert size == (170, 90)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- token count

SIZES = [(700, 300), (300, 700), (500, 500), (1, 1), (3, 7), (337, 673), (1001, 333), (2000, 10), (10, 2000),
         (672, 336), (336, 1008), (641, 479), (1280, 720), (333, 1001), (998, 1002)]


def test_unpadded_shape_matches_unpad_image():
    from llava.model.llava_arch import unpad_image

    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(1, 3000, 2))
        rows, cols = (int(v) * 24 for v in rng.integers(1, 4, 2))
        kept = unpad_image(torch.zeros(1, rows, cols), (w, h)).shape[1:]
        assert tuple(kept) == unpadded_shape((w, h), (rows, cols)), (w, h, rows, cols)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(2)
    return {size: _save(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)),
                        folder / f"{size[0]}x{size[1]}.png") for size in SIZES}


@pytest.mark.parametrize("merge", ["flat", "spatial", "spatial_unpad"])
@pytest.mark.parametrize("aspect", ["anyres", "pad", "square"])
def test_visual_token_count_equals_the_merge(vision_path, image_files, merge, aspect):
    """The dataset's count (load_sample_image -> visual_tokens_for) is the length the real merge produces."""
    from tests.helpers import make_tiny_llava

    model = make_tiny_llava(vision_path, merge, image_aspect_ratio=aspect, image_grid_pinpoints=PINPOINTS)
    tower = model.get_vision_tower()
    args = types.SimpleNamespace(image_processor=tower.image_processor, image_aspect_ratio=aspect,
                                 image_grid_pinpoints=PINPOINTS)
    assert visual_tokens_for((10, 10), args) is None  # no geometry recorded yet
    record_tower_geometry(args, tower, model.config)
    counts = {}
    for size, path in image_files.items():
        pixels, got_size = load_sample_image(path, args)
        assert got_size == size
        # As the collator hands them over: anyres pixels [1+crops, 3, H, W] go in a list (or a 5-D stack),
        # pad/square pixels [3, H, W] are stacked into one 4-D batch.
        images = [pixels] if aspect == "anyres" else pixels[None]
        with torch.no_grad():
            merged = model._image_features_per_image(images, [size])
        expected = visual_tokens_for(size, args)
        assert merged[0].shape[0] == expected, (size, merge, aspect)
        counts[size] = expected
    if aspect == "anyres":
        # More than the tower's 576, by an amount that depends on the shape. The one exception: unpadding a
        # 2000x10 strip keeps int(10 * 72 / 2000) = 0 rows of its crop grid, so only the base image is left.
        assert all(n > 576 for size, n in counts.items() if (size, merge) != ((2000, 10), "spatial_unpad"))
        assert len(set(counts.values())) > 1
    else:
        assert set(counts.values()) == {576}


def test_anyres_counts_by_hand():
    kw = dict(aspect_ratio="anyres", grid_pinpoints=PINPOINTS, patches_per_side=24, tower_image_size=336,
              tokens_per_crop=576)
    # 700x300 -> 1008x336: 3 crops wide. flat: 4 crops; spatial: 576 + 24*72; unpad keeps 56 of 72 columns.
    assert visual_token_count((700, 300), merge_type="flat", **kw) == 4 * 576
    assert visual_token_count((700, 300), merge_type="spatial", **kw) == 576 + 24 * 72
    assert visual_token_count((700, 300), merge_type="spatial_unpad", **kw) == 576 + 24 * 57
    assert visual_token_count((700, 300), merge_type="flat", **{**kw, "aspect_ratio": "pad"}) == 576
    with pytest.raises(ValueError, match="tokens per crop"):
        visual_token_count((700, 300), merge_type="spatial", **{**kw, "tokens_per_crop": 577})


def test_record_tower_geometry_counts_the_cls_token():
    tower = types.SimpleNamespace(num_patches_per_side=24, num_patches=576, config=types.SimpleNamespace(image_size=336),
                                  select_feature="cls_patch")
    args = types.SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=str(PINPOINTS))
    record_tower_geometry(args, tower, types.SimpleNamespace(mm_patch_merge_type="flat"))
    assert (args.tokens_per_crop, args.tower_patches_per_side, args.tower_image_size) == (577, 24, 336)
    assert visual_tokens_for((700, 300), args) == 4 * 577  # pinpoints given as the CLI's string


def test_run_llava_load_image_keeps_upstreams_one_argument_call(tmp_path):
    from PIL import Image

    from llava.eval.run_llava import load_image, load_images

    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    image = load_image(str(tmp_path / "clear.png"))  # upstream's signature: the file only
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (122, 116, 104)  # CLIP's mean, not black
    assert len(load_images([str(tmp_path / "clear.png")] * 2)) == 2
    with pytest.raises(ValueError, match=r"bad\.png: cannot decode image"):
        load_image(str(tmp_path / "bad.png"))
