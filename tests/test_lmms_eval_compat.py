"""What lmms-eval 0.7.3's own `llava` wrapper does with our checkpoints (see docs/lmms_eval.md), offline and
without lmms-eval installed: its calls are reproduced here.

The wrapper calls `load_pretrained_model(pretrained, None, model_name, device_map=..., multimodal=True, ...)`
(no model_base), casts the pixels to float16 and calls `model.generate(input_ids, images=..., image_sizes=...)`
from whatever folder lmms-eval is started in."""
import contextlib
import json
import os
import shutil
import types

import pytest
import torch

from tests.helpers import build_tiny_clip, make_tiny_llava

# Recorded as the training command line gave them, relative to the training run's cwd (the project folder),
# the way the repo's own checkpoints/tiny-lora records ./playground/tiny/...
TOWER_REL = "./playground/tiny/models/clip-vit-tiny-patch14-336"
BASE_REL = "./playground/tiny/models/vicuna-tiny"


# --------------------------------------------------------------------------------------------- fixtures

def _write_lora_checkpoint(out):
    """What finetune_lora.sh leaves in its output_dir, built in-process in seconds: config.json (LLaVA),
    adapter_config.json + adapter_model.safetensors, non_lora_trainables.bin (the projector).
    Run with the project folder as cwd, so every path is recorded relative to it, as in training."""
    import peft
    from llava.model import LlavaLlamaForCausalLM

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(BASE_REL, dtype=torch.float32)
    model.get_model().initialize_vision_modules(types.SimpleNamespace(
        vision_tower=TOWER_REL, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu"))
    model.config.image_aspect_ratio = "pad"
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # B starts at zero: without this the merge would change nothing
    model.save_pretrained(str(out))
    llava = model.get_base_model()
    llava.config.save_pretrained(str(out))
    projector = llava.get_model().mm_projector.state_dict()
    torch.save({f"base_model.model.model.mm_projector.{k}": v for k, v in projector.items()},
               os.path.join(out, "non_lora_trainables.bin"))


@pytest.fixture(scope="module")
def project(tiny_assets, tmp_path_factory):
    """<project>/playground/tiny (the tiny assets) and <project>/checkpoints/tiny-lora, the repo's layout."""
    root = tmp_path_factory.mktemp("project")
    (root / "playground").mkdir()
    os.symlink(tiny_assets["root"], root / "playground" / "tiny")
    lora = root / "checkpoints" / "tiny-lora"
    lora.mkdir(parents=True)
    with contextlib.chdir(root):
        _write_lora_checkpoint(lora)
    return root


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """lmms-eval started from an unrelated folder: no relative path recorded in a checkpoint holds from here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(path, model_base=None, **kwargs):
    from llava.model import builder

    # Looked up on the module: the DualSpeed patch replaces builder.load_pretrained_model.
    return builder.load_pretrained_model(str(path), model_base, os.path.basename(str(path)), **kwargs)


def _wrapper_generate(tokenizer, model, image_processor, max_new_tokens=3):
    """The wrapper's generate_until for one image: process_images, float16 pixels, vicuna_v1 prompt."""
    from PIL import Image

    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    image = Image.new("RGB", (40, 30), (200, 30, 30))
    pixels = process_images([image], image_processor, model.config).to(dtype=torch.float16, device=model.device)
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\nWhat color is the shape?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), images=pixels, image_sizes=[image.size],
                             do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.unk_token_id)
    return out


