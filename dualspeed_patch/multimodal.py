"""The wrapper of `prepare_inputs_labels_for_multimodal`: reduce image spans, insert the isolator, repack.

The fork's own merge runs unchanged, once, with `labels` replaced by *position tags* (tag t at input
position t). Every LLaVA fork carries labels through its merge and writes IGNORE_INDEX where it inserts image
features, so in the returned labels a tag >= 0 is a text token (its true label is labels[b, tag]) and
IGNORE_INDEX inside the attention mask is an image token (anyres newline tokens included). That yields the
image spans after the fork's own anyres merge / unpad / truncation, with one vision pass."""
from __future__ import annotations

import functools
import inspect
from collections import defaultdict

import torch

from . import context, decoder_loop, layer_drop
from . import isolator as isolator_lib
from . import signals as signals_lib
from .pruners import budget, get_reducer

IGNORE_INDEX = -100


def wrap(original, installation):
    """The wrapper for one installation: outside a mode context it follows the installation's inference spec
    (None unless the pruned-inference runner set one).

    Extra arguments go to the fork's merge exactly as the caller gave them: the wrapper adds none, so a fork
    whose merge has no `image_counts` keyword works as before, and ours gets the collator's counts."""
    extra_names = _names_after_images(original)

    @functools.wraps(original)
    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, *args, **kwargs):
        decoder_loop.clear_plan(self)  # a plan never outlives the merge that made it
        state = context.current()
        if state is None and installation.inference_spec is not None:
            state = context.StepState(installation.inference_spec)
        if (state is None or state.spec.mode == context.FULL or images is None or input_ids is None
                or input_ids.shape[1] == 1 or self.get_vision_tower() is None):
            return original(self, input_ids, position_ids, attention_mask, past_key_values, labels, images,
                            *args, **kwargs)
        return _pruned_merge(self, original, state, input_ids, position_ids, attention_mask, past_key_values,
                             labels, images, args, kwargs, _image_counts(extra_names, args, kwargs))

    return prepare_inputs_labels_for_multimodal


def _names_after_images(original):
    """Names of the merge's parameters after `images`, to find one the caller passed positionally."""
    try:
        params = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):  # a builtin or C-accelerated callable: keywords only
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params[7:] if p.kind in positional]


def _image_counts(extra_names, args, kwargs):
    """The caller's per-sample image counts (the fork's merge validates them), read without changing the call;
    None when not given or when the fork's merge has no such parameter."""
    if "image_counts" in kwargs:
        return kwargs["image_counts"]
    if "image_counts" in extra_names and extra_names.index("image_counts") < len(args):
        return args[extra_names.index("image_counts")]
    return None


def _pruned_merge(model, original, state, input_ids, position_ids, attention_mask, past_key_values, labels,
                  images, args, kwargs, image_counts=None):
    spec = state.spec
    reducer = get_reducer(spec.method)
    batch, length = input_ids.shape
    tags = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(batch, length).contiguous()
    mask_in = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    with signals_lib.capturing(model, reducer.signals) as captured:
        _, pos_full, mask_full, pkv, embeds, tags_out = original(
            model, input_ids, position_ids, mask_in, past_key_values, tags, images, *args, **kwargs)
    if embeds is None or tags_out is None:
        raise RuntimeError("the fork's prepare_inputs_labels_for_multimodal returned no embeddings/labels for "
                           "image inputs; DualSpeed cannot locate the image tokens")
    mask_full = (torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device) if mask_full is None
                 else mask_full.bool())

    true_labels = _true_labels(tags_out, labels)
    state.full_labels = true_labels
    # One device-to-host copy per batch: span boundaries and each sample's valid range drive the repack.
    host = torch.stack([tags_out == IGNORE_INDEX, mask_full]).cpu()
    spans = _image_spans(host[0] & host[1])
    bounds = _valid_bounds(host[1])
    span_batch = signals_lib.SpanBatch(model, spec, embeds, spans, true_labels, mask_full, input_ids, mask_in,
                                       captured, image_counts=image_counts, n_images=len(images))
    # The teacher of a slow step reads detached tokens: no graph is built for them.
    with torch.set_grad_enabled(torch.is_grad_enabled() and spec.mode != context.SLOW):
        reduced = _reduce(reducer, spec, span_batch)
    state.visual_total += sum(e - s for row in spans for s, e in row)
    state.visual_kept += sum(t.shape[0] for t in reduced.values())

    iso = None
    if spec.isolator:
        module = isolator_lib.get(model)
        if module is None:
            raise RuntimeError("pruned mode with the isolator asked for, but the model has no mode_isolator "
                               "(load mode_isolator.bin, or run without the isolator)")
        iso = module().to(embeds.dtype)

    if spec.mode == context.SLOW:
        # Teacher input: the pruned sequence built from the same (detached) features; no second vision pass.
        p_embeds, p_labels, p_mask, p_pos, p_visual = _repack(model, embeds.detach(), true_labels, bounds, spans,
                                                              reduced, None if iso is None else iso.detach())
        state.teacher = context.TeacherInputs(p_embeds, p_mask, p_pos, p_labels,
                                              _layer_drop_plan(model, spec, p_embeds, p_labels, p_mask, p_visual))
        return (None, pos_full if position_ids is not None else None,
                _out_mask(mask_full, attention_mask), pkv, embeds, true_labels if labels is not None else None)

    new_embeds, new_labels, new_mask, new_pos, visual = _repack(model, embeds, true_labels, bounds, spans, reduced,
                                                                iso)
    plan = _layer_drop_plan(model, spec, new_embeds, new_labels, new_mask, visual)
    if plan is not None:
        decoder_loop.set_plan(model.get_model(), plan)
        state.layer_drop = plan
    return (None, new_pos if position_ids is not None else None, _out_mask(new_mask, attention_mask), pkv,
            new_embeds, new_labels if labels is not None else None)


def _layer_drop_plan(model, spec, embeds, labels, mask, visual):
    """Stage B's plan for the decoder (None when the mode has no layer-wise dropping)."""
    if spec.stage_b is None:
        return None
    decoder_loop.check_supported(model)
    side = getattr(model.config, "tokenizer_padding_side", "right")
    return layer_drop.build_plan(spec.stage_b, embeds, labels, mask, visual, side)


def _out_mask(mask, caller_mask):
    if caller_mask is None:
        return mask
    return mask.to(dtype=caller_mask.dtype)


def _true_labels(tags_out, labels):
    """Map position tags back to the caller's labels (IGNORE for image and padding positions), without a sync."""
    if labels is None:
        return torch.full_like(tags_out, IGNORE_INDEX)
    gathered = labels.gather(1, tags_out.clamp(min=0))
    return torch.where(tags_out >= 0, gathered, torch.full_like(gathered, IGNORE_INDEX))


def _valid_bounds(mask_host):
    """Per sample, [first, last + 1) of its real tokens (they are contiguous under either padding side)."""
    out = []
    for row in mask_host:
        idx = torch.nonzero(row).flatten()
        out.append((int(idx[0]), int(idx[-1]) + 1) if idx.numel() else (0, 0))
    return out


def _image_spans(is_image):
    """Per sample, the [start, end) runs of image positions (a host tensor)."""
    spans = []
    for row in is_image:
        idx = torch.nonzero(row).flatten()
        if idx.numel() == 0:
            spans.append([])
            continue
        breaks = torch.nonzero(idx[1:] != idx[:-1] + 1).flatten()
        starts = [int(idx[0])] + [int(idx[b + 1]) for b in breaks]
        ends = [int(idx[b]) + 1 for b in breaks] + [int(idx[-1]) + 1]
        spans.append(list(zip(starts, ends)))
    return spans


