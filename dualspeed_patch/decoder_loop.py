"""The decoder forward with DUET-VLM stage B: the fork's own decoder layers, run in stages of shrinking length.

The patch table installs `wrap` as `forward` of the fork's `LlavaMetaModel` mixin. LLaVA's decoder classes
put the mixin first (`LlavaLlamaModel(LlavaMetaModel, LlamaModel)`), so the wrapper is found before the
transformers decoder's forward and reaches it with `super()`: nothing of the modeling file is copied or
replaced, and `remove()` deletes the attribute.

Without a stage-B plan the wrapper calls the decoder's own forward unchanged. With one (set by the merge for a
reduced forward, `layer_drop.build_plan`), it runs the decoder's modules itself: the same embeddings, rotary
embedding, layers (their `__call__`, so gradient checkpointing, LoRA and ZeRO-3 hooks run), masks from
transformers' `create_causal_mask` / `create_sliding_window_causal_mask`, and final norm. At each boundary the
visual tokens are ranked (`layer_drop`) and the batch is compacted. In a prefill with a cache, every stage's
2-D padding mask is kept on the cache, so decoding steps (one query, the stages' caches of different lengths)
build each stage's mask against its own first layer's cache.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Dict, Optional

import torch

from . import decoder_loop_v4, layer_drop

_PENDING = "_dualspeed_layer_drop_plan"   # on the decoder instance: the plan for its next forward
_STAGES = "_dualspeed_layer_drop_stages"  # on the cache object: what decoding steps need


@dataclasses.dataclass
class CachedStages:
    """Kept on the cache after a prefill with stage B."""
    prefill_len: int
    masks: Dict[int, torch.Tensor]  # first layer of a stage -> its 2-D padding mask over the prefill tokens


def set_plan(decoder, plan: Optional[layer_drop.LayerDropPlan]) -> None:
    """Hand the decoder the plan for its next forward (None clears it)."""
    if plan is None:
        decoder.__dict__.pop(_PENDING, None)
    else:
        decoder.__dict__[_PENDING] = plan


def clear_plan(llava_model) -> None:
    get_model = getattr(llava_model, "get_model", None)
    if callable(get_model) and isinstance(get_model(), torch.nn.Module):
        set_plan(get_model(), None)


def pending_plan(decoder) -> Optional[layer_drop.LayerDropPlan]:
    return decoder.__dict__.get(_PENDING)


def wrap(original, installation, owner=None):
    """forward for the mixin `owner`: stage B when a plan is pending, the decoder's own forward otherwise."""

    def forward(self, *args, **kwargs):
        plan = self.__dict__.pop(_PENDING, None)
        nxt = super(owner, self).forward
        if not transformers5():
            return _forward_v4(self, nxt, plan, args, kwargs)
        if plan is None and not args and getattr(kwargs.get("cache", kwargs.get("past_key_values")), _STAGES,
                                                 None) is None:
            return nxt(**kwargs)  # the common case, decided without binding the call
        call = inspect.signature(nxt).bind(*args, **kwargs).arguments
        extra = dict(call.pop("kwargs", {}))
        embeds = call.get("inputs_embeds")
        cache = call.get("cache", call.get("past_key_values"))
        stages = getattr(cache, _STAGES, None) if cache is not None else None
        if plan is None and stages is None:  # positional arguments, nothing of stage B's
            return nxt(*args, **kwargs)
        _check_plan(plan, embeds, stages)
        for name in ("output_attentions", "output_hidden_states", "return_dict"):
            if name in call:
                extra[name] = call.pop(name)
        if embeds is None and plan is None and call.get("input_ids") is not None:  # a decoding step
            embeds = self.embed_tokens(call["input_ids"])
        return _staged_forward(self, plan, stages, call.get("attention_mask"), call.get("position_ids"), embeds,
                               call.get("use_cache"), cache, extra)

    forward.__name__ = "forward"
    forward.__dualspeed_layer_drop__ = True
    forward.__qualname__ = f"{owner.__name__}.forward" if owner is not None else "forward"
    return forward


