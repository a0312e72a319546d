"""llava.mm_utils: prompt tokenization, image geometry, anyres, stopping criteria."""
import base64
from io import BytesIO
from types import SimpleNamespace

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    get_model_name_from_path,
    load_image_from_base64,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
    tokenizer_image_token,
)

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _pieces(tok, ids):
    return [tok.convert_ids_to_tokens(int(i)) if int(i) >= 0 else int(i) for i in ids]


def _img(w, h, color=(255, 0, 0)):
    from PIL import Image

    return Image.new("RGB", (w, h), color)


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                 image_mean=CLIP_MEAN, image_std=CLIP_STD)


# ---------------------------------------------------------------------- tokenizer_image_token

def test_tiny_tokenizer_layout(tiny_tokenizer):
    assert (tiny_tokenizer.unk_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id) == (0, 1, 2)
    assert tiny_tokenizer.pad_token_id == 0
    # transformers 5 splits special tokens written as text: "</s>" is the EOS id, not "<", "/", ...
    assert tiny_tokenizer("red</s>").input_ids[-1] == 2


def test_tokenizer_image_token_golden(tiny_tokenizer):
    ids = tokenizer_image_token("USER: <image>\nwhat is it ASSISTANT:", tiny_tokenizer)
    assert ids == [1, 522, 929, 898, -200, 898, 13, 810, 301, 340, 551, 929]
    assert _pieces(tiny_tokenizer, ids) == [
        "<s>", "▁USER", ":", "▁", -200, "▁", "<0x0A>", "what", "▁is", "▁it", "▁ASSISTANT", ":"]


def test_tokenizer_image_token_bos_once_and_sentinels(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tokenizer_image_token("<image>", tok) == [1, IMAGE_TOKEN_INDEX]
    ids = tokenizer_image_token("<image>\nwhat is it", tok)
    assert ids[:2] == [1, IMAGE_TOKEN_INDEX]
    assert ids[2:] == tok("\nwhat is it").input_ids[1:]
    ids = tokenizer_image_token("a <image> b <image> c", tok)
    assert ids.count(1) == 1 and ids[0] == 1
    assert [i for i, x in enumerate(ids) if x == IMAGE_TOKEN_INDEX] == [3, 6]
    assert ids == [1] + tok("a ").input_ids[1:] + [-200] + tok(" b ").input_ids[1:] + [-200] + tok(" c").input_ids[1:]
    # without <image> it is just the tokenizer
    assert tokenizer_image_token("what is it", tok) == tok("what is it").input_ids
    # a custom sentinel
    assert tokenizer_image_token("<image>", tok, image_token_index=-7) == [1, -7]


def test_tokenizer_image_token_return_tensors(tiny_tokenizer):
    t = tokenizer_image_token("USER: <image>\nwhat", tiny_tokenizer, return_tensors="pt")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 1
    assert t.tolist() == tokenizer_image_token("USER: <image>\nwhat", tiny_tokenizer)
    with pytest.raises(ValueError):
        tokenizer_image_token("<image>", tiny_tokenizer, return_tensors="np")


def test_tokenizer_image_token_without_bos():
    class NoBos:
        bos_token_id = None

        def __call__(self, text):
            return SimpleNamespace(input_ids=[ord(c) for c in text])

    assert tokenizer_image_token("ab<image>c", NoBos()) == [97, 98, -200, 99]


# ---------------------------------------------------------------------- geometry

def test_expand2square_wide_and_tall():
    bg = (1, 2, 3)
    wide = expand2square(_img(40, 20), bg)
    assert wide.size == (40, 40)
    assert wide.getpixel((0, 0)) == bg and wide.getpixel((0, 9)) == bg and wide.getpixel((0, 30)) == bg
    assert wide.getpixel((0, 10)) == (255, 0, 0) and wide.getpixel((39, 29)) == (255, 0, 0)
    tall = expand2square(_img(20, 40), bg)
    assert tall.size == (40, 40)
    assert tall.getpixel((9, 0)) == bg and tall.getpixel((30, 0)) == bg
    assert tall.getpixel((10, 0)) == (255, 0, 0) and tall.getpixel((29, 39)) == (255, 0, 0)
    square = _img(30, 30)
    assert expand2square(square, bg) is square


def test_select_best_resolution_hand_cases():
    assert select_best_resolution((1000, 500), PINPOINTS) == (672, 336)
    assert select_best_resolution((500, 1000), PINPOINTS) == (336, 672)
    assert select_best_resolution((2000, 2000), PINPOINTS) == (672, 672)
    assert select_best_resolution((3000, 1000), PINPOINTS) == (1008, 336)
    assert select_best_resolution((1000, 3000), PINPOINTS) == (336, 1008)
    # everything upscales a tiny image; ties on effective area go to the least waste, then the first
    assert select_best_resolution((100, 100), PINPOINTS) == (336, 672)


def test_resize_and_pad_image():
    out = resize_and_pad_image(_img(600, 500), (672, 672))
    assert out.size == (672, 672)
    # 600x500 -> 672x560, centred: 56 black rows on top and bottom
    assert out.getpixel((300, 55)) == (0, 0, 0) and out.getpixel((300, 56)) == (255, 0, 0)
    assert out.getpixel((300, 615)) == (255, 0, 0) and out.getpixel((300, 616)) == (0, 0, 0)
    assert resize_and_pad_image(_img(1000, 500), (672, 336)).getpixel((0, 0)) == (255, 0, 0)


def test_divide_to_patches_order():
    from PIL import Image

    img = Image.new("RGB", (672, 336), (255, 0, 0))
    img.paste(_img(336, 336, (0, 255, 0)), (336, 0))
    patches = divide_to_patches(img, 336)
    assert [p.size for p in patches] == [(336, 336), (336, 336)]
    assert patches[0].getpixel((5, 5)) == (255, 0, 0) and patches[1].getpixel((5, 5)) == (0, 255, 0)
    assert len(divide_to_patches(_img(672, 672), 336)) == 4


def test_anyres_grid_shape_and_crop_count(processor):
    wide, tall = _img(1000, 500), _img(500, 1000)
    assert get_anyres_image_grid_shape(wide.size, PINPOINTS, 336) == (2, 1)
    assert get_anyres_image_grid_shape(tall.size, PINPOINTS, 336) == (1, 2)
    assert get_anyres_image_grid_shape((3000, 1000), str(PINPOINTS), 336) == (3, 1)
    for img in (wide, tall):
        out = process_anyres_image(img, processor, PINPOINTS)
        assert out.shape == (1 + 2, 3, 336, 336)
    assert process_anyres_image(_img(3000, 1000), processor, str(PINPOINTS)).shape == (4, 3, 336, 336)


def test_process_images_pad(processor):
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    out = process_images([_img(400, 200), _img(200, 400), _img(300, 300)], processor, cfg)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 3, 336, 336)
    # the padding of the wide image is the mean colour, i.e. ~0 after normalisation
    assert out[0, :, :60, :].abs().max() < 0.02
    red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert abs(out[0, 0, 168, 168].item() - red) < 0.02


