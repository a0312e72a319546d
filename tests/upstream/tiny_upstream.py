"""Build a tiny *upstream* LLaVA (haotian-liu/LLaVA, ``llava-torch==1.2.2.post1``) offline, and smoke-test it.

Run this INSIDE the upstream virtual environment (see ``setup_upstream_env.sh`` / ``helpers.run_upstream``),
never in our own environment: ``import llava`` must resolve to upstream's package in the venv's
site-packages, not to this repository's ``llava/``.

Everything is built from scratch in a temp folder, with no network:

* a SentencePiece tokenizer in the Vicuna-v1.5 layout (unk=0 ``<unk>``, bos=1 ``<s>``, eos=2 ``</s>``,
  byte fallback, ``legacy: false``) loaded through upstream's own path
  (``AutoTokenizer.from_pretrained(..., use_fast=False)`` -> transformers 4.37's slow ``LlamaTokenizer``);
* a tiny CLIP vision tower folder (``CLIPVisionModel`` + ``CLIPImageProcessor``, 336 px, patch 14 ->
  576 patch tokens, hidden 32, 2 layers) that upstream's ``CLIPVisionTower`` loads with ``from_pretrained``;
* a tiny ``LlavaLlamaForCausalLM`` (hidden 32, 2 layers, 4 heads) wired up the way upstream's
  ``train()`` does it (``initialize_vision_modules`` with an ``mlp2x_gelu`` projector, config fields,
  ``initialize_vision_tokenizer``, ``pad_token = unk_token``, conversation template ``v1``).

Reusable pieces for patch tests (import this module from a script run with ``helpers.run_upstream``):
``build_tiny_upstream(tmpdir)``, ``make_synthetic_data(tmpdir)``, ``make_data_args(...)``,
``make_training_args(...)``, ``make_trainer(...)``, ``make_batch(...)``.

``python tiny_upstream.py [--no-e2e]`` runs the checks and prints one ``PASS <name>`` line for each:
(a) ``forward_backward``: a training-style forward with labels + backward; (b) ``trainer``:
``LLaVATrainer`` for 2 steps on 4 synthetic samples through upstream's ``make_supervised_data_module``
(labels checked: exactly the answers stay unmasked, no "tokenization mismatch"); (c) ``generate``:
upstream's ``generate`` with images; (d) ``lora``: a PEFT LoRA wrap (the ``--lora_enable`` path);
(e) ``train_e2e``: upstream's own ``train()`` for pretrain -> finetune (``--pretrain_mm_mlp_adapter``) ->
``load_pretrained_model`` -> generate (helpers: ``save_tiny_base``, ``train_argv``, ``run_train``).

Known 4.37.2 behaviour: ``generate`` from ``inputs_embeds`` returns ``[<s>, new tokens...]`` (a BOS placeholder
first), not the prompt. The vision tower runs in fp16 inside ``train()`` (upstream casts it); fine on CPU.
"""
from __future__ import annotations

import io
import json
import os
import random
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

HIDDEN = 32
LAYERS = 2
HEADS = 4
IMAGE_SIZE = 336
PATCH = 14
NUM_PATCHES = (IMAGE_SIZE // PATCH) ** 2  # 576
MODEL_MAX_LENGTH = 1024
CONV_VERSION = "v1"

# Text the v1 template renders, repeated so template words are cheap in tokens (as they are for Vicuna).
_TEMPLATE_TEXT = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: Human: Assistant: ### system user assistant",
    "Answer the question using a single word or phrase.",
    "Describe the image concisely. Provide a brief description of the given image. What is in the photo?",
    "yes no one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
]
_WORDS = ("what color shape is the object left right top bottom red green blue yellow circle square "
          "triangle how many are there describe picture a an of in on and it this image").split()

_COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def assert_upstream_llava():
    """Fail loudly if ``llava`` is not upstream's package from site-packages (e.g. our repo shadows it)."""
    import llava

    path = os.path.abspath(llava.__file__)
    if "site-packages" not in path:
        raise RuntimeError(f"`llava` resolves to {path}, not to upstream's llava-torch in site-packages")
    return path


# --------------------------------------------------------------------------------------------- builders
def build_tokenizer_files(out_dir: str, *, vocab_size: int = 1000, legacy: bool = False) -> str:
    """Train a tiny Llama-layout SentencePiece model offline and write an HF slow-tokenizer folder.

    ``USER`` is a user-defined piece, so ``"</s>USER"`` (no space, legacy=False) gives 1 token while a
    round tokenized on its own gives ``"▁" + "USER"``: one token more, as with the real Llama vocab
    (``USER`` vs ``▁US ER``). That is exactly what ``preprocess_v1``'s ``round_len -= 1`` correction for
    non-legacy tokenizers expects; without it every multi-round sample hits "tokenization mismatch".
    """
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    texts = [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(10)) for i in range(500)]
    corpus = [t for t in _TEMPLATE_TEXT for _ in range(20)] + texts
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=["USER"],
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
    config = {  # as lmsys/vicuna-7b-v1.5's tokenizer_config.json
        "tokenizer_class": "LlamaTokenizer",
        "legacy": legacy,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": 4096,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def load_tokenizer(tok_dir: str, model_max_length: int = MODEL_MAX_LENGTH):
    """Load exactly as upstream's ``train()`` does (slow tokenizer, right padding)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(
        tok_dir, model_max_length=model_max_length, padding_side="right", use_fast=False)
    assert type(tok).__name__ == "LlamaTokenizer", type(tok)
    return tok


def build_vision_tower_dir(out_dir: str, *, seed: int = 0) -> str:
    """Save a tiny CLIP vision tower + image processor that upstream's CLIPVisionTower can load."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
        image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=HIDDEN,
    )
    CLIPVisionModel(cfg).save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True, do_resize=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    ).save_pretrained(out_dir)
    return out_dir


def model_args_for(vision_tower: str, **overrides) -> SimpleNamespace:
    """Upstream ``ModelArguments`` fields as the v1.5 scripts set them."""
    args = dict(
        vision_tower=vision_tower,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None,
        mm_patch_merge_type="flat",
        mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        tune_mm_mlp_adapter=False,
        version=CONV_VERSION,
    )
    args.update(overrides)
    return SimpleNamespace(**args)


def build_tiny_upstream(tmpdir: str, *, seed: int = 0, legacy: bool = False, image_aspect_ratio: str = "pad",
                        model_max_length: int = MODEL_MAX_LENGTH, model_args_overrides: dict | None = None):
    """Build ``(model, tokenizer, image_processor)``: a tiny upstream ``LlavaLlamaForCausalLM``, offline.

    Follows upstream ``llava.train.train.train()`` for a v1.5 fine-tune (fp32, CPU). The model's
    ``config.mm_vision_tower`` points into ``tmpdir``, so keep ``tmpdir`` alive while using the model.
    The conversation template is set to ``v1`` (``conversation_lib.default_conversation``).
    """
    from llava import conversation as conversation_lib
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    tok_dir = build_tokenizer_files(os.path.join(tmpdir, "tokenizer"), legacy=legacy)
    tokenizer = load_tokenizer(tok_dir, model_max_length)
    vt_dir = build_vision_tower_dir(os.path.join(tmpdir, "clip-vit-tiny-patch14-336"), seed=seed)

    torch.manual_seed(seed)
    config = LlavaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        max_position_embeddings=2048, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlavaLlamaForCausalLM(config)
    model.config.use_cache = False  # as train() does

    # --- train(): tokenizer / template for version "v1"
    tokenizer.pad_token = tokenizer.unk_token
    conversation_lib.default_conversation = conversation_lib.conv_templates[CONV_VERSION]

    # --- train(): vision modules
    model_args = model_args_for(vt_dir, **(model_args_overrides or {}))
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=[])
    vision_tower = model.get_vision_tower()
    vision_tower.to(dtype=torch.float32, device="cpu")
    image_processor = vision_tower.image_processor
    model.config.image_aspect_ratio = image_aspect_ratio
    model.config.tokenizer_padding_side = tokenizer.padding_side
    model.config.tokenizer_model_max_length = tokenizer.model_max_length
    model.config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    model.config.freeze_mm_mlp_adapter = False
    model.config.mm_use_im_start_end = model_args.mm_use_im_start_end
    model.config.mm_projector_lr = None
    model.config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    model._tiny_model_args = model_args  # handy for patch tests (e.g. initialize_mode_isolator)
    return model, tokenizer, image_processor


# ------------------------------------------------------------------------------------------------- data
def _image(color: str, size=(400, 300)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (245, 245, 245))
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=_COLORS[color])
    return img