def _reduce(reducer, spec, batch):
    """The reduced tokens of every span: {(b, j): Tensor[k, D]}.

    Spans of equal length go to the plug-in in one batched call (all 576 for LLaVA-1.5), with the signals it
    declared. A selection's indices are gathered here (the gather keeps the features' graph); a merge returns
    the tokens itself."""
    groups = defaultdict(list)
    for b, row in enumerate(batch.spans):
        for j, (s, e) in enumerate(row):
            groups[e - s].append((b, j))
    out = {}
    for n, members in groups.items():
        feats = torch.stack([batch.embeds[b, batch.spans[b][j][0]:batch.spans[b][j][1]] for b, j in members])
        signals = signals_lib.gather(batch, members, reducer.signals)
        options = dict(spec.options)
        k = reducer.budget(n, spec.pruning_ratio, **options) if reducer.budget else budget(n, spec.pruning_ratio)
        if reducer.kind == "merge":
            tokens = reducer.fn(feats, k, **signals, **options)
            _check_shape(reducer, tokens, (len(members), k, feats.shape[-1]), "tokens [B, k, D]")
            for row, key in enumerate(members):
                out[key] = tokens[row].to(batch.embeds.dtype)
            continue
        with torch.no_grad():
            idx = reducer.fn(feats.detach(), k, **signals, **options)
        _check_shape(reducer, idx, (len(members), k), "indices [B, k]")
        for row, (b, j) in enumerate(members):
            out[(b, j)] = batch.embeds[b, idx[row].to(batch.embeds.device) + batch.spans[b][j][0]]
    return out


def _check_shape(reducer, value, shape, what):
    """A plug-in's output shape, checked on every call (metadata only: no device sync)."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"plug-in {reducer.name!r} (kind {reducer.kind}) must return {what} = {shape}, got {got}")
    if reducer.kind == "select" and value.dtype != torch.long:
        raise ValueError(f"plug-in {reducer.name!r} must return torch.long indices, got {value.dtype}")


def _repack(model, embeds, true_labels, bounds, spans, reduced, iso):
    """Rebuild each sample as text + [isolator; reduced image tokens] + text, then pad as the fork does."""
    pieces, piece_labels, piece_visual = [], [], []
    for b, row in enumerate(spans):
        start, end = bounds[b]
        seq, lab, vis = [], [], []
        cursor = start
        for j, (s, e) in enumerate(row):
            seq.append(embeds[b, cursor:s])
            lab.append(true_labels[b, cursor:s])
            vis.append(torch.zeros(s - cursor, dtype=torch.bool))
            tokens = reduced[(b, j)]
            if iso is not None:
                seq.append(iso)
                lab.append(true_labels.new_full((iso.shape[0],), IGNORE_INDEX))
                vis.append(torch.zeros(iso.shape[0], dtype=torch.bool))
            seq.append(tokens)
            lab.append(true_labels.new_full((tokens.shape[0],), IGNORE_INDEX))
            vis.append(torch.ones(tokens.shape[0], dtype=torch.bool))
            cursor = e
        seq.append(embeds[b, cursor:end])
        lab.append(true_labels[b, cursor:end])
        vis.append(torch.zeros(end - cursor, dtype=torch.bool))
        pieces.append(torch.cat(seq))
        piece_labels.append(torch.cat(lab))
        piece_visual.append(torch.cat(vis))
    # A fork's config may not declare the field (upstream sets it only in train()): read it with a default.
    side = getattr(model.config, "tokenizer_padding_side", "right")
    return _pad(pieces, piece_labels, piece_visual, side)


def _pad(embeds, labels, visual, side):
    batch, max_len, hidden = len(embeds), max(x.shape[0] for x in embeds), embeds[0].shape[1]
    device = embeds[0].device
    out = embeds[0].new_zeros((batch, max_len, hidden))
    out_labels = labels[0].new_full((batch, max_len), IGNORE_INDEX)
    mask = torch.zeros((batch, max_len), dtype=torch.bool, device=device)
    pos = torch.zeros((batch, max_len), dtype=torch.long, device=device)
    is_visual = torch.zeros((batch, max_len), dtype=torch.bool)
    for i, (x, lab) in enumerate(zip(embeds, labels)):
        n = x.shape[0]
        sl = slice(max_len - n, max_len) if side == "left" else slice(0, n)
        out[i, sl] = x
        out_labels[i, sl] = lab
        mask[i, sl] = True
        pos[i, sl] = torch.arange(n, device=device)
        is_visual[i, sl] = visual[i]
    return out, out_labels, mask, pos, is_visual.to(device)
