"""The multimodal fields of the LLaVA configs, shared by LlavaConfig (Llama) and LlavaMistralConfig.

Names and meanings are upstream LLaVA's: `LlavaMetaModel.initialize_vision_modules` records the tower and
projector, `llava.train.train.setup_vision` (upstream: `train()`) the data and tokenizer settings. The
defaults are what a config that never had them set behaves as (upstream's `getattr(config, ..., default)`).

The fields are class attributes of a mixin, not dataclass fields of the transformers config: a value is
serialized only once it is set (by `__init__` kwargs such as the keys of a config.json, or by assignment), so
config.json keeps exactly the keys it had before the fields were declared. In particular a config without a
vision tower does not write `"mm_vision_tower": null`, which upstream LLaVA (`hasattr(config,
"mm_vision_tower")`) would take for a tower to build."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union


class LlavaConfigMixin:
    """Multimodal fields of a LLaVA language-model config. Put it before the LM config class in the bases."""

    # Set by LlavaMetaModel.initialize_vision_modules (the vision tower and the projector).
    mm_vision_tower: Optional[str] = None  # CLIP folder or hub name; None: a text-only model (no tower built)
    mm_hidden_size: Optional[int] = None  # width of the tower's features (the projector's input)
    mm_projector_type: str = "linear"  # linear | mlp{N}x_gelu | identity
    mm_vision_select_layer: int = -1  # hidden layer of the tower whose features are used (ModelArguments default)
    mm_vision_select_feature: str = "patch"  # patch | cls_patch
    mm_patch_merge_type: str = "flat"  # flat | spatial | spatial_unpad (LLaVA-NeXT)
    use_mm_proj: bool = False  # upstream writes True with the projector; nothing reads it
    # Set by setup_vision (upstream train()) from DataArguments, the tokenizer and TrainingArguments.
    image_aspect_ratio: Optional[str] = None  # None/square (resize + crop) | pad | anyres
    image_grid_pinpoints: Optional[Union[str, List[Any]]] = None  # anyres resolutions: a list or its string
    tokenizer_padding_side: str = "right"  # side the merged image+text embeddings are padded on
    tokenizer_model_max_length: Optional[int] = None  # merged sequences are cut to this; None: no cut
    tune_mm_mlp_adapter: bool = False  # projector-only pretraining
    freeze_mm_mlp_adapter: bool = False
    mm_use_im_start_end: bool = False  # <im_start><image><im_end> around each image
    mm_use_im_patch_token: bool = True  # the tokenizer has the <im_patch> token
    mm_projector_lr: Optional[float] = None  # projector learning rate (None: the main one)


#: name -> default of every multimodal field, in declaration order.
MM_CONFIG_DEFAULTS: Dict[str, Any] = {
    name: getattr(LlavaConfigMixin, name) for name in LlavaConfigMixin.__annotations__
}
MM_CONFIG_FIELDS = tuple(MM_CONFIG_DEFAULTS)


__all__ = ["LlavaConfigMixin", "MM_CONFIG_DEFAULTS", "MM_CONFIG_FIELDS"]