def make_synthetic_data(tmpdir: str, n: int = 4, *, text_only_every: int = 4, pretrain: bool = False):
    """Write ``n`` LLaVA-format samples (JSON + PNGs, non-square so 'pad' matters) and return
    ``(json_path, image_folder)``.

    Fine-tune layout (default, for ``v1``): every ``text_only_every``-th sample (1-based) has no image
    and odd samples have two rounds, so ``preprocess_v1``'s multi-round masking is exercised.
    ``pretrain=True``: LCS-558K-like captions, one ``<image>`` turn + one answer each (``plain``)."""
    img_dir = os.path.join(tmpdir, "images")
    os.makedirs(img_dir, exist_ok=True)
    colors = list(_COLORS)
    records = []
    for i in range(n):
        color = colors[i % len(colors)]
        name = f"{i:03d}.png"
        if pretrain:
            conv = [{"from": "human", "value": "Describe the image concisely.\n<image>"},
                    {"from": "gpt", "value": f"a {color} circle on a white picture"}]
            rec = {"id": f"tiny-pt-{i}", "image": name, "conversations": conv}
        else:
            conv = [{"from": "human", "value": "<image>\nWhat color is the circle?"},
                    {"from": "gpt", "value": f"The circle is {color}."}]
            if i % 2 == 1:
                conv += [{"from": "human", "value": "Is it left or right?"},
                         {"from": "gpt", "value": "It is in the middle of this image."}]
            rec = {"id": f"tiny-{i}", "conversations": conv}
            if text_only_every and (i + 1) % text_only_every == 0:
                conv[0]["value"] = "How many sides does a square have?"
                conv[1]["value"] = "four"
                name = None
            else:
                rec["image"] = name
        if name:
            _image(color, size=(400, 300) if i % 2 == 0 else (300, 400)).save(os.path.join(img_dir, name))
        records.append(rec)
    path = os.path.join(tmpdir, "pretrain.json" if pretrain else "data.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    return path, img_dir


def make_data_args(json_path: str, image_folder: str, image_processor, image_aspect_ratio: str = "pad"):
    """Upstream ``DataArguments`` as ``train()`` completes it for a multimodal run."""
    from llava.train.train import DataArguments

    data_args = DataArguments(data_path=json_path, lazy_preprocess=True, is_multimodal=True,
                              image_folder=image_folder, image_aspect_ratio=image_aspect_ratio)
    data_args.image_processor = image_processor
    data_args.mm_use_im_start_end = False
    return data_args


def make_training_args(output_dir: str, **overrides):
    """Upstream ``TrainingArguments`` for a 2-step CPU run (no saving, no reporting)."""
    from llava.train.train import TrainingArguments

    kw = dict(
        output_dir=output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2,
        learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0, lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
        model_max_length=MODEL_MAX_LENGTH, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def make_trainer(model, tokenizer, image_processor, tmpdir: str, *, n: int = 4, **training_overrides):
    """``LLaVATrainer`` over ``n`` synthetic samples via upstream's ``make_supervised_data_module``."""
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import make_supervised_data_module

    json_path, img_dir = make_synthetic_data(tmpdir, n)
    data_args = make_data_args(json_path, img_dir, image_processor,
                               getattr(model.config, "image_aspect_ratio", "pad"))
    data_module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
    args = make_training_args(os.path.join(tmpdir, "out"), **training_overrides)
    return LLaVATrainer(model=model, tokenizer=tokenizer, args=args, **data_module)


def make_batch(tokenizer, image_processor, n: int = 2, *, tmpdir: str | None = None):
    """A collated training batch (input_ids, labels, attention_mask, images) from upstream's dataset."""
    from llava.train.train import make_supervised_data_module

    tmpdir = tmpdir or tempfile.mkdtemp(prefix="tiny-batch-")
    json_path, img_dir = make_synthetic_data(tmpdir, n, text_only_every=0)
    data_args = make_data_args(json_path, img_dir, image_processor)
    dm = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
    return dm["data_collator"]([dm["train_dataset"][i] for i in range(n)])


def make_prompt_ids(tokenizer, question: str = "What color is the circle?"):
    """``input_ids`` [1, L] of a v1 prompt with one ``<image>`` (-200), as the eval scripts build it."""
    from llava import conversation as conversation_lib
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    conv = conversation_lib.conv_templates[CONV_VERSION].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)


# ------------------------------------------------------------------------------------ upstream train()
def save_tiny_base(tmpdir: str, *, seed: int = 0, legacy: bool = False) -> dict:
    """Save what ``scripts/v1_5/pretrain.sh`` starts from: a tiny *plain* Llama LM + tokenizer
    (the "vicuna" folder) and the tiny CLIP tower folder. Returns ``{"base": ..., "vision_tower": ...}``."""
    import transformers

    base = os.path.join(tmpdir, "vicuna-tiny")
    build_tokenizer_files(base, legacy=legacy)
    tok = load_tokenizer(base)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=2048,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(base)
    vt = build_vision_tower_dir(os.path.join(tmpdir, "clip-vit-tiny-patch14-336"), seed=seed)
    return {"base": base, "vision_tower": vt}


def train_argv(stage: str, *, model_name_or_path: str, vision_tower: str, data_path: str, image_folder: str,
               output_dir: str, pretrain_mm_mlp_adapter: str | None = None, max_steps: int = 2,
               extra: list | None = None) -> list:
    """Command-line flags of ``scripts/v1_5/{pretrain,finetune}.sh`` for ``llava/train/train.py``,
    minus deepspeed/bf16/tf32/wandb, shrunk to a 2-step CPU run. ``stage``: "pretrain" | "finetune"."""
    common = [
        "--model_name_or_path", model_name_or_path,
        "--data_path", data_path, "--image_folder", image_folder,
        "--vision_tower", vision_tower, "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", output_dir, "--num_train_epochs", "1", "--max_steps", str(max_steps),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--save_strategy", "no", "--learning_rate", "1e-3", "--weight_decay", "0.", "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", str(MODEL_MAX_LENGTH),
        "--gradient_checkpointing", "True", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--report_to", "none", "--use_cpu", "True", "--seed", "0", "--disable_tqdm", "True",
    ]
    if stage == "pretrain":
        argv = common + ["--version", "plain", "--tune_mm_mlp_adapter", "True"]
    elif stage == "finetune":
        argv = common + ["--version", "v1", "--image_aspect_ratio", "pad", "--group_by_modality_length", "True"]
        if pretrain_mm_mlp_adapter:
            argv += ["--pretrain_mm_mlp_adapter", pretrain_mm_mlp_adapter]
    else:
        raise ValueError(stage)
    return argv + list(extra or [])


def run_train(argv: list):
    """Run upstream's ``llava.train.train.train()`` in-process with ``argv`` (flags only)."""
    from llava.train import train as train_mod

    old = sys.argv
    sys.argv = ["train.py"] + list(argv)
    try:
        return train_mod.train()
    finally:
        sys.argv = old


# ------------------------------------------------------------------------------------------------ checks
def check_forward_backward(model, tokenizer, image_processor, tmpdir):
    from llava.constants import IGNORE_INDEX

    batch = make_batch(tokenizer, image_processor, 2, tmpdir=os.path.join(tmpdir, "batch"))
    assert (batch["labels"] != IGNORE_INDEX).any(), "all labels masked"
    assert batch["images"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE), batch["images"].shape
    model.train()
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], images=batch["images"])
    loss = out.loss
    assert torch.isfinite(loss), loss
    # 576 image tokens replace each -200 placeholder
    text_len = int(batch["attention_mask"].sum(1).max())
    assert out.logits.shape[1] == text_len - 1 + NUM_PATCHES, (out.logits.shape, text_len)
    loss.backward()
    proj_grad = model.get_model().mm_projector[0].weight.grad
    assert proj_grad is not None and proj_grad.abs().sum() > 0, "no gradient reached the projector"
    assert all(p.grad is None for p in model.get_vision_tower().parameters()), "vision tower must be frozen"
    return f"loss={loss.item():.4f} seq={out.logits.shape[1]}"


