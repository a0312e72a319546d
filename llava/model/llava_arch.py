"""The multimodal mixins: LlavaMetaModel (owns tower + projector) and LlavaMetaForCausalLM
(encodes images and splices their features into the text embeddings)."""
from __future__ import annotations

import ast
import logging
from abc import ABC, abstractmethod

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector
from .weights import load_state_dict_maybe_zero_3, load_weights_file

logger = logging.getLogger(__name__)


class LlavaMetaModel:
    def __init__(self, config):
        super().__init__(config)
        # getattr: the model may also be given a plain LlamaConfig/MistralConfig (text-only, no tower).
        if getattr(config, "mm_vision_tower", None) is not None:
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in config.mm_patch_merge_type:
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size))

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        if isinstance(vision_tower, list):  # FSDP keeps it out of the module tree
            vision_tower = vision_tower[0]
        return vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None):
        vision_tower = model_args.vision_tower
        mm_vision_select_layer = model_args.mm_vision_select_layer
        mm_vision_select_feature = model_args.mm_vision_select_feature
        pretrain_mm_mlp_adapter = model_args.pretrain_mm_mlp_adapter
        mm_patch_merge_type = model_args.mm_patch_merge_type

        self.config.mm_vision_tower = vision_tower

        if self.get_vision_tower() is None:
            tower = build_vision_tower(model_args)
            self.vision_tower = [tower] if fsdp is not None and len(fsdp) > 0 else tower
        else:
            tower = self.get_vision_tower()
            if not tower.is_loaded:
                tower.load_model()

        self.config.use_mm_proj = True
        self.config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")  # a namespace may lack it
        self.config.mm_hidden_size = tower.hidden_size
        self.config.mm_vision_select_layer = mm_vision_select_layer
        self.config.mm_vision_select_feature = mm_vision_select_feature
        self.config.mm_patch_merge_type = mm_patch_merge_type

        # New modules follow the LLM's dtype/device, so a bf16 run without DeepSpeed does not mix dtypes.
        ref = self.get_input_embeddings().weight
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config).to(device=ref.device, dtype=ref.dtype)
            if "unpad" in mm_patch_merge_type:
                std = 1.0 / torch.sqrt(torch.tensor(self.config.hidden_size, dtype=torch.float32))
                self.image_newline = nn.Parameter(
                    (torch.randn(self.config.hidden_size, dtype=torch.float32) * std).to(device=ref.device, dtype=ref.dtype))
        else:
            # It may have been frozen by LoRA wrapping.
            for p in self.mm_projector.parameters():
                p.requires_grad = True

        if pretrain_mm_mlp_adapter is not None:
            weights = load_weights_file(pretrain_mm_mlp_adapter)
            projector_weights = {k.split("mm_projector.", 1)[1]: v for k, v in weights.items() if "mm_projector." in k}
            if not projector_weights:
                raise ValueError(f"{pretrain_mm_mlp_adapter} has no 'mm_projector.*' weights (keys: {sorted(weights)[:5]}...)")
            load_state_dict_maybe_zero_3(self.mm_projector, projector_weights, strict=True,
                                         source=pretrain_mm_mlp_adapter)


def unpad_image(tensor, original_size):
    """Cut away the padding that resize-and-pad added around an image of `original_size` (w, h).

    `tensor` is [C, H, W] on the merged patch grid."""
    original_width, original_height = original_size
    current_height, current_width = tensor.shape[1:]
    if original_width / original_height > current_width / current_height:
        # Wider than the grid: padding is above and below.
        new_height = int(original_height * current_width / original_width)
        pad = (current_height - new_height) // 2
        return tensor[:, pad:current_height - pad, :]
    new_width = int(original_width * current_height / original_height)
    pad = (current_width - new_width) // 2
    return tensor[:, :, pad:current_width - pad]


def _parameter_dtype(module, default):
    """The dtype of `module`'s weights (the tower and the projector may differ, e.g. a bf16 tower beside a
    float32 projector); `default` for a parameter-free module such as the identity projector."""
    param = next(module.parameters(), None)
    return default if param is None else param.dtype


def _grid_pinpoints(config):
    pinpoints = config.image_grid_pinpoints
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    return pinpoints


