"""The signals a reduction plug-in can declare, and how the merge wrapper computes each one.

A signal is computed only when the configured plug-in declares it (`pruners.register(..., signals=...)`), for
one group of equal-length image spans at a time, as a batch over those spans:

- `seed` (int): per micro-batch seed for stochastic plug-ins;
- `relevance` (B, N): relevance of each visual token to the instruction, from the LLM input embeddings of the
  text that follows the image up to the answer (at inference: to the end of the prompt);
- `text_embeds` (B, T, D) and `text_mask` (B, T): those instruction embeddings themselves, padded;
- `cls_attention` (B, N): the [CLS] attention of the CLIP layer whose output LLaVA uses, computed from that
  layer's input captured by a forward pre-hook during the fork's own merge (O(N) per image; the tower keeps its
  SDPA/flash kernels);
- `vision_layer` (`pruners.duet.VisionLayer`): that layer's [CLS] attention (B, N), head-mean patch keys
  (B, N, dh) and output hidden states (B, 1 + N, Dv), from a pre-hook and a forward hook on it;
- `projector`: the fork's `mm_projector`, for plug-ins that merge before it.

`register_signal` adds a provider of one's own.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200

Member = Tuple[int, int]  # (sample b, span j)


@dataclass
class SpanBatch:
    """What the merge wrapper knows after the fork's merge; providers read from it."""
    model: Any
    spec: Any                       # context.ModeSpec
    embeds: torch.Tensor            # [B, L, D] merged input embeddings
    spans: List[List[Tuple[int, int]]]
    labels: torch.Tensor            # [B, L] true labels after the merge (IGNORE for image / prompt)
    mask: torch.Tensor              # [B, L] bool attention mask after the merge
    input_ids: torch.Tensor         # the caller's input ids
    input_mask: torch.Tensor        # the caller's attention mask
    captured: Dict[str, Any] = field(default_factory=dict)  # what each capture() yielded, by signal name
    cache: Dict[str, Any] = field(default_factory=dict)     # per-merge work a provider shares across groups
    image_counts: Any = None        # the caller's per-sample image counts ([B], dummies as 1), when it gave them
    n_images: Optional[int] = None  # how many images the caller passed (entries of `images`, not crops)


@dataclass(frozen=True)
class Signal:
    name: str
    gather: Callable[[SpanBatch, Sequence[Member]], Any]
    # Runs around the fork's own merge (e.g. a hook on the vision tower); yields what gather() reads.
    capture: Optional[Callable[[Any], ContextManager]] = None


_PROVIDERS: Dict[str, Signal] = {}


def register_signal(name: str, gather, capture=None, override: bool = False) -> None:
    if name in _PROVIDERS and not override:
        raise ValueError(f"a signal named {name!r} exists; pass override=True to replace it")
    _PROVIDERS[name] = Signal(name, gather, capture)


def available() -> List[str]:
    return sorted(_PROVIDERS)


def get(name: str) -> Signal:
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}; available: {available()}") from None


@contextlib.contextmanager
def capturing(model, names: Sequence[str]):
    """Enter the capture of every declared signal that has one; yields {name: captured}."""
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(get(n).capture(model)) for n in names if get(n).capture is not None}


def gather(batch: SpanBatch, members: Sequence[Member], names: Sequence[str]) -> Dict[str, Any]:
    return {n: get(n).gather(batch, members) for n in names}


# ---------------------------------------------------------------------------------------------- instruction

def _instruction_positions(span, labels_row, mask_row):
    """Positions of the instruction text for one image span: the text after the image up to the first
    supervised token; when there is none (image after the question), the text before the image."""
    start, end = span
    valid = mask_row.bool()
    text = (labels_row == IGNORE_INDEX) & valid
    text[start:end] = False
    after = torch.zeros_like(text)
    supervised = torch.nonzero((labels_row != IGNORE_INDEX) & valid).flatten()
    stop = int(supervised[supervised >= end][0]) if (supervised >= end).any() else text.numel()
    after[end:stop] = True
    chosen = text & after
    if not chosen.any():
        chosen = text.clone()
        chosen[start:] = False
    return chosen