def _check_plan(plan, embeds, stages):
    if plan is not None and (embeds is None or not plan.matches(embeds)):
        raise RuntimeError(
            "DUET stage B: the decoder received other embeddings than the merge built its plan for "
            f"({None if embeds is None else tuple(embeds.shape)} vs {tuple(plan.embeds.shape)}); something "
            "between prepare_inputs_labels_for_multimodal and the language model changed them, so the "
            "visual tokens cannot be located")
    if plan is not None and stages is not None:
        raise RuntimeError("DUET stage B: a new reduced prefill was given a cache that already holds a "
                           "stage-B prefill; start generation with a fresh cache")


def _forward_v4(decoder, nxt, plan, args, kwargs):
    """transformers 4.x (decoder_loop_v4.py): the same plan, with 4.x's decoder interface."""
    if plan is None and not args and decoder_loop_v4.stages_for(decoder, kwargs.get("past_key_values")) is None:
        return nxt(**kwargs)
    call = inspect.signature(nxt).bind(*args, **kwargs).arguments
    cache, embeds = call.get("past_key_values"), call.get("inputs_embeds")
    if plan is None:
        stages = decoder_loop_v4.stages_for(decoder, cache)
        if stages is None:  # positional arguments, nothing of stage B's
            return nxt(*args, **kwargs)
        if embeds is None and call.get("input_ids") is not None:  # a decoding step
            embeds = decoder.embed_tokens(call["input_ids"])
    else:
        stages = None
        held = cache is not None and len(set(decoder_loop_v4.layer_lengths(cache))) > 1
        _check_plan(plan, embeds, True if held else None)
    return decoder_loop_v4.staged_forward(
        decoder, plan, stages, call.get("attention_mask"), call.get("position_ids"), cache, embeds,
        call.get("use_cache"), call.get("output_attentions"), call.get("output_hidden_states"),
        call.get("return_dict"))


_TRANSFORMERS5 = []


def transformers5() -> bool:
    """transformers 5 sizes masks per cache layer (create_causal_mask(..., layer_idx=)); 4.x does not."""
    if not _TRANSFORMERS5:
        try:
            from transformers.masking_utils import create_causal_mask
        except ImportError:
            create_causal_mask = None
        _TRANSFORMERS5.append(create_causal_mask is not None
                              and "layer_idx" in inspect.signature(create_causal_mask).parameters)
    return _TRANSFORMERS5[0]


def _refuse_unsupported(model, kwargs, cache):
    cfg = model.config
    for name in ("output_attentions", "output_hidden_states"):
        if kwargs.get(name) or getattr(cfg, name, False):
            raise ValueError(f"DUET stage B changes the sequence length between layers; {name} is not "
                             "supported with it (the per-layer tensors would not line up)")
    if cache is not None and type(cache).__name__ != "DynamicCache":
        raise ValueError(f"DUET stage B keeps caches of different lengths per stage and needs a DynamicCache, "
                         f"got {type(cache).__name__}")


def _layer_kinds(config, depth):
    kinds = getattr(config, "layer_types", None)
    if kinds is not None:
        return list(kinds)[:depth]
    sliding = getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * depth


def _masks(model, embeds, mask_2d, cache, position_ids, kinds, layer_idx):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    out = {}
    for kind in set(kinds):
        fn = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
        out[kind] = fn(config=model.config, inputs_embeds=embeds, attention_mask=mask_2d, cache=cache,
                       position_ids=position_ids, layer_idx=layer_idx)
    return out


