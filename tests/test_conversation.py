"""Prompt rendering of every template family against hand-written strings."""
import base64
from io import BytesIO

import pytest

from llava import conversation as cl
from llava.conversation import Conversation, SeparatorStyle, conv_templates

SYS_USER = ("A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.")
SYS_HUMAN = ("A chat between a curious human and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the human's questions.")
SYS_MMTAG = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant is able to understand the visual content that the user provides, and assist "
             "the user with a variety of tasks using natural language.The visual content will be provided "
             "with the following format: <Image>visual content</Image>.")
SYS_LLAVA_LLAMA2 = ("You are a helpful language and vision assistant. You are able to understand the visual "
                    "content that the user provides, and assist the user with a variety of tasks using "
                    "natural language.")


def _fill(name, turns):
    conv = conv_templates[name].copy()
    for i, msg in enumerate(turns):
        conv.append_message(conv.roles[i % 2], msg)
    return conv


def test_separator_style_members():
    assert [m.name for m in SeparatorStyle] == ["SINGLE", "TWO", "MPT", "PLAIN", "LLAMA_2"]
    assert [m.value for m in SeparatorStyle] == [1, 2, 3, 4, 5]


def test_template_keys_and_default():
    assert set(conv_templates) == {
        "default", "v0", "v1", "vicuna_v1", "llama_2", "mistral_instruct", "chatml_direct",
        "mistral_direct", "plain", "v0_plain", "llava_v0", "v0_mmtag", "llava_v1", "v1_mmtag",
        "llava_llama_2", "mpt"}
    assert cl.default_conversation is cl.conv_vicuna_v1
    assert conv_templates["vicuna_v1"] is conv_templates["v1"] is cl.conv_vicuna_v1
    assert conv_templates["mistral_direct"] is cl.conv_chatml_direct
    assert conv_templates["v0_plain"] is conv_templates["plain"]
    v1 = cl.conv_vicuna_v1
    assert (v1.version, v1.sep_style, v1.sep, v1.sep2, tuple(v1.roles)) == (
        "v1", SeparatorStyle.TWO, " ", "</s>", ("USER", "ASSISTANT"))
    assert cl.conv_llava_plain.sep_style == SeparatorStyle.PLAIN and cl.conv_llava_plain.sep == "\n"
    assert cl.conv_llama_2.version == "llama_v2" and cl.conv_mpt.version == "mpt"


def test_vicuna_v1_prompt():
    conv = _fill("vicuna_v1", ["<image>\nQ", "A", "Q2", None])
    assert conv.get_prompt() == SYS_USER + " USER: <image>\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT:"


def test_llava_v1_prompt_uses_human_system():
    conv = _fill("llava_v1", ["Q", None])
    assert conv.get_prompt() == SYS_HUMAN + " USER: Q ASSISTANT:"


def test_v0_single_style_prompt():
    conv = _fill("llava_v0", ["Q", "A", "Q2", None])
    assert conv.get_prompt() == SYS_HUMAN + "###Human: Q###Assistant: A###Human: Q2###Assistant:"


def test_vicuna_v0_has_canned_example():
    conv = conv_templates["v0"].copy()
    assert conv.offset == 2 and len(conv.messages) == 2
    prompt = conv.get_prompt()
    assert prompt.startswith(SYS_HUMAN + "###Human: What are the key differences between renewable and "
                             "non-renewable energy sources?###Assistant: Renewable energy sources are")
    assert prompt.endswith("can lead to economic and social instability.\n###")


def test_llama_2_prompt():
    conv = _fill("llava_llama_2", ["Q", "A", "Q2", None])
    assert conv.get_prompt() == (
        "[INST] <<SYS>>\n" + SYS_LLAVA_LLAMA2 + "\n<</SYS>>\n\nQ [/INST] A </s><s>[INST] Q2 [/INST]")


def test_llama_2_default_system_text():
    conv = _fill("llama_2", ["Q", None])
    prompt = conv.get_prompt()
    assert prompt.startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer "
                             "as helpfully as possible, while being safe.  Your answers")
    assert prompt.endswith("please don't share false information.\n<</SYS>>\n\nQ [/INST]")


def test_mistral_instruct_prompt():
    conv = _fill("mistral_instruct", ["Q", "A", "Q2", None])
    assert conv.get_prompt() == "[INST] Q [/INST] A </s>[INST] Q2 [/INST]"


