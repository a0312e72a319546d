"""LlavaLlamaForCausalLM: a Llama causal LM whose inputs may contain images."""
from __future__ import annotations

import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ..config import LlavaConfigMixin
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .generation import LlavaGenerationMixin


class LlavaConfig(LlavaConfigMixin, LlamaConfig):
    """LlamaConfig plus LLaVA's multimodal fields (llava.model.config.LlavaConfigMixin)."""

    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlavaGenerationMixin, LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