def instruction_relevance(embeds_row, span, labels_row, mask_row):
    """(N,) relevance of the span's tokens to the instruction text around it."""
    from .pruners.cdpruner import compute_relevance

    start, end = span
    chosen = _instruction_positions(span, labels_row, mask_row)
    features = embeds_row[start:end].detach().unsqueeze(0)
    if not chosen.any():
        return torch.ones(end - start, device=embeds_row.device)
    return compute_relevance(features, embeds_row[chosen].detach().unsqueeze(0))[0]


def _relevance(batch: SpanBatch, members):
    return torch.stack([instruction_relevance(batch.embeds[b], batch.spans[b][j], batch.labels[b], batch.mask[b])
                        for b, j in members])


def _text(batch: SpanBatch, members):
    key = ("text", tuple(members))
    if key not in batch.cache:
        rows = [batch.embeds[b][_instruction_positions(batch.spans[b][j], batch.labels[b], batch.mask[b])].detach()
                for b, j in members]
        longest = max(1, max(r.shape[0] for r in rows))
        out = batch.embeds.new_zeros((len(rows), longest, batch.embeds.shape[-1]))
        mask = torch.zeros((len(rows), longest), dtype=torch.bool, device=batch.embeds.device)
        for i, r in enumerate(rows):
            out[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = True
        batch.cache[key] = (out, mask)
    return batch.cache[key]


# ---------------------------------------------------------------------------------------------- CLS attention

class _LayerCapture:
    """What a hook on the selected vision layer captured, one entry per tower call: a dict of tensors whose first
    dimension is the tower's rows (images, or crops) and whose "cls_attention" entry is (rows, N patches)."""

    def __init__(self, signal="cls_attention", plugin="fastervlm"):
        self.per_call = []
        self.signal, self.plugin = signal, plugin
        self._rows = None

    def rows(self):
        """{name: tensor over all rows}, in the order the tower saw the images (concatenated once: the tower
        has run by the time a plug-in's signals are gathered)."""
        if not self.per_call:
            raise RuntimeError(f"{self.signal}: no [CLS] attention was captured from the vision tower")
        if self._rows is None:
            self._rows = {name: torch.cat([call[name] for call in self.per_call]) for name in self.per_call[0]}
        return self._rows

    def per_span(self, spans, input_ids, mask_in, image_counts=None, n_images=None):
        """{(b, j): row}: the tower row of each image span, replaying the fork's image cursor.

        The cursor walks tower rows; it only walks images when each image was one row. `image_counts` (the
        caller's images per sample) replaces guessing from the totals whether text-only samples brought a dummy;
        `n_images` (entries of `images`) detects multi-crop batches."""
        scores = self.rows()["cls_attention"]
        counts = [int(((ids == IMAGE_TOKEN_INDEX) & m.bool()).sum()) for ids, m in zip(input_ids, mask_in)]
        per_sample = self._images_per_sample(scores.shape[0], counts, image_counts, n_images)
        out, cursor = {}, 0
        for b, row in enumerate(spans):
            if counts[b] == 0:
                cursor += per_sample[b]
                continue
            if len(row) != counts[b]:
                raise NotImplementedError(f"{self.signal} needs one span per image (adjacent images merged into "
                                          "one span)")
            for j, (s, e) in enumerate(row):
                if e - s != scores.shape[1]:
                    raise NotImplementedError(
                        f"{self.signal} scores CLIP patches; this image span has {e - s} tokens, not "
                        f"{scores.shape[1]} (anyres / spatial merges or truncated spans are not supported: use "
                        "divprune or cdpruner)")
                out[(b, j)] = cursor
                cursor += 1
        return out

    def _images_per_sample(self, rows, counts, image_counts, n_images):
        """How many tower rows each sample owns, refusing batches where a row is not one whole image."""
        if n_images is not None and rows != n_images:
            # anyres: each image is 1 + n crops, so the cursor would pair a span with a crop, or with another
            # image's [CLS] attention. Refused before any scoring.
            raise NotImplementedError(
                f"{self.signal} ({self.plugin}) needs one vision-tower row per image; the tower saw {rows} rows "
                f"for {n_images} images (anyres / multi-crop images), so a span cannot be paired with its own "
                "image's [CLS] attention. Use divprune or cdpruner, or a single-crop image_aspect_ratio (pad).")
        if image_counts is not None:
            return [int(c) for c in (image_counts.tolist() if isinstance(image_counts, torch.Tensor)
                                     else image_counts)]
        text_only = sum(1 for c in counts if c == 0)
        if rows == sum(counts) + text_only:
            return [c if c else 1 for c in counts]
        if rows == sum(counts):
            return counts
        # Without n_images this is the only trace of multi-crop images (or a batch the merge should have refused).
        raise NotImplementedError(
            f"{self.signal} ({self.plugin}): the vision tower saw {rows} rows for {sum(counts)} <image> tokens "
            f"and {text_only} text-only samples; multi-crop (anyres) images are not supported. Use divprune or "
            "cdpruner.")


def _selected_layer(tower):
    clip = getattr(tower, "vision_tower", None)
    # transformers 4.x nests the encoder under .vision_model; 5.x flattened it.
    layers = getattr(clip, "vision_model", clip).encoder.layers
    select = tower.select_layer
    index = len(layers) + select if select < 0 else select - 1  # the layer whose output is hidden_states[select]
    if not 0 <= index < len(layers):
        raise ValueError(f"cls_attention: select layer {select} does not name an encoder layer")
    return layers[index]


@contextlib.contextmanager
def span_cls_attention(model):
    from .pruners.fastervlm import clip_cls_attention

    capture = _LayerCapture()
    layer = _selected_layer(model.get_vision_tower())

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            capture.per_call.append({"cls_attention": clip_cls_attention(module, hidden).float()})

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield capture
    finally:
        handle.remove()


@contextlib.contextmanager
def span_vision_layer(model):
    """The selected layer's CLS attention and head-mean patch keys (from its input, a pre-hook) and its output
    (a forward hook), per tower row."""
    from .pruners.fastervlm import clip_cls_attention_and_keys

    capture = _LayerCapture("vision_layer", "duet")
    layer = _selected_layer(model.get_vision_tower())
    pending = []

    def before(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            attention, keys = clip_cls_attention_and_keys(module, hidden)
        pending.append({"cls_attention": attention, "keys": keys[:, 1:].mean(dim=2)})

    def after(module, args, kwargs, output):
        entry = pending.pop()
        entry["hidden"] = output[0] if isinstance(output, tuple) else output
        capture.per_call.append(entry)

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True),
               layer.register_forward_hook(after, with_kwargs=True)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def _vision_layer(batch: SpanBatch, members):
    from .pruners.duet import VisionLayer

    capture = batch.captured["vision_layer"]
    if "vision_layer_by_span" not in batch.cache:
        batch.cache["vision_layer_by_span"] = capture.per_span(
            batch.spans, batch.input_ids, batch.input_mask, batch.image_counts, batch.n_images)
    rows = capture.rows()
    index = [batch.cache["vision_layer_by_span"][m] for m in members]
    return VisionLayer(rows["cls_attention"][index], rows["keys"][index], rows["hidden"][index])


def _projector(batch: SpanBatch, members):
    projector = getattr(batch.model.get_model(), "mm_projector", None)
    if projector is None:
        raise RuntimeError("projector: the model has no get_model().mm_projector to project merged tokens with")
    return projector


def _cls_attention(batch: SpanBatch, members):
    if "cls_by_span" not in batch.cache:
        batch.cache["cls_by_span"] = batch.captured["cls_attention"].per_span(
            batch.spans, batch.input_ids, batch.input_mask, batch.image_counts, batch.n_images)
    rows = batch.captured["cls_attention"].rows()["cls_attention"]
    by_span = batch.cache["cls_by_span"]
    return rows[[by_span[m] for m in members]]


register_signal("seed", lambda batch, members: batch.spec.seed)
register_signal("relevance", _relevance)
register_signal("text_embeds", lambda batch, members: _text(batch, members)[0])
register_signal("text_mask", lambda batch, members: _text(batch, members)[1])
register_signal("cls_attention", _cls_attention, capture=span_cls_attention)
register_signal("vision_layer", _vision_layer, capture=span_vision_layer)
register_signal("projector", _projector)
