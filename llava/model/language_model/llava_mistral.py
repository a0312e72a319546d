"""LlavaMistralForCausalLM: LLaVA on a Mistral LM (LLaVA-1.6-Mistral)."""
from __future__ import annotations

import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM, MistralModel
from transformers.models.mistral.modeling_mistral import MistralPreTrainedModel

from ..config import LlavaConfigMixin
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .generation import LlavaGenerationMixin


class LlavaMistralConfig(LlavaConfigMixin, MistralConfig):
    """MistralConfig plus LLaVA's multimodal fields (llava.model.config.LlavaConfigMixin)."""

    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig

    def __init__(self, config: MistralConfig):
        super().__init__(config)


class LlavaMistralForCausalLM(LlavaGenerationMixin, MistralForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaMistralConfig

    def __init__(self, config):
        MistralPreTrainedModel.__init__(self, config)
        self.model = LlavaMistralModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register("llava_mistral", LlavaMistralConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMistralConfig, LlavaMistralForCausalLM, exist_ok=True)
