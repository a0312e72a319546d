#!/usr/bin/env python
"""Quick check: does the LLaVA-style LM learn to read the toy images within N steps?

The toy reproduction (dualspeed_lab.reproduce on dualspeed_lab/toy/task.py with the towers of
dualspeed_lab/toy/models.py) has a baseline stuck at chance. This tool isolates the LM side without the full
training scripts: it caches the FROZEN toy vision tower's features once (hidden_states[-2] patch tokens,
576 per image, what LLaVA reads with mm_vision_select_layer=-2), then trains a 2-layer MLP projector
(mlp2x_gelu) plus the toy LLM (full fine-tune, or LoRA with --lora R) on the task's QA, tokenised by
LLaVA's own vicuna_v1 preprocessing (llava.train.preprocess: system prompt + "USER: " + image tokens +
"\\n" + question + " ASSISTANT: " + answer + "</s>", loss on the answers and their </s>). Every
--eval-every steps it prints per-question-type accuracy on the test questions (teacher-forced: every
answer token and the </s> must be the argmax) next to the chance rates of dualspeed_lab.toy.task.CHANCE.

Variants: --turns K (K questions per train image in one conversation, drawn with task.questions_for on
the train scenes re-derived by task.iter_split), --question-first (question before the image tokens),
--keep F (a random fraction F of the visual tokens, train and eval), --types (question types).

    python -m dualspeed_lab.toy.lm_probe --task TASK --vision-tower MODELS/clip-vit-toy-patch14-336 \\
        --llm MODELS/vicuna-toy --features /tmp/feats.pt --steps 600 --eval-every 100 --json curve.json
    ... --types color --steps 500             # one question type
    ... --turns 7 --lr 3e-3                   # multi-turn
    ... --oracle --lr 5e-4                    # the ideal tower: is the LM the bottleneck?

What this tool measured on the full toy task (per variant, the oracle, after the scene warm-up) is
recorded in docs/toy_findings.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import random
import time
from typing import Dict, List, Optional, Sequence

import torch

from dualspeed_lab.toy.questions import CHANCE, QUESTION_TYPES, SHORT_ANSWER_SUFFIX, questions_for
from dualspeed_lab.toy.scenes import capitalized
from dualspeed_lab.toy.task import iter_split
from dualspeed_lab.toy.tower import encode_patches  # read_layer(load_pixels(...))[:, 1:], batched, no grad

SPLITS = ("train", "test")


def read_questions(task_dir: str, split: str, types: Optional[Sequence[str]] = None) -> List[dict]:
    with open(os.path.join(task_dir, split, "questions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if not types or r["type"] in types]


def _read_cache(path: str):
    """Our own cache file, but never unpickle code: a swapped file is refused by name (torch's message names
    no file and suggests weights_only=False)."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"Refusing to load the feature cache {path}: it holds Python objects other "
                                     "than tensors, lists and strings, and unpickling them could run code. "
                                     "Delete it (it is re-encoded) or pass another --features.") from e


