"""python -m llava.export: our tiny LLaVA checkpoints -> transformers' native LLaVA / LLaVA-NeXT folders.

The exported folder is loaded in a subprocess that never imports `llava` (so nothing of ours can leak into the
native path) and must give our model's logits on the same image + question, and the same greedy answer."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from tests.helpers import ROOT

QUESTION = "What color is the shape?"
NEW_TOKENS = 4
# One-sided pinpoints ([width, height] = 672x336 only): a wrong (w, h) reading in the export changes the grid.
PINPOINTS = [[672, 336]]

# Runs in a fresh interpreter: transformers only. Writes the prompt logits and greedy tokens for the parent.
NATIVE_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoProcessor, {cls}

folder, image_path, question, out_path, n_new = sys.argv[1:6]
model = {cls}.from_pretrained(folder, dtype=torch.float32).eval()
processor = AutoProcessor.from_pretrained(folder)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open(image_path).convert("RGB"), text=prompt, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits[0]
    out = model.generate(**inputs, max_new_tokens=int(n_new), do_sample=False)
assert "llava" not in sys.modules, "the native check must not import our package"
image_token_id = model.config.image_token_id
text_ids = [t for t in inputs["input_ids"][0].tolist() if t != image_token_id]
torch.save({{"logits": logits, "text_ids": text_ids, "prompt": prompt,
            "new_tokens": out[0, inputs["input_ids"].shape[1]:].tolist(),
            "n_image_tokens": int((inputs["input_ids"] == image_token_id).sum())}}, out_path)
"""


