"""forward / generate shared by every LLaVA language model class."""
from __future__ import annotations

import torch

# Keys of a training batch that describe the samples (for error messages) and are not model inputs.
BATCH_METADATA_KEYS = ("sample_index",)


class LlavaGenerationMixin:
    """Put first in the bases: it wraps the LM's forward/generate with the image splice, and holds what every
    LLaVA causal-LM class shares."""

    # Keep LLaVA's per-micro-batch mean loss: with loss kwargs the Trainer would switch to sum/num_items.
    accepts_loss_kwargs = False
    # The tower is built with delay_load and filled from its own CLIP folder, as upstream does.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\."]

    def get_model(self):
        return self.model

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        newline = getattr(module, "image_newline", None) if hasattr(module, "get_vision_tower") else None
        if newline is not None:
            newline.normal_(0.0, module.config.hidden_size ** -0.5)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, images=None, image_sizes=None, return_dict=None, image_counts=None,
                **kwargs):
        # Older generate() versions pass cache_position; the v5 Llama forward has none.
        kwargs.pop("cache_position", None)
        # Batch bookkeeping the collator emits for error messages (LLaVATrainer.training_step pops it); dropped
        # here too so an evaluation loop or a hand-written step that forwards the whole batch still works.
        for key in BATCH_METADATA_KEYS:
            kwargs.pop(key, None)
        if inputs_embeds is None:
            # image_counts is consumed here, never handed to the LM's forward. It is passed only when given, so
            # a subclass whose merge keeps upstream's signature still works for callers that do not send it.
            extra = {} if image_counts is None else {"image_counts": image_counts}
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = \
                self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask,
                                                          past_key_values, labels, images, image_sizes, **extra)
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                               use_cache=use_cache, **kwargs)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported: pass input_ids (and images).")
        if images is not None:
            (_, position_ids, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        if inputs_embeds is None:  # single-token prompt: the splice returned ids unchanged
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask,
                                inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs
