"""LlavaConfig / LlavaMistralConfig declare the multimodal fields (llava.model.config.LlavaConfigMixin).

The declared fields must not change what is saved: the key sets of config.json below were produced by the code
from before the fields were declared (git HEAD 5c73446), building the configs with the builders in this file."""
import json
import types

import pytest
import torch


# ---- builders (also run against the code before the change to produce the reference key sets) ----

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
PINPOINTS = "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]"


def tiny_config(kind="llama", **kwargs):
    from llava.model import LlavaConfig, LlavaMistralConfig

    return (LlavaMistralConfig if kind == "mistral" else LlavaConfig)(**TINY, **kwargs)


def tiny_model(kind="llama"):
    from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM

    torch.manual_seed(0)
    cls = LlavaMistralForCausalLM if kind == "mistral" else LlavaLlamaForCausalLM
    return cls(tiny_config(kind)).eval()


def model_args(vision_path, **overrides):
    """ModelArguments as scripts/v1_5 pass them (only the fields the vision setup reads)."""
    args = dict(vision_tower=vision_path, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu",
                tune_mm_mlp_adapter=False, mm_use_im_start_end=False, mm_use_im_patch_token=False)
    args.update(overrides)
    return types.SimpleNamespace(**args)


def vision_only(kind, vision_path):
    """The tower and projector only (LlavaMetaModel.initialize_vision_modules), as tests/helpers.make_tiny_llava."""
    model = tiny_model(kind)
    model.get_model().initialize_vision_modules(model_args(vision_path))
    return model


def trained(kind, vision_path, tokenizer, *, pretrain, anyres=False):
    """A model set up as llava.train.train.train() does before training (setup_vision)."""
    from llava.train.train import setup_vision

    model = tiny_model(kind)
    margs = model_args(vision_path, tune_mm_mlp_adapter=pretrain,
                       mm_patch_merge_type="spatial_unpad" if anyres else "flat",
                       mm_use_im_start_end=anyres, mm_use_im_patch_token=anyres)
    data_args = types.SimpleNamespace(image_aspect_ratio="anyres" if anyres else ("square" if pretrain else "pad"),
                                      image_grid_pinpoints=PINPOINTS if anyres else None, mm_use_im_start_end=False)
    training_args = types.SimpleNamespace(fsdp="", device="cpu", fp16=False, bf16=False, bits=16,
                                          tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False,
                                          mm_projector_lr=2e-5 if anyres else None)
    setup_vision(model, margs, data_args, training_args, tokenizer)
    return model


def build_cases(vision_path, tokenizer_path):
    """name -> config, for every way this codebase makes a LLaVA config that gets saved."""
    from transformers import AutoTokenizer

    def tokenizer():  # fresh per case: setup_vision may add tokens
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        tok.pad_token = tok.unk_token
        return tok

    return {
        "llama_bare": tiny_config("llama"),
        "llama_vision": vision_only("llama", vision_path).config,
        "llama_pretrain": trained("llama", vision_path, tokenizer(), pretrain=True).config,
        "llama_finetune": trained("llama", vision_path, tokenizer(), pretrain=False).config,
        "llama_anyres": trained("llama", vision_path, tokenizer(), pretrain=False, anyres=True).config,
        "mistral_bare": tiny_config("mistral"),
        "mistral_vision": vision_only("mistral", vision_path).config,
        "mistral_finetune": trained("mistral", vision_path, tokenizer(), pretrain=False).config,
    }


def saved_json(config, folder):
    config.save_pretrained(str(folder))
    with open(folder / "config.json") as f:
        return json.load(f)


# ---- reference: config.json key sets saved by the code before the fields were declared ----

LLAMA_KEYS = {'attention_bias', 'attention_dropout', 'bos_token_id', 'eos_token_id', 'head_dim', 'hidden_act',
              'hidden_size', 'initializer_range', 'intermediate_size', 'max_position_embeddings', 'mlp_bias',
              'model_type', 'num_attention_heads', 'num_hidden_layers', 'num_key_value_heads', 'pad_token_id',
              'pretraining_tp', 'rms_norm_eps', 'rope_parameters', 'tie_word_embeddings', 'transformers_version',
              'use_cache', 'vocab_size'}
MISTRAL_KEYS = {'attention_dropout', 'bos_token_id', 'eos_token_id', 'head_dim', 'hidden_act', 'hidden_size',
                'initializer_range', 'intermediate_size', 'max_position_embeddings', 'model_type',
                'num_attention_heads', 'num_hidden_layers', 'num_key_value_heads', 'pad_token_id', 'rms_norm_eps',
                'rope_parameters', 'sliding_window', 'tie_word_embeddings', 'transformers_version', 'use_cache',
                'vocab_size'}
# written by initialize_vision_modules
VISION_KEYS = {'mm_hidden_size', 'mm_patch_merge_type', 'mm_projector_type', 'mm_vision_select_feature',
               'mm_vision_select_layer', 'mm_vision_tower', 'use_mm_proj'}
# written by setup_vision
TRAIN_KEYS = {'freeze_mm_mlp_adapter', 'image_aspect_ratio', 'image_grid_pinpoints', 'mm_projector_lr',
              'mm_use_im_patch_token', 'mm_use_im_start_end', 'tokenizer_model_max_length', 'tokenizer_padding_side',
              'tune_mm_mlp_adapter'}
REFERENCE_KEYS = {
    "llama_bare": LLAMA_KEYS,
    "llama_vision": LLAMA_KEYS | VISION_KEYS,
    "llama_pretrain": LLAMA_KEYS | VISION_KEYS | TRAIN_KEYS,
    "llama_finetune": LLAMA_KEYS | VISION_KEYS | TRAIN_KEYS,
    "llama_anyres": LLAMA_KEYS | VISION_KEYS | TRAIN_KEYS,
    "mistral_bare": MISTRAL_KEYS,
    "mistral_vision": MISTRAL_KEYS | VISION_KEYS,
    "mistral_finetune": MISTRAL_KEYS | VISION_KEYS | TRAIN_KEYS,
}
# The multimodal values the code before the change saved for "llama_anyres" (mm_vision_tower is a tmp path).
REFERENCE_ANYRES_VALUES = {
    'mm_hidden_size': 64, 'mm_patch_merge_type': 'spatial_unpad', 'mm_projector_type': 'mlp2x_gelu',
    'mm_vision_select_feature': 'patch', 'mm_vision_select_layer': -2, 'use_mm_proj': True,
    'freeze_mm_mlp_adapter': False, 'image_aspect_ratio': 'anyres', 'image_grid_pinpoints': PINPOINTS,
    'mm_projector_lr': 2e-05, 'mm_use_im_patch_token': True, 'mm_use_im_start_end': True,
    'tokenizer_model_max_length': 2048, 'tokenizer_padding_side': 'right', 'tune_mm_mlp_adapter': False}

# upstream LLaVA's names, and the defaults an unset field reads as
UPSTREAM_FIELDS = {
    "mm_vision_tower": None, "mm_hidden_size": None, "mm_projector_type": "linear", "mm_vision_select_layer": -1,
    "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat", "use_mm_proj": False,
    "image_aspect_ratio": None, "image_grid_pinpoints": None, "tokenizer_padding_side": "right",
    "tokenizer_model_max_length": None, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
    "mm_use_im_start_end": False, "mm_use_im_patch_token": True, "mm_projector_lr": None,
}


@pytest.fixture(scope="module")
def cases(vision_path, tiny_tokenizer_path):
    return build_cases(vision_path, tiny_tokenizer_path)


@pytest.mark.parametrize("case", sorted(REFERENCE_KEYS))
def test_saved_keys_as_before(cases, case, tmp_path):
    assert set(saved_json(cases[case], tmp_path)) == REFERENCE_KEYS[case]


def test_saved_values_as_before(cases, tmp_path):
    saved = saved_json(cases["llama_anyres"], tmp_path)
    assert {k: saved[k] for k in REFERENCE_ANYRES_VALUES} == REFERENCE_ANYRES_VALUES


def test_declared_fields_are_the_saved_ones():
    from llava.model.config import MM_CONFIG_DEFAULTS, MM_CONFIG_FIELDS

    assert set(MM_CONFIG_FIELDS) == VISION_KEYS | TRAIN_KEYS
    assert MM_CONFIG_DEFAULTS == UPSTREAM_FIELDS


def test_llama_and_mistral_share_the_fields():
    from llava.model import LlavaConfig, LlavaMistralConfig
    from llava.model.config import MM_CONFIG_DEFAULTS, LlavaConfigMixin

    assert issubclass(LlavaConfig, LlavaConfigMixin) and issubclass(LlavaMistralConfig, LlavaConfigMixin)
    for cls in (LlavaConfig, LlavaMistralConfig):
        assert {name: getattr(cls, name) for name in MM_CONFIG_DEFAULTS} == MM_CONFIG_DEFAULTS
        # declared once, in the mixin, not redeclared by either class
        assert not set(MM_CONFIG_DEFAULTS) & set(vars(cls))


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_config_json_without_mm_fields_reads_the_defaults(kind, tmp_path):
    from transformers import AutoConfig, LlamaConfig, MistralConfig

    from llava.model import LlavaConfig, LlavaMistralConfig
    from llava.model.config import MM_CONFIG_DEFAULTS

    cls = LlavaMistralConfig if kind == "mistral" else LlavaConfig
    saved = saved_json(tiny_config(kind), tmp_path / "llava")
    assert not set(saved) & set(MM_CONFIG_DEFAULTS)
    # a plain LM's config.json too (what --model_name_or_path points at before LLaVA training)
    (MistralConfig if kind == "mistral" else LlamaConfig)(**TINY).save_pretrained(str(tmp_path / "lm"))
    for cfg in (cls.from_pretrained(str(tmp_path / "llava")), AutoConfig.from_pretrained(str(tmp_path / "llava")),
                cls.from_pretrained(str(tmp_path / "lm"))):
        assert isinstance(cfg, cls)
        assert {name: getattr(cfg, name) for name in MM_CONFIG_DEFAULTS} == MM_CONFIG_DEFAULTS
        assert not set(cfg.to_diff_dict()) & set(MM_CONFIG_DEFAULTS)  # the defaults are not written back