def load_features(path: str, task_dir: str, tower: str, progress: bool = False) -> Dict[str, tuple]:
    """{split: (image paths, fp16 (N, 576, D) features)}; encoded with the frozen tower if `path` is missing.

    fp16 halves the file (a measured size: docs/toy_findings.md); the LM sees them as float32."""
    want = {s: sorted({r["image"] for r in read_questions(task_dir, s)}) for s in SPLITS}
    if os.path.exists(path):
        cache = _read_cache(path)
        if any(list(cache[s][0]) != want[s] for s in SPLITS):
            raise SystemExit(f"{path} holds features of other images: delete it or pass another --features")
        return cache
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tower).float().eval()
    cache = {s: (imgs, encode_patches(model, [os.path.join(task_dir, p) for p in imgs], progress=progress,
                                      desc=f"features {s}").half()) for s, imgs in want.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(cache, path + ".tmp")
    os.replace(path + ".tmp", path)  # no half-written cache after an interrupt
    return cache


def oracle_features(task_dir: str, tokenizer, lm) -> Dict[str, tuple]:
    """The IDEAL tower: per patch, the LM's own word embeddings of the owning object's colour, shape, size and
    letter ('none' without one), summed and halved; background patches are zero (dualspeed_lab/toy/scene_warmup.py's
    grid layout, what the scene warm-up trains on). Same layout as load_features, already in the LM's input
    space (the projector is then the identity). It separates the LM's side of the problem (learn which
    tokens answer the question) from the tower's."""
    from dualspeed_lab.toy.scene_warmup import WordVectors, scene_tokens

    word = WordVectors(lm.get_input_embeddings().weight.detach().float(), tokenizer)
    out = {}
    for split in SPLITS:
        imgs = sorted({r["image"] for r in read_questions(task_dir, split)})
        with open(os.path.join(task_dir, split, "objects.json")) as f:
            truth = json.load(f)
        x = torch.stack([scene_tokens(truth[img]["objects"], truth[img]["patch_map"], word, "grid") for img in imgs])
        out[split] = (imgs, x.half())
    return out


def multi_turn(task_dir: str, k: int, types: Sequence[str], seed: int) -> List[tuple]:
    """(image, [(question, answer, type)] * <= k) per train image: new questions about the same scenes.

    questions.jsonl keeps no scenes, so they are re-derived as build_task drew them: iter_split with the
    task seed, excluding the test and val scenes; each image's stored questions must come out again."""
    meta = json.load(open(os.path.join(task_dir, "meta.json")))
    held: set = set()
    for split in ("test", "val"):  # build order: val excludes test, train excludes both
        held |= {s["key"] for s in iter_split(split, meta["sizes"].get(split, 0), meta["seed"],
                                              meta["questions_per_image"].get(split) or 1,
                                              exclude=set(held),
                                              types=meta.get("question_types", QUESTION_TYPES))}
    stored = collections.defaultdict(list)
    for r in read_questions(task_dir, "train"):
        stored[r["image"]].append(r["text"])
    out = []
    for smp in iter_split("train", meta["sizes"]["train"], meta["seed"],
                          meta["questions_per_image"]["train"], exclude=held,
                          types=meta.get("question_types", QUESTION_TYPES)):
        texts = [f"{q['question']}\n{SHORT_ANSWER_SUFFIX}" for q in smp["questions"]]
        if texts != stored[smp["image"]]:
            raise SystemExit(f"{smp['image']}: re-derived scene does not match the task (other task code?)")
        rng = random.Random(f"lm_probe/{seed}/{smp['id']}")
        qs = questions_for(smp["scene"], rng, min(k, len(types)), types=types)
        out.append((smp["image"], [(f"{q['question']}\n{SHORT_ANSWER_SUFFIX}", capitalized(q["answer"]),
                                    q["type"]) for q in qs]))
    return out


def tokenize(samples, index: Dict[str, int], tokenizer, question_first: bool) -> List[tuple]:
    """(feature row, input_ids with one IMAGE_TOKEN_INDEX, labels, types) per conversation, via LLaVA's
    own preprocessing so the ids and masked labels are exactly what SFT trains on."""
    from llava import conversation as conversation_lib
    from llava.train.preprocess import preprocess

    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    out = []
    for image, turns in samples:
        conv = []
        for r, (q, a, _) in enumerate(turns):
            if r == 0:
                q = f"{q}\n<image>" if question_first else f"<image>\n{q}"
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        enc = preprocess([conv], tokenizer, has_image=True)
        out.append((index[image], enc["input_ids"][0], enc["labels"][0], [t for _, _, t in turns]))
    return out


def embed_batch(batch, feats, proj, emb, keep: float, gen: torch.Generator):
    """Right-padded (inputs_embeds, labels, attention_mask): the projected patch tokens replace the image
    token, as LlavaMetaForCausalLM does; with keep < 1 a random sorted subset of them (order kept)."""
    from dualspeed_lab.toy.scene_warmup import pad_batch, splice

    pairs = []
    for row, ids, lab, _ in batch:
        v = feats[row].float()
        if keep < 1:
            v = v[torch.randperm(len(v), generator=gen)[:max(1, round(keep * len(v)))].sort().values]
        pairs.append(splice(ids, lab, proj(v), emb))
    return pad_batch(pairs)


@torch.no_grad()
def evaluate(lm, proj, test, feats, keep: float, seed: int, batch_size: int = 32) -> Dict[str, float]:
    """Teacher-forced exact match (%) per type and 'all'; the --keep subset is the same at every eval."""
    lm.eval(), proj.eval()
    gen, hits, n = torch.Generator().manual_seed(seed), collections.Counter(), collections.Counter()
    emb = lm.get_input_embeddings()
    for b in range(0, len(test), batch_size):
        batch = test[b:b + batch_size]
        x, y, mask = embed_batch(batch, feats, proj, emb, keep, gen)
        pred, tgt = lm(inputs_embeds=x, attention_mask=mask).logits[:, :-1].argmax(-1), y[:, 1:]
        for (_, _, _, (t,)), ok in zip(batch, ((pred == tgt) | (tgt == -100)).all(1).tolist()):
            hits[t], n[t] = hits[t] + ok, n[t] + 1
    lm.train(), proj.train()
    acc = {t: round(100 * hits[t] / n[t], 1) for t in sorted(n)}
    acc["all"] = round(100 * sum(hits.values()) / max(1, sum(n.values())), 1)
    return acc


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--task", required=True, help="toy task folder (dualspeed_lab/toy/task.py --out)")
    ap.add_argument("--vision-tower", default=None, help="toy CLIP folder (only read to build --features)")
    ap.add_argument("--oracle", action="store_true",
                    help="ideal tower: symbolic per-patch vectors from objects.json in the LM's embedding space, "
                         "identity projector (no --vision-tower / --features)")
    ap.add_argument("--llm", required=True, help="toy LLM + tokenizer folder")
    ap.add_argument("--features", default=None,
                    help="feature cache, built if missing (None: <task>/lm_probe_features.pt)")
    ap.add_argument("--steps", type=int, default=400, help="training steps")
    ap.add_argument("--batch", type=int, default=8, help="conversations per step")
    ap.add_argument("--lr", type=float, default=1e-3, help="LM learning rate (AdamW, constant)")
    ap.add_argument("--proj-lr", type=float, default=None, help="projector learning rate (None: --lr)")
    ap.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank on all LM linears (0: full FT)")
    ap.add_argument("--types", default="", help="comma-separated question types (empty: all 7)")
    ap.add_argument("--turns", type=int, default=0, metavar="K", help="K questions per train image in one sequence")
    ap.add_argument("--question-first", action="store_true", help="question before the image tokens")
    ap.add_argument("--keep", type=float, default=1.0, help="fraction of the 576 visual tokens kept")
    ap.add_argument("--eval-every", type=int, default=100, help="eval interval (and at the last step)")
    ap.add_argument("--eval-limit", type=int, default=0, help="first N test questions only (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="init, batch order, --turns questions, --keep")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write args, chance, losses and the eval curve")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    from tqdm import tqdm
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    types = [t for t in args.types.split(",") if t] or list(QUESTION_TYPES)
    unknown = set(types) - set(QUESTION_TYPES)
    if unknown:
        ap.error(f"unknown --types {sorted(unknown)}")
    tok = AutoTokenizer.from_pretrained(args.llm)
    lm = LlamaForCausalLM.from_pretrained(args.llm).float()  # loaded once: the oracle reads its embeddings
    if args.oracle:
        feats = oracle_features(args.task, tok, lm)
    else:
        cache_path = args.features or os.path.join(args.task, "lm_probe_features.pt")
        if not args.vision_tower and not os.path.exists(cache_path):
            ap.error(f"--vision-tower is needed to build the feature cache {cache_path} (or pass --oracle)")
        feats = load_features(cache_path, args.task, args.vision_tower, progress=not args.quiet)
    index = {s: {p: i for i, p in enumerate(feats[s][0])} for s in SPLITS}

    def single(split):  # one question per sequence, answers capitalised as train.json has them
        return [(r["image"], [(r["text"], capitalized(r["answer"]), r["type"])])
                for r in read_questions(args.task, split, types)]

    convs = multi_turn(args.task, args.turns, types, args.seed) if args.turns else single("train")
    train = tokenize(convs, index["train"], tok, args.question_first)
    test = tokenize(single("test")[:args.eval_limit or None], index["test"], tok, args.question_first)
    counts = collections.Counter(t for *_, (t,) in test)
    chance = {t: round(100 * CHANCE[t], 1) for t in sorted(counts)}
    chance["all"] = round(100 * sum(CHANCE[t] * c for t, c in counts.items()) / max(1, len(test)), 1)
    print(f"train: {len(train)} sequences, {sum(len(s[3]) for s in train)} answers; test: {len(test)} "
          f"questions {dict(sorted(counts.items()))}", flush=True)

    torch.manual_seed(args.seed)  # projector (and LoRA) init
    width, hidden = feats["train"][1].shape[-1], lm.config.hidden_size
    proj = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    if args.oracle:
        proj = torch.nn.Sequential()  # identity: the oracle vectors are already LM input embeddings
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    lm.train()
    opt = torch.optim.AdamW([{"params": [p for p in lm.parameters() if p.requires_grad], "lr": args.lr},
                             {"params": proj.parameters(), "lr": args.proj_lr or args.lr}], weight_decay=0.0)
    emb, rng, gen = lm.get_input_embeddings(), random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    losses, curve, t0 = [], [], time.perf_counter()
    tqdm.write("chance " + " ".join(f"{t} {v}" for t, v in chance.items()))
    for step in tqdm(range(1, args.steps + 1), desc="train", unit="step", disable=args.quiet):
        x, y, mask = embed_batch(rng.sample(train, min(args.batch, len(train))), feats["train"][1], proj, emb,
                                 args.keep, gen)
        loss = lm(inputs_embeds=x, attention_mask=mask, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(lm, proj, test, feats["test"][1], args.keep, args.seed)
            recent = losses[-args.eval_every:]
            curve.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                          "loss": round(sum(recent) / len(recent), 4), "acc": acc})
            tqdm.write(f"step {step:5d} {curve[-1]['seconds']:7.0f}s loss {curve[-1]['loss']:.3f} | "
                       + " ".join(f"{t} {v:.1f} ({chance[t]:.0f})" for t, v in acc.items()))
    result = {"args": vars(args), "chance": chance, "n_train": len(train), "n_test": dict(counts),
              "losses": losses, "curve": curve}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
