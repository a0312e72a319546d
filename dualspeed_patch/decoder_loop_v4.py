"""DUET-VLM stage B on a transformers 4.x Llama-style decoder (upstream `llava-torch` pins 4.37).

The same plan, ranking and compaction as `decoder_loop.py` (transformers 5), with 4.x's layer interface:
4-D masks from `_prepare_4d_causal_attention_mask(_for_sdpa)`, layers that return tuples and take
`past_key_value`, checkpointing through the decoder's `_gradient_checkpointing_func`, legacy tuple caches.

One difference is forced by 4.x: its attention slices the rotary tables to the layer's key length
(`rotary_emb(value, seq_len=kv_seq_len)`, then indexes them with the position ids), so after a drop a kept token
cannot keep a position id beyond the shortened sequence. Positions are therefore closed up as the reference's
LLaVA code does: a kept token's id drops by the number of tokens dropped before it, and in a decoding step each
stage's position ids drop by that sample's count of tokens dropped before the stage. The stages' 2-D masks and
those counts are kept on the decoder between steps, because 4.x hands the cache around as tuples.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from . import layer_drop

_STAGES = "_dualspeed_layer_drop_stages_v4"  # on the decoder instance: what decoding steps need


@dataclasses.dataclass
class CachedStagesV4:
    prefill_len: int
    lengths: Dict[int, int]          # first layer of a stage -> its cached length after the prefill
    masks: Dict[int, torch.Tensor]   # first layer of a stage -> its 2-D padding mask over the prefill tokens
    shifts: Dict[int, torch.Tensor]  # first layer of a stage -> [B] tokens dropped before it, per sample


def supports(decoder) -> bool:
    """A 4.x Llama-style decoder: the attributes its forward reads to choose the mask."""
    return hasattr(decoder, "_use_sdpa") and hasattr(decoder, "_use_flash_attention_2")


def stages_for(decoder, cache) -> Optional[CachedStagesV4]:
    """The kept stages when `cache` continues the prefill they were made for (its layers' lengths say so)."""
    stages = decoder.__dict__.get(_STAGES)
    if stages is None or cache is None:
        return None
    lengths = layer_lengths(cache)
    if not lengths or len(set(lengths)) == 1:
        return None  # every layer equally long: a cache without stage B
    grown = lengths[0] - stages.prefill_len
    if grown < 0 or any(lengths[first] - grown != n for first, n in stages.lengths.items()):
        raise RuntimeError("DUET stage B: this cache's layer lengths do not continue the last stage-B prefill of "
                           "this decoder; start generation with a fresh cache")
    return stages


def layer_lengths(cache):
    if hasattr(cache, "get_seq_length") and hasattr(cache, "key_cache"):
        return [cache.get_seq_length(i) for i in range(len(cache.key_cache))]
    return [layer[0].shape[-2] for layer in cache]  # the legacy tuple of (key, value) per layer


def _mask(model, mask_2d, batch, q_len, embeds, past):
    from transformers.modeling_attn_mask_utils import (_prepare_4d_causal_attention_mask,
                                                       _prepare_4d_causal_attention_mask_for_sdpa)

    if model._use_flash_attention_2:
        return mask_2d if (mask_2d is not None and not bool(mask_2d.all())) else None
    if model._use_sdpa:
        return _prepare_4d_causal_attention_mask_for_sdpa(mask_2d, (batch, q_len), embeds, past)
    return _prepare_4d_causal_attention_mask(mask_2d, (batch, q_len), embeds, past)


def _rope(layer, hidden, position_ids):
    cos, sin = layer.self_attn.rotary_emb(hidden, seq_len=int(position_ids.max()) + 1)
    return cos[position_ids], sin[position_ids]


def _run(model, layers, start, end, hidden, mask, position_ids, cache, use_cache):
    for i in range(start, end):
        if model.gradient_checkpointing and model.training:
            out = model._gradient_checkpointing_func(layers[i].__call__, hidden, mask, position_ids, cache, False,
                                                     use_cache)
        else:
            out = layers[i](hidden, attention_mask=mask, position_ids=position_ids, past_key_value=cache,
                            output_attentions=False, use_cache=use_cache)
        hidden = out[0]
    return hidden


def staged_forward(model, plan, stages, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                   output_attentions, output_hidden_states, return_dict):
    from transformers.cache_utils import Cache, DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    cfg = model.config
    if output_attentions or output_hidden_states or cfg.output_attentions or cfg.output_hidden_states:
        raise ValueError("DUET stage B changes the sequence length between layers; output_attentions and "
                         "output_hidden_states are not supported with it")
    use_cache = cfg.use_cache if use_cache is None else use_cache
    if model.gradient_checkpointing and model.training:
        use_cache = False
    legacy = use_cache and not isinstance(past_key_values, Cache)
    cache = (DynamicCache.from_legacy_cache(past_key_values) if legacy else past_key_values) if use_cache else None
    B, L = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    past = cache.get_usable_length(L) if cache is not None else 0
    if position_ids is None:
        position_ids = torch.arange(past, past + L, device=device).unsqueeze(0)
    position_ids = position_ids.expand(B, -1)
    if attention_mask is None:
        attention_mask = torch.ones((B, past + L), dtype=torch.bool, device=device)
    layers = model.layers
    depth = len(layers)

    hidden = inputs_embeds
    if plan is None:  # a decoding step: each stage with its own mask, cache length and positions
        new = attention_mask[:, stages.prefill_len:]
        bounds = sorted(stages.lengths) + [depth]
        for start, end in zip(bounds, bounds[1:]):
            mask_2d = torch.cat([stages.masks[start], new], dim=1)
            stage_past = cache.get_usable_length(L, start) if cache is not None else 0
            pos = position_ids - stages.shifts[start].unsqueeze(1)
            hidden = _run(model, layers, start, end, hidden, _mask(model, mask_2d, B, L, hidden, stage_past), pos,
                          cache, use_cache)
        return _output(model, hidden, cache, legacy, use_cache, return_dict)

    drops = plan.spec.resolve(depth)
    plan.depth = depth
    tokens, valid = plan.tokens, attention_mask.bool()
    shift = torch.zeros(B, dtype=torch.long, device=device)
    info = CachedStagesV4(prefill_len=attention_mask.shape[1], lengths={0: L}, masks={0: valid},
                          shifts={0: shift.clone()})
    start = 0
    for s, end in enumerate(list(drops) + [depth]):
        hidden = _run(model, layers, start, end, hidden, _mask(model, valid, B, hidden.shape[1], hidden, past),
                      position_ids, cache, use_cache)
        if end == depth:
            break
        n_keep = torch.floor(plan.n0.double() * plan.spec.ratios[s] + 1e-9).long()
        scores = layer_drop.text_to_visual_scores(layers[end], hidden, _rope(layers[end], hidden, position_ids),
                                                  tokens)
        keep = layer_drop.keep_mask(scores, tokens, n_keep)
        dropped = tokens.valid & ~keep
        before = dropped.long().cumsum(1)  # tokens dropped at or before each position (this stage)
        index, valid = layer_drop.compact_index(keep, plan.side)
        hidden = layer_drop.gather_rows(hidden, index)
        position_ids = layer_drop.gather_rows(position_ids, index) - before.gather(1, index)
        tokens = tokens.gather(index, valid)
        shift = shift + dropped.sum(1)
        plan.counts[end] = tokens.visual.sum(1)
        info.lengths[end], info.masks[end], info.shifts[end] = hidden.shape[1], valid, shift.clone()
        start = end
    if cache is not None:
        model.__dict__[_STAGES] = info
    hidden = layer_drop.expand(model.norm(hidden), tokens, L)
    return _output(model, hidden, cache, legacy, use_cache, return_dict, normed=True)


def _output(model, hidden, cache, legacy, use_cache, return_dict, normed=False):
    from transformers.modeling_outputs import BaseModelOutputWithPast

    hidden = hidden if normed else model.norm(hidden)
    next_cache = (cache.to_legacy_cache() if legacy else cache) if use_cache else None
    if return_dict is False or (return_dict is None and not model.config.use_return_dict):
        return tuple(v for v in (hidden, next_cache) if v is not None)
    return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=next_cache)