def test_mpt_prompt():
    conv = _fill("mpt", ["Q", "A", "Q2", None])
    assert conv.get_prompt() == (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant "
        "gives helpful and honest answers.<|im_end|>"
        "<|im_start|>user\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>"
        "<|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n")


def test_chatml_direct_prompt():
    conv = _fill("chatml_direct", ["Q", None])
    assert conv.get_prompt() == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nQ<|im_end|>"
        "<|im_start|>assistant\n")


def test_plain_prompt():
    conv = _fill("plain", ["<image>", None])
    assert conv.get_prompt() == "<image>\n"
    # sep2 is None for plain; an answer then renders with nothing after it (upstream would crash).
    conv = _fill("plain", ["<image>", "a caption"])
    assert conv.get_prompt() == "<image>\na caption"


def _pil(w=40, h=20, color=(255, 0, 0)):
    from PIL import Image

    return Image.new("RGB", (w, h), color)


def test_image_tuple_moves_image_token_to_front():
    conv = _fill("vicuna_v1", [("Q <image>", _pil(), "Default"), None])
    assert conv.get_prompt() == SYS_USER + " USER: <image>\nQ ASSISTANT:"


def test_mmtag_inserts_image_turns():
    conv = _fill("v1_mmtag", [("<image>\nQ", _pil(), "Default"), None])
    assert conv.get_prompt() == (
        SYS_MMTAG + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: Q ASSISTANT:")
    conv = _fill("v0_mmtag", [("<image>\nQ", _pil(), "Default"), None])
    assert conv.get_prompt() == (
        SYS_MMTAG + "###Human: <Image><image></Image>###Assistant: Received.###Human: Q###Assistant:")


@pytest.mark.parametrize("name,supervised", [
    ("vicuna_v1", ["A</s>", "A2</s>"]),
    ("llava_v0", ["A###", "A2###"]),
    ("llava_llama_2", ["A </s>", "A2 </s>"]),
    ("mistral_instruct", ["A </s>", "A2 </s>"]),
    ("mpt", ["A<|im_end|>", "A2<|im_end|>"]),
])
def test_prompt_segments(name, supervised):
    conv = _fill(name, ["Q", "A", "Q2", "A2"])
    segs = conv.get_prompt_segments()
    assert "".join(t for t, _ in segs) == conv.get_prompt()
    assert [t for t, s in segs if s] == supervised


def test_copy_is_independent_and_append_works_on_template_tuple():
    base = conv_templates["vicuna_v1"]
    conv = base.copy()
    conv.append_message("USER", "hi")
    assert base.messages == () and conv.messages == [["USER", "hi"]]
    tmpl = Conversation(system="s", roles=("A", "B"), messages=(("A", "x"),), offset=0)
    tmpl.append_message("B", "y")
    assert tmpl.messages == [["A", "x"], ["B", "y"]]


def test_dict_and_images():
    conv = _fill("vicuna_v1", [("<image>\nQ", _pil(40, 20), "Pad"), "A"])
    d = conv.dict()
    assert d["messages"] == [["USER", "<image>\nQ"], ["ASSISTANT", "A"]]
    assert set(d) == {"system", "roles", "messages", "offset", "sep", "sep2"}
    imgs = conv.get_images(return_pil=True)
    assert len(imgs) == 1 and imgs[0].size == (40, 40)
    assert imgs[0].getpixel((0, 0)) == (122, 116, 104)
    (b64,) = conv.get_images()
    from PIL import Image

    assert Image.open(BytesIO(base64.b64decode(b64))).size == (40, 40)
    chat = conv.to_gradio_chatbot()
    assert len(chat) == 1 and chat[0][1] == "A"
    assert chat[0][0].startswith('<img src="data:image/jpeg;base64,') and chat[0][0].endswith("/>Q")
    assert _fill("vicuna_v1", ["Q", "A"]).dict()["messages"] == [["USER", "Q"], ["ASSISTANT", "A"]]


def test_process_image_modes_and_size_cap():
    conv = conv_templates["vicuna_v1"].copy()
    big = _pil(2000, 1000)
    assert conv.process_image(big, "Default", return_pil=True).size == (1344, 672)
    assert conv.process_image(_pil(), "Resize", return_pil=True).size == (336, 336)
    assert conv.process_image(_pil(), "Crop", return_pil=True).size == (40, 20)
    with pytest.raises(ValueError):
        conv.process_image(_pil(), "Bogus")