class LlavaMetaForCausalLM(ABC):
    @abstractmethod
    def get_model(self):
        ...

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images):
        """[N, 3, H, W] pixels -> [N, tokens, D] projected features, in the projector's dtype.

        Pixels arrive in whatever dtype the caller chose (lmms-eval's `llava` wrapper always sends float16, our
        CPU models are float32, training collators send float32 to bf16 towers). They are cast to the tower's
        dtype and device *before* the tower, not after: the tower returns features in its input's dtype, so
        float16 pixels on a float32 tower would otherwise have their float32 features rounded to float16 and
        back. Casting down (float32 pixels into a bf16/fp16 tower) is what upstream does too: the tower computes
        in that precision anyway."""
        model = self.get_model()
        tower = model.get_vision_tower()
        image_features = tower(images.to(device=tower.device, dtype=tower.dtype))
        return model.mm_projector(image_features.to(_parameter_dtype(model.mm_projector, image_features.dtype)))

    # ---- image features, one [n_tokens, D] tensor per image after the configured merge ----
    def _image_features_per_image(self, images, image_sizes):
        if not (isinstance(images, list) or images.ndim == 5):
            return list(self.encode_images(images))
        if isinstance(images, list):
            images = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
        crops_per_image = [x.shape[0] for x in images]
        features = self.encode_images(torch.cat(list(images), dim=0))
        features = list(torch.split(features, crops_per_image, dim=0))

        merge_type = self.config.mm_patch_merge_type
        if merge_type == "flat":
            return [f.flatten(0, 1) for f in features]
        if not merge_type.startswith("spatial"):
            raise ValueError(f"Unexpected mm_patch_merge_type: {merge_type}")
        return [self._merge_spatial(f, image_sizes[i] if image_sizes is not None else None, merge_type)
                for i, f in enumerate(features)]

    def _merge_spatial(self, feature, image_size, merge_type):
        """LLaVA-NeXT merge: base image tokens, then the crop grid (optionally unpadded, with a newline
        token at the end of every row)."""
        unpad = "unpad" in merge_type
        model = self.get_model()
        if feature.shape[0] == 1:
            feature = feature[0]
            if unpad:
                feature = torch.cat((feature, model.image_newline[None].to(feature.dtype)), dim=0)
            return feature

        from llava.mm_utils import get_anyres_image_grid_shape

        tower = self.get_vision_tower()
        side = tower.num_patches_per_side
        base, crops = feature[0], feature[1:]
        if self.config.image_aspect_ratio != "anyres":
            raise NotImplementedError("Multi-crop images need image_aspect_ratio='anyres'.")
        if image_size is None:
            raise ValueError("anyres merge needs image_sizes (the original (width, height) of each image).")
        grid_w, grid_h = get_anyres_image_grid_shape(image_size, _grid_pinpoints(self.config), tower.config.image_size)
        crops = crops.view(grid_h, grid_w, side, side, -1)
        if unpad:
            # [gh, gw, s, s, D] -> [D, gh*s, gw*s]
            crops = crops.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
            crops = unpad_image(crops, image_size)
            newline = model.image_newline[:, None, None].expand(*crops.shape[:-1], 1).to(crops.dtype)
            crops = torch.cat((crops, newline), dim=-1)
            crops = crops.flatten(1, 2).transpose(0, 1)
        else:
            crops = crops.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
        return torch.cat((base, crops), dim=0)

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None, image_counts=None):
        """Splice image features into the text embeddings at every <image> token.

        `image_counts` (optional, [B]): how many entries of `images` belong to each sample, a text-only sample's
        dummy counted as 1 (the collator emits it). With it every sample is checked on its own; without it only
        the batch totals can be checked (kept last in the signature so upstream-style callers still work)."""
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if self.config.tune_mm_mlp_adapter and self.config.mm_use_im_start_end:
            raise NotImplementedError("tune_mm_mlp_adapter together with mm_use_im_start_end is not supported.")

        _labels, _position_ids, _attention_mask = labels, position_ids, attention_mask
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            attention_mask = attention_mask.bool()
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        ids_per_sample = [ids[mask] for ids, mask in zip(input_ids, attention_mask)]
        labels_per_sample = [lab[mask] for lab, mask in zip(labels, attention_mask)]

        n_image_tokens = [int((ids == IMAGE_TOKEN_INDEX).sum()) for ids in ids_per_sample]
        if image_counts is not None:
            images_per_sample = check_image_counts(n_image_tokens, image_counts, len(images))
        else:
            images_per_sample = infer_images_per_sample(n_image_tokens, len(images))
        # Checked before the vision pass: a misaligned batch fails without spending the tower on it.
        image_features = self._image_features_per_image(images, image_sizes)

        embed_tokens = self.get_model().embed_tokens
        new_embeds, new_labels = [], []
        cursor = 0
        for ids, labs, n_tokens, n_images in zip(ids_per_sample, labels_per_sample, n_image_tokens,
                                                  images_per_sample):
            if n_tokens == 0:
                embeds = embed_tokens(ids)
                if n_images:
                    # A zero-length slice keeps the projector in the graph (DDP/ZeRO need every param used).
                    embeds = torch.cat([embeds, image_features[cursor][0:0].to(embeds.dtype)], dim=0)
                    cursor += 1
                new_embeds.append(embeds)
                new_labels.append(labs)
                continue
            cuts = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [ids.shape[0]]
            text_ids = [ids[cuts[i] + 1:cuts[i + 1]] for i in range(len(cuts) - 1)]
            text_labels = [labs[cuts[i] + 1:cuts[i + 1]] for i in range(len(cuts) - 1)]
            text_embeds = torch.split(embed_tokens(torch.cat(text_ids)), [len(t) for t in text_ids], dim=0)
            pieces, piece_labels = [], []
            for i in range(len(text_ids)):
                pieces.append(text_embeds[i])
                piece_labels.append(text_labels[i])
                if i < len(text_ids) - 1:
                    feat = image_features[cursor]
                    cursor += 1
                    pieces.append(feat.to(text_embeds[i].dtype))
                    piece_labels.append(torch.full((feat.shape[0],), IGNORE_INDEX, device=labs.device, dtype=labs.dtype))
            new_embeds.append(torch.cat(pieces))
            new_labels.append(torch.cat(piece_labels))

        max_len_cfg = self.config.tokenizer_model_max_length
        if max_len_cfg is not None:
            new_embeds = [x[:max_len_cfg] for x in new_embeds]
            new_labels = [x[:max_len_cfg] for x in new_labels]

        embeds, labels, attention_mask, position_ids = pad_multimodal_batch(
            new_embeds, new_labels, self.config.tokenizer_padding_side, attention_mask.device)

        return (None,
                None if _position_ids is None else position_ids,
                None if _attention_mask is None else attention_mask.to(dtype=_attention_mask.dtype),
                past_key_values,
                embeds,
                None if _labels is None else labels)

    def initialize_vision_tokenizer(self, model_args, tokenizer):
        from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

        if model_args.mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))

        if not model_args.mm_use_im_start_end:
            return
        num_new = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        self.resize_token_embeddings(len(tokenizer))
        if num_new > 0:
            # New rows start at the mean of the existing ones.
            for emb in (self.get_input_embeddings().weight.data, self.get_output_embeddings().weight.data):
                emb[-num_new:] = emb[:-num_new].mean(dim=0, keepdim=True)
        if model_args.tune_mm_mlp_adapter:
            for p in self.get_input_embeddings().parameters():
                p.requires_grad = True
            for p in self.get_output_embeddings().parameters():
                p.requires_grad = False
        if model_args.pretrain_mm_mlp_adapter:
            weights = load_weights_file(model_args.pretrain_mm_mlp_adapter)
            start_end = weights.get("model.embed_tokens.weight")
            if start_end is None:
                return
            emb = self.get_input_embeddings().weight.data
            if start_end.shape == emb.shape:
                emb[-num_new:] = start_end[-num_new:]
            elif start_end.shape[0] == num_new:
                emb[-num_new:] = start_end
            else:
                raise ValueError(f"Unexpected embed_tokens shape in the adapter: {tuple(start_end.shape)}; "
                                 f"model has {tuple(emb.shape)} with {num_new} new tokens.")
        elif model_args.mm_use_im_patch_token and model_args.tune_mm_mlp_adapter:
            for p in self.get_input_embeddings().parameters():
                p.requires_grad = False
            for p in self.get_output_embeddings().parameters():
                p.requires_grad = False


