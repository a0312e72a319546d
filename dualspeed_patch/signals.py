"""Extra inputs some pruners need, taken from the fork's own merge without changing it.

- cdpruner: relevance of each visual token to the instruction, from the LLM input embeddings of the text
  that follows the image up to the answer (at inference: to the end of the prompt).
- fastervlm: the [CLS] attention of the CLIP layer whose output LLaVA uses, computed from that layer's input
  captured by a forward pre-hook (O(N) per image; the tower keeps its SDPA/flash kernels)."""
from __future__ import annotations

import contextlib

import torch

from .pruners.cdpruner import compute_relevance
from .pruners.fastervlm import clip_cls_attention

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200


def instruction_relevance(embeds_row, span, labels_row, mask_row):
    """(N,) relevance of the span's tokens to the instruction text around it."""
    start, end = span
    valid = mask_row.bool()
    text = (labels_row == IGNORE_INDEX) & valid
    text[start:end] = False
    after = torch.zeros_like(text)
    supervised = torch.nonzero((labels_row != IGNORE_INDEX) & valid).flatten()
    stop = int(supervised[supervised >= end][0]) if (supervised >= end).any() else text.numel()
    after[end:stop] = True
    chosen = text & after
    if not chosen.any():  # image after the question: use the text before it
        chosen = text.clone()
        chosen[start:] = False
    features = embeds_row[start:end].detach().unsqueeze(0)
    if not chosen.any():
        return torch.ones(end - start, device=embeds_row.device)
    return compute_relevance(features, embeds_row[chosen].detach().unsqueeze(0))[0]


class _ClsCapture:
    def __init__(self):
        self.per_call = []

    def per_span(self, spans, input_ids, mask_in):
        """Map the captured per-image scores to image spans, replaying the fork's image cursor."""
        if not self.per_call:
            raise RuntimeError("fastervlm: no [CLS] attention was captured from the vision tower")
        scores = torch.cat(self.per_call)
        counts = [int(((ids == IMAGE_TOKEN_INDEX) & m.bool()).sum()) for ids, m in zip(input_ids, mask_in)]
        text_only = sum(1 for c in counts if c == 0)
        dummies = scores.shape[0] == sum(counts) + text_only
        out, cursor = {}, 0
        for b, row in enumerate(spans):
            if counts[b] == 0:
                cursor += int(dummies)
                continue
            if len(row) != counts[b]:
                raise NotImplementedError("fastervlm needs one span per image (adjacent images merged into one span)")
            for j, (s, e) in enumerate(row):
                if e - s != scores.shape[1]:
                    raise NotImplementedError(
                        f"fastervlm scores CLIP patches; this image span has {e - s} tokens, not {scores.shape[1]} "
                        "(anyres / spatial merges or truncated spans are not supported: use divprune or cdpruner)")
                out[(b, j)] = scores[cursor]
                cursor += 1
        return out


def _selected_layer(tower):
    clip = getattr(tower, "vision_tower", None)
    # transformers 4.x nests the encoder under .vision_model; 5.x flattened it.
    layers = getattr(clip, "vision_model", clip).encoder.layers
    select = tower.select_layer
    index = len(layers) + select if select < 0 else select - 1  # the layer whose output is hidden_states[select]
    if not 0 <= index < len(layers):
        raise ValueError(f"fastervlm: select layer {select} does not name an encoder layer")
    return layers[index]


@contextlib.contextmanager
def span_cls_attention(model, enabled: bool):
    if not enabled:
        yield None
        return
    capture = _ClsCapture()
    layer = _selected_layer(model.get_vision_tower())

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            capture.per_call.append(clip_cls_attention(module, hidden).float())

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield capture
    finally:
        handle.remove()