def test_process_images_anyres(processor):
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    out = process_images([_img(1000, 500), _img(500, 1000)], processor, cfg)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 3, 336, 336)
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=str(PINPOINTS))
    out = process_images([_img(1000, 500), _img(3000, 1000)], processor, cfg)
    assert isinstance(out, list) and [tuple(x.shape) for x in out] == [(3, 3, 336, 336), (4, 3, 336, 336)]


def test_process_images_default_is_resize_and_crop(processor):
    out = process_images([_img(400, 200), _img(200, 400)], processor, SimpleNamespace())
    assert out.shape == (2, 3, 336, 336)


def test_load_image_from_base64():
    buf = BytesIO()
    _img(12, 7).save(buf, format="PNG")
    img = load_image_from_base64(base64.b64encode(buf.getvalue()).decode())
    assert img.size == (12, 7)


@pytest.mark.parametrize("path,name", [
    ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
    ("./checkpoints/llava-v1.5-13b-lora/", "llava-v1.5-13b-lora"),
    ("/data/runs/llava-x/checkpoint-500", "llava-x_checkpoint-500"),
    ("/data/runs/llava-x/checkpoint-500/", "llava-x_checkpoint-500"),
    ("llava-v1.5-7b", "llava-v1.5-7b"),
])
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


# ---------------------------------------------------------------------- stopping criteria

def _ids(tok, text):
    return tok(text).input_ids


def test_keywords_stopping_from_input_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = torch.tensor([_ids(tok, "USER: hi ASSISTANT: red</s>USER: how many ASSISTANT:")])
    assert 2 in prompt[0].tolist()  # the keyword is already in the prompt
    crit = KeywordsStoppingCriteria(["</s>"], tok, prompt)
    two = tok("two", add_special_tokens=False).input_ids
    step1 = torch.cat([prompt, torch.tensor([two])], dim=1)
    assert crit(step1, None) is False
    step2 = torch.cat([step1, torch.tensor([[2]])], dim=1)
    assert crit(step2, None) is True


def test_keywords_stopping_ignores_prompt_tail(tiny_tokenizer):
    tok = tiny_tokenizer
    # prompt ends with "▁ASSISTANT"; the first new token ":" completes the keyword's ids only
    # together with the prompt, which must not stop generation.
    prompt = torch.tensor([_ids(tok, "USER: hi ASSISTANT")])
    crit = KeywordsStoppingCriteria(["ASSISTANT:"], tok, prompt)
    colon = tok.convert_tokens_to_ids(":")
    out = torch.cat([prompt, torch.tensor([[colon]])], dim=1)
    assert crit(out, None) is False
    out = torch.cat([out, torch.tensor([tok("red ASSISTANT:", add_special_tokens=False).input_ids])], dim=1)
    assert crit(out, None) is True


def test_keywords_stopping_from_inputs_embeds(tiny_tokenizer):
    tok = tiny_tokenizer
    # with inputs_embeds the prompt (with its -200 sentinel) is not part of the outputs
    prompt = torch.tensor([[1, 522, 929, 898, IMAGE_TOKEN_INDEX, 898, 13, 810, 551, 929] + [2] * 5])
    crit = KeywordsStoppingCriteria(["</s>"], tok, prompt)
    new = tok("two squares", add_special_tokens=False).input_ids
    assert crit(torch.tensor([new[:1]]), None) is False
    assert crit(torch.tensor([new]), None) is False
    assert crit(torch.tensor([new + [2]]), None) is True
    # and without any prompt at all
    crit = KeywordsStoppingCriteria(["</s>"], tok, None)
    assert crit(torch.tensor([new]), None) is False
    assert crit(torch.tensor([new + [2]]), None) is True


def test_keywords_stopping_string_match_and_batch(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = torch.tensor([_ids(tok, "USER: hi ASSISTANT:")] * 2)
    crit = KeywordsStoppingCriteria(["ed"], tok, prompt)
    red = tok("red", add_special_tokens=False).input_ids
    blue = tok("blue", add_special_tokens=False).input_ids
    assert len(red) == 1 and len(blue) == 1
    # "ed" is found in the decoded text of row 0 only -> not all rows stopped
    assert crit(torch.cat([prompt, torch.tensor([red, blue])], dim=1), None) is False
    assert crit(torch.cat([prompt, torch.tensor([red, red])], dim=1), None) is True