def _as_int_list(counts):
    # One host copy of the [B] counts; the merge already reads its ids on the host sample by sample.
    return [int(c) for c in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]


def check_image_counts(n_image_tokens, image_counts, n_images):
    """Per-sample check of the caller's `image_counts` against the <image> tokens; returns the counts as ints.

    An image sample needs exactly one image per <image> token; a text-only sample has none or one dummy. Batch
    totals cannot catch a sample short of images when another sample's spare image makes up the total."""
    counts = _as_int_list(image_counts)
    if len(counts) != len(n_image_tokens):
        raise ValueError(f"image_counts has {len(counts)} entries for a batch of {len(n_image_tokens)} samples.")
    for row, (tokens, count) in enumerate(zip(n_image_tokens, counts)):
        if tokens > 0 and count != tokens:
            raise ValueError(
                f"Batch row {row} has {tokens} <image> token(s) but {count} image(s) (image_counts[{row}]); every "
                "<image> token needs its own image. Check that sample's data: its text and its image list disagree.")
        if tokens == 0 and count not in (0, 1):
            raise ValueError(
                f"Batch row {row} is text-only (0 <image> tokens) but has {count} images (image_counts[{row}]); "
                "a text-only sample carries no image or one dummy image.")
    if sum(counts) != n_images:
        raise ValueError(f"image_counts sums to {sum(counts)} images but {n_images} images were passed.")
    return counts


def infer_images_per_sample(n_image_tokens, n_images):
    """Without image_counts: how many images each sample owns, from the batch totals alone.

    Upstream's collator gives every text-only sample a dummy image; callers that pass images only for the
    <image> tokens (eval, generate) are accepted too. Anything else is a misaligned batch."""
    total = sum(n_image_tokens)
    text_rows = [row for row, n in enumerate(n_image_tokens) if n == 0]
    if n_images == total + len(text_rows):
        return [n if n else 1 for n in n_image_tokens]
    if n_images != total:
        raise ValueError(
            f"Got {n_images} images for a batch with {total} <image> tokens and {len(text_rows)} text-only samples "
            f"(expected {total} or {total + len(text_rows)}).")
    multi = [row for row, n in enumerate(n_image_tokens) if n > 1]
    if text_rows and multi and n_images == len(n_image_tokens):
        # One image per sample (dummies included) and one image per <image> token give the same totals here:
        # read the second way, a sample short of images would silently get the next sample's (dummy) image.
        row = multi[0]
        raise ValueError(
            f"Ambiguous image batch: {n_images} images for {len(n_image_tokens)} samples with {total} <image> "
            f"tokens; row {row} has {n_image_tokens[row]} <image> tokens and rows {text_rows} are text-only. "
            f"If each sample brought one image (text-only ones a dummy), row {row} is short of images and would be "
            "filled with another sample's image. Pass image_counts (images per sample, as "
            "DataCollatorForSupervisedDataset emits it) so each sample can be checked.")
    return list(n_image_tokens)

def pad_multimodal_batch(embeds, labels, padding_side, device):
    """Pad per-sample embeddings/labels into a batch; returns (embeds, labels, bool mask, position ids).

    Position ids count 0..len-1 over each sample's real tokens, whichever side the padding is on."""
    batch = len(embeds)
    max_len = max(x.shape[0] for x in embeds)
    hidden = embeds[0].shape[1]
    out = embeds[0].new_zeros((batch, max_len, hidden))
    out_labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=labels[0].dtype, device=labels[0].device)
    mask = torch.zeros((batch, max_len), dtype=torch.bool, device=device)
    position_ids = torch.zeros((batch, max_len), dtype=torch.long, device=device)
    for i, (x, lab) in enumerate(zip(embeds, labels)):
        n = x.shape[0]
        span = slice(max_len - n, max_len) if padding_side == "left" else slice(0, n)
        out[i, span] = x
        out_labels[i, span] = lab
        mask[i, span] = True
        position_ids[i, span] = torch.arange(n, dtype=torch.long, device=device)
    return out, out_labels, mask, position_ids
