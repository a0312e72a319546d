"""Small builders shared by tests: an in-memory tiny LlavaLlamaForCausalLM around a tiny CLIP folder."""
import types

import torch


def build_tiny_clip(folder):
    from scripts.tiny.vision import build_vision_tower

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
