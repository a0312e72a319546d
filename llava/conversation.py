"""Chat prompt templates (the ``llava.conversation`` interface of upstream LLaVA).

A :class:`Conversation` holds a system prompt, the two role names and a list of ``[role, message]``
turns, and renders them into a single prompt string according to its :class:`SeparatorStyle`.

Besides the public ``get_prompt`` this module exposes :meth:`Conversation.get_prompt_segments`, which
renders the very same string as a list of ``(text, supervised)`` pieces.  ``get_prompt`` is built on
top of it, so the training code can tell exactly which characters of the prompt are the assistant's
answers (plus the separator that ends them) without re-deriving the template by string splitting.
"""
from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any, List, Tuple


class SeparatorStyle(Enum):
    """How turns are joined into a prompt."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


def _text_of(message: Any) -> str:
    """Messages may be ``(text, image, image_process_mode)`` tuples; return the text part."""
    if isinstance(message, tuple):
        return message[0]
    return message


@dataclasses.dataclass
class Conversation:
    """Conversation history plus the template used to render it."""

    system: str
    roles: List[str]
    messages: List[List[str]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str = None
    version: str = "Unknown"

    skip_next: bool = False

    # ------------------------------------------------------------------ rendering
    def _messages_for_prompt(self) -> List[Tuple[str, Any]]:
        """The turns to render; an image-carrying first turn gets its ``<image>`` moved to the front."""
        messages = [(role, msg) for role, msg in self.messages]
        if len(messages) > 0 and isinstance(messages[0][1], tuple):
            first_role, first_msg = messages[0]
            text = first_msg[0].replace("<image>", "").strip()
            if "mmtag" in self.version:
                messages[0] = (first_role, text)
                messages.insert(0, (self.roles[0], "<Image><image></Image>"))
                messages.insert(1, (self.roles[1], "Received."))
            else:
                messages[0] = (first_role, "<image>\n" + text)
        return messages

    def get_prompt_segments(self) -> List[Tuple[str, bool]]:
        """Render the prompt as ``(text, supervised)`` pieces whose concatenation is ``get_prompt()``.

        ``supervised`` is True for the assistant's answer text together with the separator that
        terminates that answer (the part a model is trained to produce):

        * ``TWO``: ``answer + sep2`` (e.g. ``"A</s>"`` for vicuna_v1);
        * ``SINGLE``: ``answer + sep``;
        * ``MPT``: ``answer + sep`` (``"A<|im_end|>"``);
        * ``LLAMA_2``: ``answer + " " + sep2`` (``"A </s>"``);
        * ``PLAIN``: ``answer + sep2`` (sep2 ``None`` renders as nothing).

        Turns at odd positions (0-based) are the assistant's; empty/``None`` messages are never
        supervised.
        """
        messages = self._messages_for_prompt()
        segs: List[Tuple[str, bool]] = []
        style = self.sep_style

        if style == SeparatorStyle.SINGLE:
            segs.append((self.system + self.sep, False))
            for i, (role, message) in enumerate(messages):
                if message:
                    message = _text_of(message)
                    if i % 2 == 1:
                        segs.append((role + ": ", False))
                        segs.append((message + self.sep, True))
                    else:
                        segs.append((role + ": " + message + self.sep, False))
                else:
                    segs.append((role + ":", False))
        elif style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
            segs.append((self.system + seps[0], False))
            for i, (role, message) in enumerate(messages):
                if message:
                    message = _text_of(message)
                    if i % 2 == 1:
                        segs.append((role + ": ", False))
                        segs.append((message + seps[1], True))
                    else:
                        segs.append((role + ": " + message + seps[0], False))
                else:
                    segs.append((role + ":", False))
        elif style == SeparatorStyle.MPT:
            segs.append((self.system + self.sep, False))
            for i, (role, message) in enumerate(messages):
                if message:
                    message = _text_of(message)
                    if i % 2 == 1:
                        segs.append((role, False))
                        segs.append((message + self.sep, True))
                    else:
                        segs.append((role + message + self.sep, False))
                else:
                    segs.append((role, False))
        elif style == SeparatorStyle.LLAMA_2:
            for i, (role, message) in enumerate(messages):
                if i == 0:
                    assert message, "first message should not be none"
                    assert role == self.roles[0], "first message should come from user"
                if not message:
                    continue
                message = _text_of(message)
                if i == 0 and len(self.system) > 0:
                    message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" + message
                if i % 2 == 0:
                    segs.append((self.sep + f"[INST] {message} [/INST]", False))
                else:
                    segs.append((" ", False))
                    segs.append((message + " " + self.sep2, True))
            # Upstream applies ``str.lstrip(sep)`` (a character-set strip) to the whole prompt.
            if segs and self.sep:
                prompt = "".join(t for t, _ in segs)
                n_strip = len(prompt) - len(prompt.lstrip(self.sep))
                while n_strip > 0 and segs:
                    text, sup = segs[0]
                    if len(text) <= n_strip:
                        n_strip -= len(text)
                        segs.pop(0)
                    else:
                        segs[0] = (text[n_strip:], sup)
                        n_strip = 0
        elif style == SeparatorStyle.PLAIN:
            seps = [self.sep, self.sep2 if self.sep2 is not None else ""]
            segs.append((self.system, False))
            for i, (role, message) in enumerate(messages):
                if message:
                    message = _text_of(message)
                    segs.append((message + seps[i % 2], i % 2 == 1))
        else:
            raise ValueError(f"Invalid style: {self.sep_style}")

        return [(t, s) for t, s in segs if t]

    def get_prompt(self) -> str:
        """The prompt string, rendered exactly as upstream LLaVA does."""
        return "".join(text for text, _ in self.get_prompt_segments())

    # ------------------------------------------------------------------ editing
    def append_message(self, role, message):
        if not isinstance(self.messages, list):
            self.messages = [list(m) for m in self.messages]
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, msg] for role, msg in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self):
        if len(self.get_images()) > 0:
            messages = [[role, msg[0] if isinstance(msg, tuple) else msg] for role, msg in self.messages]
        else:
            messages = self.messages
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }

    # ------------------------------------------------------------------ images (demo UI helpers)
    def process_image(self, image, image_process_mode, return_pil=False, image_format="PNG",
                      max_len=1344, min_len=672):
        """Prepare an uploaded PIL image: pad/crop/resize by mode, cap its size, optionally base64 it."""
        if image_process_mode == "Pad":
            from llava.mm_utils import expand2square  # lazy: mm_utils pulls in transformers

            image = expand2square(image, (122, 116, 104))
        elif image_process_mode in ("Default", "Crop"):
            pass
        elif image_process_mode == "Resize":
            image = image.resize((336, 336))
        else:
            raise ValueError(f"Invalid image_process_mode: {image_process_mode}")

        if max(image.size) > max_len:
            long_side, short_side = max(image.size), min(image.size)
            aspect = long_side / short_side
            shortest = int(min(max_len / aspect, min_len, short_side))
            longest = int(shortest * aspect)
            width, height = image.size
            if height > width:
                new_w, new_h = shortest, longest
            else:
                new_w, new_h = longest, shortest
            image = image.resize((new_w, new_h))

        if return_pil:
            return image
        import base64
        from io import BytesIO

        buf = BytesIO()
        image.save(buf, format=image_format)
        return base64.b64encode(buf.getvalue()).decode()

    def get_images(self, return_pil=False):
        images = []
        for i, (role, msg) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0 and isinstance(msg, tuple):
                _, image, mode = msg
                images.append(self.process_image(image, mode, return_pil=return_pil))
        return images

    def to_gradio_chatbot(self):
        ret = []
        for i, (role, msg) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                if isinstance(msg, tuple):
                    text, image, _ = msg
                    b64 = self.process_image(image, "Default", return_pil=False, image_format="JPEG")
                    img_tag = f'<img src="data:image/jpeg;base64,{b64}" alt="user upload image" />'
                    ret.append([img_tag + text.replace("<image>", "").strip(), None])
                else:
                    ret.append([msg, None])
            else:
                ret[-1][-1] = msg
        return ret


# ---------------------------------------------------------------------- templates

_SYSTEM_HUMAN = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_SYSTEM_USER = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_SYSTEM_MMTAG = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant is able to understand the visual content that the user provides, "
                 "and assist the user with a variety of tasks using natural language."
                 "The visual content will be provided with the following format: "
                 "<Image>visual content</Image>.")

conv_vicuna_v0 = Conversation(
    system=_SYSTEM_HUMAN,
    roles=("Human", "Assistant"),
    messages=(
        ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
        ("Assistant",
         "Renewable energy sources are those that can be replenished naturally in a relatively "
         "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
         "Non-renewable energy sources, on the other hand, are finite and will eventually be "
         "depleted, such as coal, oil, and natural gas. Here are some key differences between "
         "renewable and non-renewable energy sources:\n"
         "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
         "energy sources are finite and will eventually run out.\n"
         "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
         "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
         "and other negative effects.\n"
         "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
         "have lower operational costs than non-renewable sources.\n"
         "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
         "locations than non-renewable sources.\n"
         "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
         "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
         "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
         "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"),
    ),
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)

conv_vicuna_v1 = Conversation(
    system=_SYSTEM_USER,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llama_2 = Conversation(
    system="You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
           "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, "
           "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased "
           "and positive in nature.\n\n"
           "If a question does not make any sense, or is not factually coherent, explain why instead of "
           "answering something not correct. If you don't know the answer to a question, please don't "
           "share false information.",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

conv_llava_llama_2 = Conversation(
    system="You are a helpful language and vision assistant. "
           "You are able to understand the visual content that the user provides, "
           "and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

conv_mpt = Conversation(
    system="<|im_start|>system\n"
           "A conversation between a user and an LLM-based AI assistant. "
           "The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)

conv_llava_v0 = Conversation(
    system=_SYSTEM_HUMAN,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)

conv_llava_v0_mmtag = Conversation(
    system=_SYSTEM_MMTAG,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    version="v0_mmtag",
)

conv_llava_v1 = Conversation(
    system=_SYSTEM_HUMAN,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llava_v1_mmtag = Conversation(
    system=_SYSTEM_MMTAG,
    roles=("USER", "ASSISTANT"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1_mmtag",
)

conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
)

conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

default_conversation = conv_vicuna_v1

conv_templates = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}


if __name__ == "__main__":
    print(default_conversation.get_prompt())