def check_trainer(model, tokenizer, image_processor, tmpdir):
    from llava.constants import IGNORE_INDEX

    trainer = make_trainer(model, tokenizer, image_processor, os.path.join(tmpdir, "train"), n=4)
    ds = trainer.train_dataset
    for i in range(len(ds)):
        item = ds[i]
        assert (item["labels"] != IGNORE_INDEX).any(), f"sample {i}: labels fully masked (tokenization mismatch?)"
        assert item["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    # exactly the answers (+ </s>) stay unmasked, single- and multi-round
    answers = [tokenizer.decode(ds[i]["labels"][ds[i]["labels"] != IGNORE_INDEX]).strip() for i in range(2)]
    assert answers == ["The circle is red.</s>",
                       "The circle is green.</s> It is in the middle of this image.</s>"], answers
    before = model.get_model().mm_projector[0].weight.detach().clone()
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2, trainer.state.global_step
    assert len(losses) == 2 and all(l == l and l > 0 for l in losses), losses
    assert not torch.equal(before, model.get_model().mm_projector[0].weight), "projector did not change"
    return f"steps={trainer.state.global_step} losses={[round(l, 4) for l in losses]} train_loss={result.training_loss:.4f}"


def check_generate(model, tokenizer, image_processor):
    from llava.mm_utils import process_images

    model.eval()
    model.config.use_cache = True
    input_ids = make_prompt_ids(tokenizer)
    images = process_images([_image("red")], image_processor, model.config)
    assert images.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model.generate(input_ids, images=images, image_sizes=[(400, 300)], do_sample=False,
                         max_new_tokens=3, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    # transformers 4.37.2 starts the output with the [B, 1] BOS placeholder it makes when generating from
    # inputs_embeds alone, then the new tokens: [<s>, t1, t2, t3] (never the prompt ids).
    assert out.ndim == 2 and out.shape[0] == 1 and 2 <= out.shape[1] <= 4, out.shape
    assert out[0, 0].item() == tokenizer.bos_token_id, out
    text = tokenizer.batch_decode(out, skip_special_tokens=True)[0]
    return f"new_ids={out[0].tolist()} text={text!r}"


def check_lora(model, tokenizer, image_processor, tmpdir):
    from llava.train.train import find_all_linear_names, get_peft_state_non_lora_maybe_zero_3
    from peft import LoraConfig, get_peft_model

    model.train()
    model.config.use_cache = False
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=find_all_linear_names(model), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    for p in pm.get_model().mm_projector.parameters():  # as finetune_lora: projector stays trainable
        p.requires_grad = True
    batch = make_batch(tokenizer, image_processor, 2, tmpdir=os.path.join(tmpdir, "lora-batch"))
    out = pm(**batch)
    out.loss.backward()
    lora_grads = [p.grad for n, p in pm.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    non_lora = get_peft_state_non_lora_maybe_zero_3(pm.named_parameters())
    assert any("mm_projector" in k for k in non_lora), list(non_lora)
    return f"loss={out.loss.item():.4f} lora_params={len(lora_grads)} non_lora_keys={len(non_lora)}"


def check_train_e2e(tmpdir):
    """Upstream ``train()``: pretrain (projector only) -> finetune from ``mm_projector.bin`` -> reload with
    ``load_pretrained_model`` on CPU -> generate."""
    from llava.model.builder import load_pretrained_model

    root = os.path.join(tmpdir, "e2e")
    paths = save_tiny_base(root)
    pt_json, pt_imgs = make_synthetic_data(os.path.join(root, "pt-data"), 4, pretrain=True)
    ft_json, ft_imgs = make_synthetic_data(os.path.join(root, "ft-data"), 4)
    pt_out = os.path.join(root, "checkpoints", "llava-tiny-pretrain")
    ft_out = os.path.join(root, "checkpoints", "llava-tiny-finetune")
    run_train(train_argv("pretrain", model_name_or_path=paths["base"], vision_tower=paths["vision_tower"],
                         data_path=pt_json, image_folder=pt_imgs, output_dir=pt_out))
    proj = torch.load(os.path.join(pt_out, "mm_projector.bin"), map_location="cpu")
    assert sorted(proj) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                            "model.mm_projector.2.bias", "model.mm_projector.2.weight"], sorted(proj)
    run_train(train_argv("finetune", model_name_or_path=paths["base"], vision_tower=paths["vision_tower"],
                         data_path=ft_json, image_folder=ft_imgs, output_dir=ft_out,
                         pretrain_mm_mlp_adapter=os.path.join(pt_out, "mm_projector.bin")))
    assert os.path.exists(os.path.join(ft_out, "config.json"))
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        ft_out, None, "llava-tiny-finetune", device_map="cpu", device="cpu")
    assert type(model).__name__ == "LlavaLlamaForCausalLM" and context_len == 2048
    model.float()  # the builder loads fp16
    model.get_vision_tower().float()
    info = check_generate(model, tokenizer, image_processor)
    saved = sorted(os.listdir(ft_out))
    return f"pretrain->finetune->load ok, files={saved}, {info}"


def main(argv=None) -> int:
    import transformers

    t0 = time.time()
    path = assert_upstream_llava()
    print(f"upstream llava: {path}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="tiny-upstream-") as tmpdir:
        t = time.time()
        model, tokenizer, image_processor = build_tiny_upstream(tmpdir)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"PASS build vocab={len(tokenizer)} params={n_params} ({time.time() - t:.1f}s)")

        checks = [
            ("forward_backward", lambda: check_forward_backward(model, tokenizer, image_processor, tmpdir)),
            ("trainer", lambda: check_trainer(model, tokenizer, image_processor, tmpdir)),
            ("generate", lambda: check_generate(model, tokenizer, image_processor)),
            ("lora", lambda: check_lora(model, tokenizer, image_processor, tmpdir)),
        ]
        if "--no-e2e" not in (argv or []):
            checks.append(("train_e2e", lambda: check_train_e2e(tmpdir)))
        for name, fn in checks:
            t = time.time()
            info = fn()
            print(f"PASS {name} {info} ({time.time() - t:.1f}s)", flush=True)
    print(f"ALL PASS ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
