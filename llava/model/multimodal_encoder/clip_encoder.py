"""CLIP vision tower: frozen CLIPVisionModel that returns one layer's patch features."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel

logger = logging.getLogger(__name__)


def load_clip_image_processor(name_or_path: str, **kwargs):
    """The PIL-backed CLIP processor: LLaVA was trained and evaluated with PIL resizing, and the
    torchvision-backed default of transformers 5 shifts pixels (and scores) slightly."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(name_or_path, **kwargs)


class CLIPVisionTower(nn.Module):
    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        # args: the LLaVA config or ModelArguments (or a namespace standing in for them), hence getattr below.
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"Unexpected mm_vision_select_feature: {self.select_feature!r} (use 'patch' or 'cls_patch')")

        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            # Only the config: weights are loaded later by load_model() (as upstream does).
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map=None):
        if self.is_loaded:
            logger.warning("%s is already loaded; `load_model` called again, skipping.", self.vision_tower_name)
            return
        self.image_processor = load_clip_image_processor(self.vision_tower_name)
        self.vision_tower = CLIPVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, image_forward_outs):
        image_features = image_forward_outs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            image_features = image_features[:, 1:]
        return image_features

    @torch.no_grad()
    def forward(self, images):
        if isinstance(images, list):
            return [self._encode(image.unsqueeze(0)).squeeze(0) for image in images]
        return self._encode(images)

    def _encode(self, images):
        outs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outs).to(images.dtype)

    @property
    def dummy_feature(self):
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self):
        return self.vision_tower.dtype

    @property
    def device(self):
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_patches_per_side(self):
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self):
        return self.num_patches_per_side ** 2
