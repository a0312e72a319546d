"""Build a tiny, randomly initialised Llama causal LM that stands in for lmsys/vicuna-7b-v1.5.

The folder holds both the model and the tokenizer, like the Vicuna hub folder, so
`AutoTokenizer.from_pretrained(out_dir)` and `LlamaForCausalLM.from_pretrained(out_dir)` both work.

    build_llm(out_dir, tokenizer_dir, seed=0)   # after tokenizer.train_tokenizer(tokenizer_dir, texts)
"""
from __future__ import annotations

import os
import shutil

LLM_CONFIG = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    initializer_range=0.02,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    use_cache=True,
)


def _copy_tokenizer(tokenizer_dir: str, out_dir: str) -> None:
    if os.path.abspath(tokenizer_dir) == os.path.abspath(out_dir):
        return
    for name in sorted(os.listdir(tokenizer_dir)):
        src = os.path.join(tokenizer_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))


def build_llm(out_dir: str, tokenizer_dir: str, seed: int = 0) -> str:
    """Save a tiny fp32 `LlamaForCausalLM` (weights drawn from `seed`) plus a copy of the tokenizer to `out_dir`.

    `vocab_size` is `len(tokenizer)` of the tokenizer found in `tokenizer_dir` (which may be `out_dir` itself).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), **LLM_CONFIG)
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out_dir)
    _copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir
