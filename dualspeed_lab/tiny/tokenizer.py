"""Train a tiny Llama-style SentencePiece tokenizer offline and save it in the HF format.

Layout follows Vicuna-v1.5: unk=0 `<unk>`, bos=1 `<s>`, eos=2 `</s>`, byte fallback, a dummy prefix,
`legacy=False`. We save `tokenizer.model` *and* the converted `tokenizer.json`, so transformers 5 loads
the same tokenizers-backed tokenizer every time without re-running the conversion.

    train_tokenizer(out_dir, texts, vocab_size=1000)   # then AutoTokenizer.from_pretrained(out_dir)

Used by dualspeed_lab/tiny/build.py and by the toy LLM's build (dualspeed_lab/toy/lm_warmup.py).
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterable

# Text the templates render; keeps template words short in tokens, as they are for Vicuna.
TEMPLATE_TEXT = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: Human: Assistant: ### [INST] [/INST] <<SYS>> <</SYS>> <|im_start|> <|im_end|> system user assistant",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Describe the image concisely. Provide a brief description of the given image. What is in the photo?",
    "yes no one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
]


def train_tokenizer(out_dir: str, texts: Iterable[str], vocab_size: int = 1000, model_max_length: int = 2048) -> str:
    """Train on `texts` (plus the template text) and write an HF tokenizer folder to `out_dir`."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    os.makedirs(out_dir, exist_ok=True)
    corpus = [t for t in TEMPLATE_TEXT for _ in range(20)] + [t for t in texts if t.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,  # multi-threaded training is not bit-reproducible
        minloglevel=2,
    )
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    # Convert once (needs protobuf), then save tokenizer.json so later loads skip conversion.
    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
