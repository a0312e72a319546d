"""Jinja chat templates that render a llava.conversation template the way our training/eval code does.

The template text is generated from the Conversation object (system prompt, role names, separators), so the
strings are never copied by hand. Only the two separator styles LLaVA-1.5/NeXT checkpoints are trained with are
supported: TWO (vicuna_v1 / v1 / llava_v1) and PLAIN (plain / v0_plain).

`image_text` is what one image item of a user message renders to. Our prompts put "<image>\\n" before the question,
but `tokenizer_image_token` tokenizes the text after <image> as a separate chunk, so a SentencePiece tokenizer
gives it a dummy-prefix "▁" token; a tokenizer run over the whole rendered string (as the HF processor does)
does not. The exporter picks the spelling ("<image>\\n" or "<image> \\n") whose tokens match ours, see
`hf_native.pick_image_text`.
"""
from __future__ import annotations

import json

from llava.conversation import Conversation, SeparatorStyle, conv_templates

# Conversation.version values whose prompts wrap the image in <Image>...</Image> turns: not reproduced here.
_MMTAG = "mmtag"


def get_conversation(name: str) -> Conversation:
    if name not in conv_templates:
        raise ValueError(f"Unknown conversation template {name!r}; known: {sorted(conv_templates)}")
    conv = conv_templates[name]
    if conv.sep_style not in (SeparatorStyle.TWO, SeparatorStyle.PLAIN) or _MMTAG in conv.version:
        raise ValueError(f"Conversation template {name!r} ({conv.sep_style.name}) cannot be exported; supported: "
                         f"{supported_templates()}")
    return conv


def supported_templates():
    return sorted(name for name, conv in conv_templates.items()
                  if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.PLAIN) and _MMTAG not in conv.version)


def _lit(text) -> str:
    # A JSON string literal is a valid Jinja string literal (same escapes for quotes, backslashes, newlines).
    return json.dumps("" if text is None else text)


# Renders one message's content into `ns.text`: the images first (as Conversation._messages_for_prompt moves
# the <image> of the first turn to the front), then the text items joined by a space and stripped when an image
# precedes them (our code does "<image>\n" + text.strip()).
_CONTENT_MACRO = """
{%- macro render_content(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- set ns = namespace(images='', text='') -%}
{%- for item in content -%}
{%- if item['type'] == 'image' -%}{%- set ns.images = ns.images + IMAGE_TEXT -%}
{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text + (' ' if ns.text else '') + item['text'] -%}
{%- endif -%}
{%- endfor -%}
{%- if ns.images -%}{{ ns.images + ns.text | trim }}{%- else -%}{{ ns.text }}{%- endif -%}
{%- endif -%}
{%- endmacro -%}
"""

# SeparatorStyle.TWO: system + sep, then "ROLE: msg" + sep (user) / + sep2 (assistant); a pending assistant turn
# renders as "ROLE:". A leading system message replaces the default system prompt.
_TWO = """
{%- set ns_sys = namespace(system=SYSTEM, start=0) -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns_sys.system = render_content(messages[0]['content']) -%}{%- set ns_sys.start = 1 -%}
{%- endif -%}
{{ ns_sys.system + SEP }}
{%- for message in messages[ns_sys.start:] -%}
{%- if message['role'] == 'user' -%}{{ USER + ': ' + render_content(message['content']) + SEP }}
{%- elif message['role'] == 'assistant' -%}{{ ASSISTANT + ': ' + render_content(message['content']) + SEP2 }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ ASSISTANT + ':' }}{%- endif -%}
"""

# SeparatorStyle.PLAIN (pretraining format): no roles, user text + sep, assistant text + sep2 (empty when None).
_PLAIN = """
{{- SYSTEM -}}
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}{{ render_content(message['content']) + SEP }}
{%- elif message['role'] == 'assistant' -%}{{ render_content(message['content']) + SEP2 }}
{%- endif -%}
{%- endfor -%}
"""


def build_chat_template(name: str, image_text: str = "<image>\n") -> str:
    """The Jinja chat template for conversation template `name`, one image rendering as `image_text`."""
    conv = get_conversation(name)
    constants = {"SYSTEM": conv.system, "SEP": conv.sep, "SEP2": conv.sep2, "IMAGE_TEXT": image_text,
                 "USER": conv.roles[0], "ASSISTANT": conv.roles[1]}
    header = "".join(f"{{%- set {key} = {_lit(value)} -%}}" for key, value in constants.items())
    body = _TWO if conv.sep_style == SeparatorStyle.TWO else _PLAIN
    return header + _CONTENT_MACRO.strip() + body.strip()


def reference_prompt(name: str, question: str, image: bool = True) -> str:
    """What our eval code renders for one user question awaiting the answer (the template must match it)."""
    conv = get_conversation(name).copy()
    conv.append_message(conv.roles[0], ("<image>\n" + question) if image else question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
