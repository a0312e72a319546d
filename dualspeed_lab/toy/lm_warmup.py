"""The toy LLM (`<out>/vicuna-toy/` of dualspeed_lab/toy/models.py): its tokenizer and its text warm-up.

A SentencePiece tokenizer trained on the toy text (captions, questions, answers, the LLaVA templates;
dualspeed_lab/tiny/tokenizer.train_tokenizer) and a small `LlamaForCausalLM` (`config.LLM_CONFIG`) given a
TEXT warm-up like a trained base: causal-LM training (every token) on the LLaVA renderings of the
pretrain captions (`plain`: caption + "\\n", and the caption as a vicuna_v1 answer) and the train QA
conversations (vicuna_v1, "USER: What color is the square?\\nAnswer the question using a single word
or phrase. ASSISTANT: Blue</s>..."), tokenised exactly as LLaVA does (`tokenizer_image_token`) with the
image placeholder dropped. So it knows the vocabulary, the template and the answer format; it cannot
know the answers (no image), so it learns the answer priors only. Then a SCENE warm-up
(dualspeed_lab/toy/scene_warmup.py, `--scene-steps`, default 1000; its measured time is in
docs/toy_findings.md): the task's question types asked about fresh scenes written as word embeddings (each
object = its attribute words' vectors), placed where LLaVA puts the image tokens. That is the stand-in for a
base LLM that already knows how to find an answer in its context: without it the toy LLM needs thousands of
SFT steps before it reads the image at all. Saved with the tokenizer files (as dualspeed_lab/tiny/llm.py) = the
base-LLM folder for `--model_name_or_path`.

    res = build_llm(out_dir, data_root, seed=0, steps=250, scene_steps=1000)   # {path, history, eval_loss, scene, ...}
    llm_texts(data_root)                                                      # the warm-up corpus
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence

from dualspeed_lab.toy.config import DEFAULTS, LLM_CONFIG
from dualspeed_lab.toy.optim import lm_adamw, lm_step, lr_at
from dualspeed_lab.toy.questions import QUESTION_TYPES
from dualspeed_lab.toy.scene_warmup import scene_accuracy, scene_warmup

__all__ = ["llm_texts", "tokenize_without_image", "build_llm"]


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def llm_texts(data_root: str, splits: Sequence[str] = ("pretrain", "train")) -> Dict[str, List]:
    """The warm-up corpus: {'prompts': rendered LLaVA prompts (with '<image>'), 'texts': raw strings for the
    tokenizer (captions, questions, answers, prompts)}, from the pretrain captions and train conversations."""
    from llava import conversation as conversation_lib

    prompts, texts = [], []
    for split in splits:
        path = os.path.join(data_root, split, f"{split}.json")
        if not os.path.exists(path):
            continue
        for rec in _read_json(path):
            conv_turns = rec["conversations"]
            for t in conv_turns:
                texts.append(t["value"].replace("<image>", "").strip())
            if split == "pretrain":
                # LLaVA stage 1 (`plain`): "<image>" + caption + "\n".
                prompts.append("<image>" + conv_turns[1]["value"] + "\n")
            conv = conversation_lib.conv_templates["vicuna_v1"].copy()
            for t in conv_turns:
                conv.append_message(conv.roles[0] if t["from"] == "human" else conv.roles[1], t["value"])
            prompts.append(conv.get_prompt())
    return {"prompts": prompts, "texts": texts}


def tokenize_without_image(prompt: str, tokenizer) -> List[int]:
    """LLaVA's tokenisation of a prompt (`tokenizer_image_token`) with the image placeholder dropped."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    return [t for t in tokenizer_image_token(prompt, tokenizer) if t != IMAGE_TOKEN_INDEX]


def build_llm(out_dir: str, data_root: str, seed: int = 0, steps: int = 300, batch_size: int = 16,
              lr: float = 3e-3, vocab_size: int = 1000, progress: bool = True, scene_steps: int = 0,
              scene_lr: float = DEFAULTS["scene_lr"], scene_types: Optional[Sequence[str]] = None,
              **overrides) -> dict:
    """Train the tokenizer, warm up a small LlamaForCausalLM on the toy text, save both to `out_dir`.

    Then, with `scene_steps` > 0, the second warm-up stage (dualspeed_lab/toy/scene_warmup.py): questions about
    scenes written in word embeddings, of `scene_types` (default: the task's meta.json `question_types`).
    Returns {path, history, seconds, n_sequences, vocab_size, eval_loss (held-out val conversations),
    scene: {steps, types, seconds, first_loss, last_loss, accuracy (grid layout, fresh scenes)} or None}.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dualspeed_lab.tiny.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    corpus = llm_texts(data_root)
    train_tokenizer(out_dir, corpus["texts"] + corpus["prompts"], vocab_size=vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    seqs = [tokenize_without_image(p, tokenizer) for p in corpus["prompts"]]
    val = llm_texts(data_root, ("val",))["prompts"]
    val_seqs = [tokenize_without_image(p, tokenizer) for p in val[:64]]

    config = LlamaConfig(vocab_size=len(tokenizer), **dict(LLM_CONFIG, **overrides))
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    params = list(model.parameters())
    opt = lm_adamw(params, lr)
    gen = torch.Generator().manual_seed(seed + 3)
    pad = config.pad_token_id

    def collate(batch):
        n = max(len(s) for s in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, :len(s)] = torch.tensor(s)
            lab[i, :len(s)] = torch.tensor(s)
            att[i, :len(s)] = 1
        return ids, lab, att

    order: List[int] = []
    history = []
    warmup = max(1, min(30, steps // 10))
    model.train()
    bar = tqdm(range(steps), desc="LLM warm-up", unit="step", disable=not progress)
    for step in bar:
        while len(order) < batch_size:
            order.extend(torch.randperm(len(seqs), generator=gen).tolist())
        idx, order = order[:batch_size], order[batch_size:]
        ids, lab, att = collate([seqs[i] for i in idx])
        history.append(lm_step(model, opt, params, lr_at(step, steps, lr, warmup),
                               input_ids=ids, attention_mask=att, labels=lab))
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    model.eval()
    eval_loss = None
    if val_seqs:
        with torch.no_grad():
            ids, lab, att = collate(val_seqs)
            eval_loss = float(model(input_ids=ids, attention_mask=att, labels=lab).loss)
    scene = None
    if scene_steps > 0:
        types = list(scene_types or (_read_json(os.path.join(data_root, "meta.json")) or {}).get(
            "question_types", QUESTION_TYPES))
        t1 = time.perf_counter()
        hist = scene_warmup(model, tokenizer, scene_steps, types, lr=scene_lr, seed=seed, data_root=data_root,
                            progress=progress)
        tail = [h["loss"] for h in hist[-50:]]
        scene = {"steps": scene_steps, "types": types, "lr": scene_lr, "seconds": round(time.perf_counter() - t1, 1),
                 "first_loss": hist[0]["loss"], "last_loss": sum(tail) / len(tail),
                 "accuracy": scene_accuracy(model, tokenizer, types, n=100, data_root=data_root)}
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out_dir)
    return {"path": out_dir, "history": history, "seconds": time.perf_counter() - t0, "n_sequences": len(seqs),
            "vocab_size": len(tokenizer), "eval_loss": eval_loss, "scene": scene}