# ------------------------------------------------------------------------------ 1. float16 pixels, fp32 model

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_llava(build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-vit-tiny-patch14-336"))


def test_float16_pixels_on_float32_model_are_not_rounded_twice(tiny_model):
    torch.manual_seed(0)
    half = torch.randn(2, 3, 336, 336).half()
    with torch.no_grad():
        got = tiny_model.encode_images(half)
        # The same pixels, upcast by the caller: the tower must see exactly these and keep float32 features
        # (casting the features to float16 and back would differ from this in the low bits).
        want = tiny_model.encode_images(half.float())
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_float32_pixels_on_bfloat16_model(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        got = model.encode_images(pixels)
        want = model.encode_images(pixels.to(torch.bfloat16))  # what upstream feeds a bf16 tower
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


# ------------------------------------------------------------------------- 2. LoRA without model_base

def test_lora_without_model_base_uses_the_recorded_base(project, elsewhere, caplog):
    lora = project / "checkpoints" / "tiny-lora"
    recorded = json.loads((lora / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == BASE_REL  # the fixture records it the way training does (relative to its cwd)

    with caplog.at_level("WARNING", logger="llava.model.builder"):
        tokenizer, model, processor, _ = _load(lora, device="cpu")
    base = os.path.normpath(os.path.join(project, BASE_REL))  # found from the checkpoint's grandparent
    assert any(str(lora) in r.getMessage() and r.getMessage().endswith(base) for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged

    from llava.model import builder

    _, explicit, _, _ = builder.load_pretrained_model(str(lora), str(project / BASE_REL), "tiny-lora",
                                                      device="cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), explicit.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert _wrapper_generate(tokenizer, model, processor).shape[0] == 1


def test_lora_with_a_missing_recorded_base_names_folder_base_and_flag(project, tmp_path):
    lora = tmp_path / "moved-lora"
    shutil.copytree(project / "checkpoints" / "tiny-lora", lora)
    adapter = json.loads((lora / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = "./no/such/vicuna"
    (lora / "adapter_config.json").write_text(json.dumps(adapter))
    with pytest.raises(ValueError) as info:
        _load(lora, device="cpu")
    msg = str(info.value)
    assert str(lora) in msg and "'./no/such/vicuna'" in msg and "--model-base" in msg


# ------------------------------------------------------------------------------ 3. isolator after a merge

def test_merge_copies_the_isolator_and_pruned_inference_loads_it(project, elsewhere, capsys):
    import dualspeed_patch
    from dualspeed_patch import isolator as isolator_lib
    from dualspeed_patch import run
    from scripts.merge_lora_weights import main as merge_main

    lora = elsewhere / "tiny-lora-dualspeed"
    shutil.copytree(project / "checkpoints" / "tiny-lora", lora)
    hidden = json.loads((lora / "config.json").read_text())["hidden_size"]
    isolator = torch.randn(2, hidden)
    torch.save({"weight": isolator}, lora / "mode_isolator.bin")
    (lora / "dualspeed_config.json").write_text('{"isolator_length": 2}')
    # This copy is outside the project, so its relative paths cannot hold: make them absolute.
    for name in ("config.json", "adapter_config.json"):
        text = (lora / name).read_text().replace(BASE_REL, str(project / BASE_REL))
        (lora / name).write_text(text.replace(TOWER_REL, str(project / TOWER_REL)))

    merged = elsewhere / "tiny-merged"
    merge_main(["--model-path", str(lora), "--save-model-path", str(merged)])  # no --model-base either
    out = capsys.readouterr().out
    assert f"copied mode_isolator.bin from {lora} to {merged}" in out
    assert f"copied dualspeed_config.json from {lora} to {merged}" in out
    assert (merged / "dualspeed_config.json").read_text() == '{"isolator_length": 2}'

    try:
        run.configure_inference(run.build_parser().parse_args(["--pruned", "llava.eval.run_llava"]))
        tokenizer, model, processor, _ = _load(merged, device="cpu")
        torch.testing.assert_close(isolator_lib.get(model).weight.detach(), isolator)
        assert _wrapper_generate(tokenizer, model, processor).shape[0] == 1  # pruned, float16 pixels
    finally:
        dualspeed_patch.remove()


def test_merge_without_dualspeed_files_copies_nothing(project, tmp_path):
    from scripts.merge_lora_weights import copy_carried_files

    (tmp_path / "dst").mkdir()
    assert copy_carried_files(str(project / "checkpoints" / "tiny-lora"), str(tmp_path / "dst")) == []
    assert os.listdir(tmp_path / "dst") == []


# ------------------------------------------------------------------- 4. the wrapper's `multimodal` keyword

def test_the_wrappers_first_call_succeeds(project, elsewhere):
    # Exactly the wrapper's first try (llava.py): multimodal=True, device_map="auto", no device, no model_base.
    tokenizer, model, processor, context_len = _load(project / "checkpoints" / "tiny-lora", device_map="auto",
                                                     multimodal=True, attn_implementation="sdpa")
    assert model.device.type == "cpu" and processor is not None and context_len > 0
    assert not hasattr(model.config, "multimodal")
    assert _wrapper_generate(tokenizer, model, processor).shape[0] == 1


# --------------------------------------------------------------------------- 5. relative vision tower paths

def test_relative_tower_is_found_from_the_checkpoint_and_config_kept(project, elsewhere):
    _, model, _, _ = _load(project / "checkpoints" / "tiny-lora", device="cpu")
    tower = model.get_vision_tower()
    assert os.path.isabs(tower.vision_tower_name)
    assert os.path.samefile(tower.vision_tower_name, project / TOWER_REL)
    assert model.config.mm_vision_tower == TOWER_REL  # what the checkpoint recorded, for a later save


def test_relative_tower_inside_the_checkpoint_folder(project, tiny_assets, elsewhere):
    lora = elsewhere / "self-contained"
    shutil.copytree(project / "checkpoints" / "tiny-lora", lora)
    shutil.copytree(tiny_assets["vision_tower"], lora / "clip")
    cfg = json.loads((lora / "config.json").read_text())
    cfg["mm_vision_tower"] = "clip"
    (lora / "config.json").write_text(json.dumps(cfg))
    adapter = json.loads((lora / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = tiny_assets["model"]
    (lora / "adapter_config.json").write_text(json.dumps(adapter))
    _, model, _, _ = _load(lora, device="cpu")
    assert os.path.samefile(model.get_vision_tower().vision_tower_name, lora / "clip")


def test_missing_relative_tower_names_config_path_and_places_tried(project, tmp_path, elsewhere):
    lora = tmp_path / "a" / "b" / "lost-tower"
    shutil.copytree(project / "checkpoints" / "tiny-lora", lora)
    cfg = json.loads((lora / "config.json").read_text())
    cfg["mm_vision_tower"] = "./models/no-such-clip"
    (lora / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError) as info:
        _load(lora, model_base=str(project / BASE_REL), device="cpu")
    msg = str(info.value)
    assert str(lora / "config.json") in msg and "'./models/no-such-clip'" in msg
    for anchor in (elsewhere, lora, lora.parent.parent):
        assert os.path.join(str(anchor), "models", "no-such-clip") in msg
