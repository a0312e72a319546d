"""LlavaLlamaForCausalLM: a Llama causal LM whose inputs may contain images."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .generation import LlavaGenerationMixin


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlavaGenerationMixin, LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig
    # Keep LLaVA's per-micro-batch mean loss: with loss kwargs the Trainer would switch to sum/num_items.
    accepts_loss_kwargs = False
    # The tower is built with delay_load and filled from its own CLIP folder, as upstream does.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\."]

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LlavaMetaModel) and getattr(module, "image_newline", None) is not None:
            module.image_newline.normal_(0.0, module.config.hidden_size ** -0.5)


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