def _make_checkpoint(assets, folder, aspect, merge, pinpoints=None):
    """A full LLaVA checkpoint as finetuning saves it: the tiny Vicuna + tiny CLIP + a random mlp2x_gelu projector."""
    from transformers import AutoTokenizer

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlavaConfig.from_pretrained(assets["model"])
    model = LlavaLlamaForCausalLM.from_pretrained(assets["model"], config=cfg, dtype=torch.float32)
    args = types.SimpleNamespace(vision_tower=assets["vision_tower"], mm_vision_select_layer=-2,
                                 mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None,
                                 mm_patch_merge_type=merge, mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = aspect
    model.config.image_grid_pinpoints = pinpoints
    model.config.mm_use_im_patch_token = False  # as LLaVA-1.5's finetune scripts
    # The tower is loaded from mm_vision_tower, never from the checkpoint: save the rest, as training does.
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
    model.save_pretrained(folder, state_dict=state)
    AutoTokenizer.from_pretrained(assets["model"]).save_pretrained(folder)
    return str(folder)


def _make_lora_checkpoint(assets, folder):
    """A LoRA checkpoint as finetune_lora.sh saves it: adapter files, config.json and non_lora_trainables.bin
    (the projector, under PEFT's `base_model.model.` prefix). lora_B is made non-zero so the merge matters."""
    from peft import LoraConfig, get_peft_model

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlavaConfig.from_pretrained(assets["model"])
    model = LlavaLlamaForCausalLM.from_pretrained(assets["model"], config=cfg, dtype=torch.float32)
    args = types.SimpleNamespace(vision_tower=assets["vision_tower"], mm_vision_select_layer=-2,
                                 mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None,
                                 mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "pad"
    model.config.mm_use_im_patch_token = False
    # The LLM's attention only (a bare "q_proj" would also hit CLIP's, which LLaVA's LoRA runs leave alone).
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*layers\.\d+\.self_attn\.(q_proj|v_proj)"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(folder)
    model.config.save_pretrained(folder)
    projector = {f"base_model.model.{k}": v for k, v in peft_model.base_model.model.state_dict().items()
                 if "mm_projector" in k}
    torch.save(projector, os.path.join(str(folder), "non_lora_trainables.bin"))
    return str(folder)


def _image(folder, size):
    from PIL import Image

    torch.manual_seed(3)
    pixels = (torch.rand(size[1], size[0], 3) * 255).to(torch.uint8).numpy()
    path = os.path.join(str(folder), f"image_{size[0]}x{size[1]}.png")
    Image.fromarray(pixels).save(path)
    return path


def _ours(ckpt, image_path, model_base=None):
    from PIL import Image

    from llava.export.chat_template import reference_prompt
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(ckpt, model_base, "llava-tiny", device="cpu")
    image = Image.open(image_path).convert("RGB")
    images = process_images([image], processor, model.config)
    ids = tokenizer_image_token(reference_prompt("vicuna_v1", QUESTION), tokenizer, return_tensors="pt")[None]
    with torch.no_grad():
        logits = model(input_ids=ids, images=images, image_sizes=[image.size]).logits[0]
        out = model.generate(ids, images=images, image_sizes=[image.size], max_new_tokens=NEW_TOKENS,
                             do_sample=False)
    # Ours generates from inputs_embeds, so `out` holds only the new tokens.
    return {"logits": logits, "ids": ids[0].tolist(), "new_tokens": out[0].tolist()}


def _export(ckpt, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "llava.export", "--model-path", ckpt, "--output", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc


def _native(cls, out, image_path, tmp_path):
    result = tmp_path / "native.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # cwd outside the repo: `llava` must not even be importable by accident.
    proc = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT.format(cls=cls), str(out), image_path, QUESTION,
                           str(result), str(NEW_TOKENS)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(result, weights_only=True)


def _check_same(ours, native):
    from llava.constants import IMAGE_TOKEN_INDEX

    # Same text tokens around the image (the chat template reproduces our prompt, "▁" quirk included).
    assert native["text_ids"] == [t for t in ours["ids"] if t != IMAGE_TOKEN_INDEX]
    # Our logits cover the original vocabulary; the native ones add the <image> row(s) at the end.
    assert native["logits"].shape[0] == ours["logits"].shape[0]
    vocab = ours["logits"].shape[1]
    diff = (native["logits"][:, :vocab] - ours["logits"]).abs().max().item()
    print(f"max |logit difference| = {diff:.3g}")
    assert diff < 1e-4
    print(f"greedy answer: ours {ours['new_tokens']}, native {native['new_tokens']}")
    assert len(ours["new_tokens"]) > 0 and native["new_tokens"] == ours["new_tokens"]
    return diff


@pytest.mark.slow
def test_export_pad_matches_ours(tiny_assets, tmp_path):
    ckpt = _make_checkpoint(tiny_assets, tmp_path / "llava-pad", "pad", "flat")
    image = _image(tmp_path, (400, 250))  # non-square: exercises the mean-colour square padding
    out = tmp_path / "hf-pad"
    proc = _export(ckpt, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "LlavaForConditionalGeneration" in proc.stdout

    cfg = json.load(open(out / "config.json"))
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    processor_cfg = json.load(open(out / "processor_config.json"))  # transformers 5: one file for the processor
    assert processor_cfg["image_processor"]["do_pad"] is True
    assert processor_cfg["patch_size"] == 14 and processor_cfg["num_additional_image_tokens"] == 1
    native = _native("LlavaForConditionalGeneration", out, image, tmp_path)
    assert native["n_image_tokens"] == 576
    _check_same(_ours(ckpt, image), native)


@pytest.mark.slow
def test_export_anyres_matches_ours(tiny_assets, tmp_path):
    ckpt = _make_checkpoint(tiny_assets, tmp_path / "llava-next", "anyres", "spatial_unpad", PINPOINTS)
    image = _image(tmp_path, (500, 300))  # wider than the 2:1 grid would need: rows are unpadded
    out = tmp_path / "hf-next"
    proc = _export(ckpt, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "LlavaNextForConditionalGeneration" in proc.stdout
    assert json.load(open(out / "config.json"))["image_grid_pinpoints"] == [[336, 672]]  # (height, width)
    native = _native("LlavaNextForConditionalGeneration", out, image, tmp_path)
    # 576 base tokens + the unpadded 2x1 grid (24 rows x 40 columns) + one newline per row.
    assert native["n_image_tokens"] == 576 + 24 * 40 + 24
    _check_same(_ours(ckpt, image), native)


@pytest.mark.slow
@pytest.mark.parametrize("give_base", [True, False], ids=["model-base", "recorded-base"])
def test_export_lora_merges_like_builder(tiny_assets, tmp_path, give_base):
    """Without --model-base, the base recorded in adapter_config.json (here the tiny LLM's folder) is used."""
    ckpt = _make_lora_checkpoint(tiny_assets, tmp_path / "llava-lora")
    image = _image(tmp_path, (300, 300))
    out = tmp_path / "hf-lora"
    proc = _export(ckpt, out, *(["--model-base", tiny_assets["model"]] if give_base else []))
    assert proc.returncode == 0, proc.stderr[-4000:]
    recorded = f"using the base recorded in its adapter_config.json, {tiny_assets['model']}"
    assert (recorded in proc.stderr) != give_base, proc.stderr[-2000:]
    native = _native("LlavaForConditionalGeneration", out, image, tmp_path)
    _check_same(_ours(ckpt, image, model_base=tiny_assets["model"]), native)
    # The merge changed the LLM: the export is not the base model's attention. (Read through the native class:
    # transformers 5 writes its own legacy key layout to disk.)
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    exported = LlavaForConditionalGeneration.from_pretrained(str(out)).model.language_model
    base = load_file(os.path.join(tiny_assets["model"], "model.safetensors"))
    assert not torch.allclose(exported.layers[0].self_attn.q_proj.weight, base["model.layers.0.self_attn.q_proj.weight"])


# ---------------------------------------------------------------------------------------------- chat template

@pytest.mark.parametrize("name", ["vicuna_v1", "v1", "plain"])
def test_chat_template_renders_our_prompt(name):
    """With the plain "<image>\\n" spelling the template renders exactly Conversation.get_prompt()."""
    from jinja2 import Template

    from llava.export.chat_template import build_chat_template, reference_prompt

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    rendered = Template(build_chat_template(name)).render(messages=messages, add_generation_prompt=True)
    assert rendered == reference_prompt(name, QUESTION)


def test_chat_template_multi_turn_matches_conversation():
    from jinja2 import Template

    from llava.conversation import conv_templates
    from llava.export.chat_template import build_chat_template

    conv = conv_templates["vicuna_v1"].copy()
    for role, text in [(0, "<image>\nWhat is it?"), (1, "A circle."), (0, "Which color?"), (1, None)]:
        conv.append_message(conv.roles[role], text)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A circle."}]},
                {"role": "user", "content": "Which color?"}]
    rendered = Template(build_chat_template("vicuna_v1")).render(messages=messages, add_generation_prompt=True)
    assert rendered == conv.get_prompt()


def test_unsupported_conv_template_is_refused():
    from llava.export.chat_template import get_conversation

    with pytest.raises(ValueError, match="llama_2"):
        get_conversation("llama_2")


# ---------------------------------------------------------------------------------------------- key mapping

def test_native_key_mapping():
    from llava.export.hf_native import native_key

    assert native_key("model.layers.0.self_attn.q_proj.weight") == "model.language_model.layers.0.self_attn.q_proj.weight"
    assert native_key("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert native_key("model.mm_projector.0.weight") == "model.multi_modal_projector.linear_1.weight"
    assert native_key("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    # transformers 5's CLIPVisionModel has no `vision_model.` level in its names; ours wraps it once more.
    assert (native_key("model.vision_tower.vision_tower.encoder.layers.0.mlp.fc1.weight")
            == "model.vision_tower.encoder.layers.0.mlp.fc1.weight")
    assert native_key("model.image_newline") == "model.image_newline"
    assert native_key("lm_head.weight") == "lm_head.weight"
    assert native_key("model.mode_isolator.weight") is None  # a module an extension added: skipped, named
    assert native_key("model.layers.0.self_attn.q_proj.weight") == "model.language_model.layers.0.self_attn.q_proj.weight"


def test_new_vocab_rows_never_win_greedy():
    from llava.export.hf_native import _grow_rows

    torch.manual_seed(0)
    head = torch.randn(10, 4)
    grown = _grow_rows(head, 11)
    logits = torch.randn(50, 4) @ grown.T
    assert grown.shape == (11, 4) and torch.equal(grown[:10], head)
    assert (logits[:, 10] <= logits[:, :10].max(dim=1).values).all()


# ---------------------------------------------------------------------------------------------- clear errors

def _fake_checkpoint(folder, weights=True, **config):
    os.makedirs(folder, exist_ok=True)
    base = {"model_type": "llava_llama", "mm_vision_tower": str(folder), "mm_projector_type": "mlp2x_gelu",
            "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad"}
    base.update(config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(base, f)
    if weights:  # never read: the checks under test run before any weight is loaded
        open(os.path.join(folder, "model.safetensors"), "w").write("")
    return str(folder)


def _export_error(*args, **kwargs):
    from llava.export import ExportError, export_to_hf

    with pytest.raises(ExportError) as info:
        export_to_hf(*args, **kwargs)
    return str(info.value)


def test_lora_without_base_is_refused(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "lora")
    open(os.path.join(ckpt, "adapter_config.json"), "w").write("{}")
    msg = _export_error(ckpt, str(tmp_path / "out"))
    assert ckpt in msg and "--model-base" in msg


def test_lora_without_non_lora_trainables_is_refused(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "lora")
    open(os.path.join(ckpt, "adapter_config.json"), "w").write("{}")
    msg = _export_error(ckpt, str(tmp_path / "out"), model_base=str(tmp_path))
    assert ckpt in msg and "non_lora_trainables.bin" in msg


def test_missing_base_folder_is_refused(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "lora")
    open(os.path.join(ckpt, "adapter_config.json"), "w").write("{}")
    open(os.path.join(ckpt, "non_lora_trainables.bin"), "w").write("")
    msg = _export_error(ckpt, str(tmp_path / "out"), model_base=str(tmp_path / "no-such-llm"))
    assert str(tmp_path / "no-such-llm") in msg


def test_projector_only_without_base_is_refused(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "pretrain", weights=False)
    torch.save({"model.mm_projector.0.weight": torch.zeros(1)}, os.path.join(ckpt, "mm_projector.bin"))
    msg = _export_error(ckpt, str(tmp_path / "out"))
    assert ckpt in msg and "mm_projector.bin" in msg and "--model-base" in msg


@pytest.mark.parametrize("projector", ["linear", "mlp3x_gelu", "identity"])
def test_unsupported_projector_is_refused(tmp_path, projector):
    ckpt = _fake_checkpoint(tmp_path / "ckpt", mm_projector_type=projector)
    msg = _export_error(ckpt, str(tmp_path / "out"))
    assert ckpt in msg and projector in msg


@pytest.mark.parametrize("merge,aspect", [("spatial", "anyres"), ("flat", "anyres"), ("spatial_unpad", "pad")])
def test_unsupported_merge_is_refused(tmp_path, merge, aspect):
    ckpt = _fake_checkpoint(tmp_path / "ckpt", mm_patch_merge_type=merge, image_aspect_ratio=aspect,
                            image_grid_pinpoints=PINPOINTS)
    msg = _export_error(ckpt, str(tmp_path / "out"))
    assert ckpt in msg and merge in msg


def test_missing_vision_tower_folder_is_refused(tmp_path):
    tower = str(tmp_path / "no-such-clip")
    ckpt = _fake_checkpoint(tmp_path / "ckpt", mm_vision_tower=tower)
    msg = _export_error(ckpt, str(tmp_path / "out"))
    assert tower in msg and "not found at any of" in msg and "copied into the export" in msg


def test_relative_vision_tower_is_found_from_the_checkpoint(tmp_path, monkeypatch):
    # Checkpoints store mm_vision_tower as given at training time; an export run from another folder must find
    # it the way load_pretrained_model does (from the checkpoint folder upwards).
    from llava.export.hf_native import check_checkpoint

    (tmp_path / "runs" / "clip").mkdir(parents=True)
    ckpt = _fake_checkpoint(tmp_path / "runs" / "ckpt", mm_vision_tower="./runs/clip")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    check_checkpoint(ckpt, None)  # no error: ./runs/clip is found relative to the checkpoint's parent's parent


def test_files_the_export_does_not_carry_are_named(tmp_path, capsys):
    from llava.export.hf_native import check_checkpoint

    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    open(os.path.join(ckpt, "mode_isolator.bin"), "w").write("")  # e.g. DualSpeed's isolator
    check_checkpoint(ckpt, None)
    out = capsys.readouterr().out
    assert "not exported" in out and "mode_isolator.bin" in out
    assert "config.json" not in out.split("not exported", 1)[1] and "model.safetensors" not in out


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "llava.export", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0
    for flag in ("--model-path", "--model-base", "--output", "--conv-template"):
        assert flag in proc.stdout


def test_cli_error_names_folder(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ckpt", mm_projector_type="linear")
    proc = _export(ckpt, tmp_path / "out")
    assert proc.returncode == 2
    assert ckpt in proc.stderr and "mm_projector_type" in proc.stderr
