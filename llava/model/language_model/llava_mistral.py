"""LlavaMistralForCausalLM: LLaVA on a Mistral LM (LLaVA-1.6-Mistral)."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM, MistralModel
from transformers.models.mistral.modeling_mistral import MistralPreTrainedModel

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .generation import LlavaGenerationMixin


class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig

    def __init__(self, config: MistralConfig):
        super().__init__(config)


class LlavaMistralForCausalLM(LlavaGenerationMixin, MistralForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaMistralConfig
    accepts_loss_kwargs = False
    # The tower is built with delay_load and filled from its own CLIP folder, as upstream does.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\."]

    def __init__(self, config):
        MistralPreTrainedModel.__init__(self, config)
        self.model = LlavaMistralModel(config)
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


AutoConfig.register("llava_mistral", LlavaMistralConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMistralConfig, LlavaMistralForCausalLM, exist_ok=True)