def _staged_forward(model, plan, stages, attention_mask, position_ids, inputs_embeds, use_cache, cache, kwargs):
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    _refuse_unsupported(model, kwargs, cache)
    kwargs.pop("return_dict", None)
    if inputs_embeds is None:
        raise ValueError("DUET stage B: the decoder got neither inputs_embeds nor input_ids")
    if use_cache is None:  # the decoder's own forward reads the config's default
        use_cache = bool(getattr(model.config, "use_cache", False)) and not model.training
    if use_cache and cache is None:
        cache = DynamicCache(config=model.config)
    B, L = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    depth = model.config.num_hidden_layers
    layers = model.layers[:depth]
    kinds = _layer_kinds(model.config, depth)
    if position_ids is None:
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = (torch.arange(L, device=device) + past).unsqueeze(0)
    position_ids = position_ids.expand(B, -1)
    if attention_mask is None:
        attention_mask = torch.ones((B, (cache.get_seq_length() if cache is not None else 0) + L),
                                   dtype=torch.bool, device=device)
    attention_mask = attention_mask.bool()

    hidden = inputs_embeds
    if plan is None:  # a decoding step after a stage-B prefill
        boundaries = sorted(b for b in stages.masks if b > 0)
        new = attention_mask[:, stages.prefill_len:]
        start = 0
        for end in boundaries + [depth]:
            mask_2d = attention_mask if start == 0 else torch.cat([stages.masks[start], new], dim=1)
            hidden = _run(model, layers, kinds, start, end, hidden, mask_2d, cache, position_ids, use_cache,
                          kwargs)
            start = end
        return BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), cache=cache)

    drops = plan.spec.resolve(depth)
    plan.depth = depth
    tokens = plan.tokens
    valid = tokens.valid
    n0 = plan.n0
    if cache is not None:
        stage_info = CachedStages(prefill_len=attention_mask.shape[1], masks={})
    start = 0
    for s, end in enumerate(list(drops) + [depth]):
        hidden = _run(model, layers, kinds, start, end, hidden, valid if start else attention_mask, cache,
                      position_ids, use_cache, kwargs)
        if end == depth:
            break
        n_keep = torch.floor(n0.double() * plan.spec.ratios[s] + 1e-9).long()
        position_embeddings = model.rotary_emb(hidden, position_ids=position_ids)
        scores = layer_drop.text_to_visual_scores(layers[end], hidden, position_embeddings, tokens)
        keep = layer_drop.keep_mask(scores, tokens, n_keep)
        index, valid = layer_drop.compact_index(keep, plan.side)
        hidden = layer_drop.gather_rows(hidden, index)
        position_ids = layer_drop.gather_rows(position_ids, index)
        tokens = tokens.gather(index, valid)
        plan.counts[end] = tokens.visual.sum(1)
        if cache is not None:
            stage_info.masks[end] = valid
        start = end
    if cache is not None:
        setattr(cache, _STAGES, stage_info)
    hidden = layer_drop.expand(model.norm(hidden), tokens, L)
    return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache)


def _run(model, layers, kinds, start, end, hidden, mask_2d, cache, position_ids, use_cache, kwargs):
    """Layers [start, end) on one stage's sequence, with that stage's masks and rotary embeddings."""
    masks = _masks(model, hidden, mask_2d, cache, position_ids, kinds[start:end], start)
    position_embeddings = model.rotary_emb(hidden, position_ids=position_ids)
    for i in range(start, end):
        hidden = layers[i](hidden, attention_mask=masks[kinds[i]], position_embeddings=position_embeddings,
                           position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
    return hidden


def check_supported(llava_model) -> None:
    """Refuse stage B where it could not run as asked: the decoder's forward must resolve to the wrapper (a
    fork whose decoder class defines its own forward, or puts the mixin after the transformers base, would
    silently skip the drops), and transformers must size masks per cache layer (5.x)."""
    decoder = llava_model.get_model()
    resolved = getattr(type(decoder), "forward", None)
    if not getattr(resolved, "__dualspeed_layer_drop__", False):
        raise RuntimeError(
            f"DUET stage B cannot run on {type(decoder).__name__}: its forward is "
            f"{getattr(resolved, '__qualname__', resolved)}, not the stage-B loop installed on the LLaVA decoder "
            "mixin (the class defines its own forward, or lists LlavaMetaModel after the transformers decoder)")
    if not transformers5() and not decoder_loop_v4.supports(decoder):
        import transformers

        raise RuntimeError(f"DUET stage B needs transformers >= 5 (masks sized per cache layer), or a 4.x "
                           f"Llama-style decoder; {type(decoder).__name__} on transformers "
                           f"{transformers.__version__} is neither")