def test_unset_config_gives_a_text_only_model_that_saves_no_mm_keys(tmp_path):
    from llava.model.config import MM_CONFIG_FIELDS

    model = tiny_model("llama")
    assert model.get_vision_tower() is None and not hasattr(model.get_model(), "mm_projector")
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert not set(json.load(f)) & set(MM_CONFIG_FIELDS)


@pytest.mark.parametrize("case", sorted(REFERENCE_KEYS))
def test_round_trip_keeps_keys_and_values(cases, case, tmp_path):
    from transformers import AutoConfig

    from llava.model.config import MM_CONFIG_FIELDS

    config = cases[case]
    first = saved_json(config, tmp_path / "first")
    loaded = AutoConfig.from_pretrained(str(tmp_path / "first"))
    assert type(loaded) is type(config)
    assert {name: getattr(loaded, name) for name in MM_CONFIG_FIELDS} == \
        {name: getattr(config, name) for name in MM_CONFIG_FIELDS}
    assert saved_json(loaded, tmp_path / "second") == first


UPSTREAM_V16_MISTRAL = {
    # liuhaotian/llava-v1.6-mistral-7b's config.json, LM sizes shrunk and the tower a local tiny CLIP
    "architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral", "_name_or_path": "mistral-7b",
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 32,
    "image_aspect_ratio": "anyres", "image_crop_resolution": 224,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_split_resolution": 224, "initializer_range": 0.02, "intermediate_size": 64,
    "max_position_embeddings": 4096, "mm_hidden_size": 64, "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None,
    "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2, "mm_vision_tower": None, "mm_vision_tower_lr": 2e-06, "num_attention_heads": 4,
    "num_hidden_layers": 1, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right", "torch_dtype": "bfloat16", "transformers_version": "4.36.2",
    "tune_mm_mlp_adapter": False, "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": True,
    "use_cache": True, "use_mm_proj": True, "vocab_size": 64,
}


def test_upstream_checkpoint_config_loads_and_builds(vision_path, tmp_path):
    from transformers import AutoConfig

    from llava.model import LlavaMistralConfig, LlavaMistralForCausalLM

    raw = dict(UPSTREAM_V16_MISTRAL, mm_vision_tower=str(vision_path))
    (tmp_path / "ckpt").mkdir()
    with open(tmp_path / "ckpt" / "config.json", "w") as f:
        json.dump(raw, f)
    cfg = AutoConfig.from_pretrained(str(tmp_path / "ckpt"))
    assert isinstance(cfg, LlavaMistralConfig)
    for name in ("mm_vision_tower", "mm_hidden_size", "mm_patch_merge_type", "image_aspect_ratio",
                 "image_grid_pinpoints", "mm_use_im_patch_token", "tokenizer_model_max_length", "use_mm_proj"):
        assert getattr(cfg, name) == raw[name]
    assert cfg.unfreeze_mm_vision_tower is True  # keys upstream wrote and nothing declares are kept too
    model = LlavaMistralForCausalLM(cfg)
    assert model.get_vision_tower() is not None and model.get_model().image_newline.shape == (32,)
    saved = saved_json(cfg, tmp_path / "resaved")
    assert set(raw) - {"_name_or_path", "torch_dtype", "rope_theta"} <= set(saved)
    assert {k: saved[k] for k in raw if k.startswith(("mm_", "image_", "tokenizer_", "tune_", "use_mm"))} == \
        {k: raw[k] for k in raw if k.startswith(("mm_", "image_", "tokenizer_", "tune_", "use_mm"))}


def test_model_with_vision_only_reads_declared_defaults(cases):
    """initialize_vision_modules without setup_vision: the rest reads as the getattr defaults did."""
    config = cases["llama_vision"]
    assert (config.tokenizer_padding_side, config.tokenizer_model_max_length, config.image_aspect_ratio,
            config.tune_mm_mlp_adapter, config.mm_use_im_start_end) == ("right", None, None, False, False)
