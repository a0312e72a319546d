"""Shared test helpers: an in-memory tiny LlavaLlamaForCausalLM, and the runner of the upstream-style scripts."""
import os
import subprocess
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def build_tiny_clip(folder):
    from dualspeed_lab.tiny.vision import build_vision_tower

    return build_vision_tower(str(folder), seed=0)


def make_tiny_llava(vision_path, merge="flat", vocab=64, hidden=32, **config):
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlavaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlavaLlamaForCausalLM(cfg).eval()
    args = types.SimpleNamespace(vision_tower=vision_path, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type=merge, mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    for k, v in config.items():
        setattr(model.config, k, v)
    return model


def make_eval_checkpoint(assets, folder):
    """A LLaVA checkpoint from the tiny Llama + tiny CLIP (random projector) with a mode_isolator.bin."""
    from transformers import AutoTokenizer

    from dualspeed_patch import isolator
    from llava.model import LlavaLlamaForCausalLM

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(assets["model"], dtype=torch.float32)
    args = types.SimpleNamespace(vision_tower=assets["vision_tower"], mm_vision_select_layer=-2,
                                 mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None,
                                 mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "pad"
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets["model"]).save_pretrained(folder)
    isolator.attach(model, 4)
    isolator.save(model, folder)
    return str(folder)


TINY_FLAGS = ["--per_device_train_batch_size", "4", "--max_steps", "3", "--bf16", "False",
              "--dataloader_num_workers", "0", "--model_max_length", "1024", "--save_steps", "1000"]


def two_image_batch():
    """Two samples with one image each (the second right-padded), answers after the image, random pixels."""
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8], [1, IMAGE_TOKEN_INDEX, 9, 10, 11, 0]])
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[ids == 0] = IGNORE_INDEX
    torch.manual_seed(1)
    return dict(input_ids=ids, attention_mask=ids != 0, labels=labels, images=torch.randn(2, 3, 336, 336))


def run_script(script, assets, out_dir, launcher=None, deepspeed="", extra=(), **env_overrides):
    env = dict(os.environ)
    env.update(
        MODEL_NAME_OR_PATH=assets["model"], VISION_TOWER=assets["vision_tower"],
        PRETRAIN_DATA_PATH=assets["pretrain_data"], PRETRAIN_IMAGE_FOLDER=assets["pretrain_images"],
        DATA_PATH=assets["finetune_data"], IMAGE_FOLDER=assets["image_folder"], OUTPUT_DIR=str(out_dir),
        LAUNCHER=launcher or sys.executable, DEEPSPEED_CONFIG=deepspeed, REPORT_TO="none",
        PATH=BIN + os.pathsep + env.get("PATH", ""), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        **env_overrides)
    cmd = ["bash", os.path.join(ROOT, "scripts", "v1_5", script), *TINY_FLAGS, *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
