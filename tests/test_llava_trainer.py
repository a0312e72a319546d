"""Offline tests for llava.train.llava_trainer and the projector extraction script."""
import dataclasses
import os
from typing import Optional

import pytest
import torch
import transformers
from torch import nn

from llava.train import llava_trainer as lt
from llava.train.llava_trainer import (
    LengthGroupedSampler,
    LLaVATrainer,
    find_all_linear_names,
    get_length_grouped_indices,
    get_mm_adapter_state_maybe_zero_3,
    get_modality_length_grouped_indices,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
    split_to_even_chunks,
)


@dataclasses.dataclass
class ToyTrainingArguments(transformers.TrainingArguments):
    """Stand-in for llava.train.train.TrainingArguments (only the fields the trainer reads)."""
    mm_projector_lr: Optional[float] = None
    group_by_modality_length: bool = False
    tune_mm_mlp_adapter: bool = False


def make_args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True,
                    remove_unused_columns=False, save_strategy="no")
    defaults.update(kwargs)
    return ToyTrainingArguments(**defaults)


def tiny_llama_config(**kwargs):
    defaults = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    defaults.update(kwargs)
    return transformers.LlamaConfig(**defaults)


class ToyMultimodal(nn.Module):
    """A plain nn.Module with LLaVA-like parameter names and a config that can save_pretrained."""

    def __init__(self):
        super().__init__()
        self.config = tiny_llama_config()
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.mm_projector = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x=None, labels=None):
        return {"loss": self.mm_projector(self.norm(self.body(x))).pow(2).mean()}


# --------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------

def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_split_to_even_chunks_balanced_and_round_robin():
    lengths = [10, 9, 8, 7, 2, 2, 1, 1]
    chunks = split_to_even_chunks(list(range(8)), lengths, 2)
    assert [len(c) for c in chunks] == [4, 4]
    assert sorted(i for c in chunks for i in c) == list(range(8))
    totals = [sum(lengths[i] for i in c) for c in chunks]
    assert max(totals) - min(totals) <= max(lengths)
    # not divisible: round robin
    assert split_to_even_chunks([5, 6, 7, 8, 9], lengths=[1] * 10, num_chunks=2) == [[5, 7, 9], [6, 8]]


@pytest.mark.parametrize("n,batch_size,world_size", [(100, 4, 2), (37, 3, 4), (16, 8, 2), (5, 4, 2)])
def test_length_grouped_indices_structure(n, batch_size, world_size):
    lengths = [int(x) for x in torch.randint(1, 500, (n,), generator=gen(123))]
    result = get_length_grouped_indices(lengths, batch_size, world_size, generator=gen(7))
    assert sorted(result) == list(range(n))  # each index exactly once

    megabatch = batch_size * world_size
    perm = torch.randperm(n, generator=gen(7)).tolist()
    for start in range(0, n, megabatch):
        block = result[start:start + megabatch]
        # the megabatch holds the same samples as the shuffled slice it came from
        assert set(block) == set(perm[start:start + megabatch])
        if len(block) == megabatch:
            chunks = [block[r * batch_size:(r + 1) * batch_size] for r in range(world_size)]
            assert all(len(c) == batch_size for c in chunks)  # world_size chunks of equal count
            totals = [sum(lengths[i] for i in c) for c in chunks]
            assert max(totals) - min(totals) <= max(lengths[i] for i in block)


def test_length_grouped_indices_deterministic_with_generator():
    lengths = list(range(1, 101))
    a = get_length_grouped_indices(lengths, 4, 2, generator=gen(1))
    b = get_length_grouped_indices(lengths, 4, 2, generator=gen(1))
    c = get_length_grouped_indices(lengths, 4, 2, generator=gen(2))
    assert a == b
    assert a != c


def _modality_lengths(n_mm, n_lang, seed=0):
    g = gen(seed)
    mm = [int(x) for x in torch.randint(50, 400, (n_mm,), generator=g)]
    lang = [-int(x) for x in torch.randint(5, 300, (n_lang,), generator=g)]
    lengths = mm + lang
    order = torch.randperm(len(lengths), generator=g).tolist()
    return [lengths[i] for i in order]


def _global_batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_modality_grouping_single_modality_except_last():
    batch_size, world_size = 4, 2
    megabatch = batch_size * world_size
    lengths = _modality_lengths(35, 20)  # leftovers 3 + 4 fit in one final megabatch
    result = get_modality_length_grouped_indices(lengths, batch_size, world_size, generator=gen(0))
    assert sorted(result) == list(range(len(lengths)))
    batches = _global_batches(result, megabatch)
    for batch in batches[:-1]:
        assert len({lengths[i] > 0 for i in batch}) == 1, batch
    assert len({lengths[i] > 0 for i in batches[-1]}) == 2


@pytest.mark.parametrize("n_mm,n_lang", [(37, 21), (40, 16), (33, 9), (8, 3), (3, 2)])
def test_modality_grouping_general_sizes(n_mm, n_lang):
    batch_size, world_size = 4, 2
    megabatch = batch_size * world_size
    lengths = _modality_lengths(n_mm, n_lang, seed=n_mm)
    result = get_modality_length_grouped_indices(lengths, batch_size, world_size, generator=gen(3))
    assert sorted(result) == list(range(len(lengths)))
    batches = _global_batches(result, megabatch)
    mixed = [k for k, b in enumerate(batches) if len({lengths[i] > 0 for i in b}) > 1]
    # only the trailing leftovers (fewer than one megabatch per modality) may mix, and at most one batch does
    assert len(mixed) <= 1
    if mixed:
        assert mixed[0] >= len(batches) - 2
    # sets dividing exactly leave no leftover: then nothing is mixed
    if n_mm % megabatch == 0 and n_lang % megabatch == 0:
        assert not mixed


def test_modality_grouping_deterministic_and_fallbacks():
    lengths = _modality_lengths(30, 30)
    a = get_modality_length_grouped_indices(lengths, 2, 2, generator=gen(5))
    assert a == get_modality_length_grouped_indices(lengths, 2, 2, generator=gen(5))
    assert a != get_modality_length_grouped_indices(lengths, 2, 2, generator=gen(6))

    only_lang = [-x for x in range(1, 21)]
    assert get_modality_length_grouped_indices(only_lang, 2, 2, generator=gen(5)) == \
        get_length_grouped_indices([-x for x in only_lang], 2, 2, generator=gen(5))
    with pytest.raises(ValueError):
        get_modality_length_grouped_indices([3, 0, -2], 1, 1)


def test_length_grouped_sampler():
    lengths = _modality_lengths(20, 12)
    sampler = LengthGroupedSampler(4, world_size=2, lengths=lengths, generator=gen(9), group_by_modality=True)
    assert len(sampler) == 32
    assert sorted(iter(sampler)) == list(range(32))
    plain = LengthGroupedSampler(4, 2, lengths=[abs(x) for x in lengths], generator=gen(9))
    assert sorted(plain) == list(range(32))
    with pytest.raises(ValueError):
        LengthGroupedSampler(4, 2)


class ModalityDataset(torch.utils.data.Dataset):
    def __init__(self, n=16, seq=8, vocab=64):
        g = gen(0)
        self.ids = torch.randint(3, vocab, (n, seq), generator=g)
        self.modality_lengths = [(seq if i % 3 else -seq) for i in range(n)]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone(), "attention_mask": torch.ones_like(self.ids[i])}


def test_get_train_sampler(tmp_path):
    ds = ModalityDataset()
    args = make_args(tmp_path, group_by_modality_length=True, per_device_train_batch_size=2,
                     gradient_accumulation_steps=3)
    trainer = LLaVATrainer(model=ToyMultimodal(), args=args, train_dataset=ds)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.group_by_modality and sampler.batch_size == 2 and sampler.world_size == 3
    assert sampler.lengths is ds.modality_lengths
    assert isinstance(trainer._get_train_sampler(ds), LengthGroupedSampler)

    plain = LLaVATrainer(model=ToyMultimodal(), args=make_args(tmp_path), train_dataset=ds)
    assert not isinstance(plain._get_train_sampler(ds), LengthGroupedSampler)


# --------------------------------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------------------------------

def _names_of(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_create_optimizer_projector_groups(tmp_path):
    model = ToyMultimodal()
    args = make_args(tmp_path, learning_rate=1e-4, weight_decay=0.1, mm_projector_lr=2e-5)
    trainer = LLaVATrainer(model=model, args=args)
    opt = trainer.create_optimizer()
    assert opt is trainer.optimizer
    groups = {(frozenset(_names_of(model, g["params"]))): g for g in opt.param_groups}
    expected = {
        frozenset({"body.weight"}): (0.1, 1e-4),
        frozenset({"body.bias", "norm.weight", "norm.bias"}): (0.0, 1e-4),
        frozenset({"mm_projector.0.weight", "mm_projector.2.weight"}): (0.1, 2e-5),
        frozenset({"mm_projector.0.bias", "mm_projector.2.bias"}): (0.0, 2e-5),
    }
    assert len(opt.param_groups) == 4
    assert set(groups) == set(expected)
    for names, (wd, lr) in expected.items():
        assert groups[names]["weight_decay"] == wd
        assert groups[names]["lr"] == pytest.approx(lr)
    # frozen params are left out
    all_names = set().union(*groups)
    assert not any(n.startswith("frozen") for n in all_names)
    # a second call keeps the optimizer
    assert trainer.create_optimizer() is opt


def test_create_optimizer_extensible_and_default(tmp_path):
    class IsolatorTrainer(LLaVATrainer):
        projector_param_keys = LLaVATrainer.projector_param_keys + ("body",)

    model = ToyMultimodal()
    opt = IsolatorTrainer(model=model, args=make_args(tmp_path, mm_projector_lr=3e-5)).create_optimizer()
    projector_named = set()
    for g in opt.param_groups:
        if g["lr"] == pytest.approx(3e-5):
            projector_named |= _names_of(model, g["params"])
    assert {"body.weight", "body.bias", "mm_projector.0.weight"} <= projector_named

    # without mm_projector_lr the parent's two groups are used
    model = ToyMultimodal()
    opt = LLaVATrainer(model=model, args=make_args(tmp_path, learning_rate=1e-3)).create_optimizer()
    assert len(opt.param_groups) == 2
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups)


# --------------------------------------------------------------------------------------------------
# state-dict helpers
# --------------------------------------------------------------------------------------------------

class ToyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(4, 4), "down_proj": nn.Linear(4, 4)})])
        self.vision_tower = nn.ModuleDict({"fc1": nn.Linear(4, 4)})
        self.mm_projector = nn.Sequential(nn.Linear(4, 4))
        self.vision_resampler = nn.ModuleDict({"attn_proj": nn.Linear(4, 4)})
        self.mode_isolator = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 8)


def test_find_all_linear_names(monkeypatch):
    assert find_all_linear_names(ToyLM()) == ["down_proj", "mode_isolator", "q_proj"]
    monkeypatch.setattr(lt, "MULTIMODAL_KEYWORDS", lt.MULTIMODAL_KEYWORDS + ("mode_isolator",))
    assert find_all_linear_names(ToyLM()) == ["down_proj", "q_proj"]


def test_state_helpers():
    model = ToyLM()
    state = get_mm_adapter_state_maybe_zero_3(model.named_parameters(), ["mm_projector", "vision_resampler"])
    assert set(state) == {"mm_projector.0.weight", "mm_projector.0.bias",
                          "vision_resampler.attn_proj.weight", "vision_resampler.attn_proj.bias"}
    w = model.mm_projector[0].weight
    copy = maybe_zero_3(w)
    assert copy.device.type == "cpu" and not copy.requires_grad and copy.data_ptr() != w.data_ptr()

    named = [
        ("a.q_proj.lora_A.default.weight", torch.zeros(1, requires_grad=True)),
        ("a.q_proj.lora_B.default.weight", torch.zeros(1, requires_grad=True)),
        ("a.q_proj.base_layer.bias", torch.zeros(1)),
        ("a.k_proj.bias", torch.zeros(1)),
        ("a.mm_projector.weight", torch.zeros(1, requires_grad=True)),
        ("a.k_proj.weight", torch.zeros(1)),
    ]
    assert set(get_peft_state_maybe_zero_3(named, "none")) == {named[0][0], named[1][0]}
    assert set(get_peft_state_maybe_zero_3(named, "all")) == {named[0][0], named[1][0], named[2][0], named[3][0]}
    assert set(get_peft_state_maybe_zero_3(named, "lora_only")) == {named[0][0], named[1][0], named[2][0]}
    with pytest.raises(NotImplementedError):
        get_peft_state_maybe_zero_3(named, "bogus")
    assert set(get_peft_state_non_lora_maybe_zero_3(named)) == {"a.mm_projector.weight"}
    assert set(get_peft_state_non_lora_maybe_zero_3(named, require_grad_only=False)) == \
        {"a.q_proj.base_layer.bias", "a.k_proj.bias", "a.mm_projector.weight", "a.k_proj.weight"}


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------

def test_save_checkpoint_adapter_only(tmp_path):
    model = ToyMultimodal()
    args = make_args(tmp_path, tune_mm_mlp_adapter=True)
    trainer = LLaVATrainer(model=model, args=args)
    trainer.state.global_step = 7
    trainer._save_checkpoint(trainer.model, trial=None)

    ckpt = tmp_path / "checkpoint-7"
    assert sorted(os.listdir(ckpt)) == ["config.json", "mm_projector.bin"]
    weights = torch.load(ckpt / "mm_projector.bin", weights_only=True)
    assert set(weights) == {"mm_projector.0.weight", "mm_projector.0.bias",
                            "mm_projector.2.weight", "mm_projector.2.bias"}
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in weights.values())
    torch.testing.assert_close(weights["mm_projector.2.weight"], model.mm_projector[2].weight.detach())
    assert transformers.LlamaConfig.from_pretrained(ckpt).hidden_size == 16

    # _save is a no-op for adapter-only runs
    trainer._save(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()

    # with start/end tokens the embeddings are saved too
    trainer.args.use_im_start_end = True
    assert "embed_tokens" in trainer.get_mm_adapter_keys()


class ToyLlava(transformers.LlamaForCausalLM):
    """Tiny Llama with an `mm_projector` in the embedding path, named like LlavaLlamaForCausalLM's."""

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden_size
        self.model.mm_projector = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        embeds = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        embeds = embeds + self.model.mm_projector(embeds)
        return super().forward(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)


def test_train_adapter_only_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = ToyLlava(tiny_llama_config())
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    before = model.model.mm_projector[0].weight.detach().clone()
    args = make_args(tmp_path, tune_mm_mlp_adapter=True, group_by_modality_length=True, max_steps=3,
                     per_device_train_batch_size=2, learning_rate=1e-2, save_strategy="steps", save_steps=1,
                     save_total_limit=1, logging_steps=1)
    trainer = LLaVATrainer(model=model, args=args, train_dataset=ModalityDataset())
    trainer.train()
    assert not torch.equal(before, model.model.mm_projector[0].weight.detach())
    checkpoints = sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3"]  # save_total_limit respected
    assert sorted(os.listdir(tmp_path / "checkpoint-3")) == ["config.json", "mm_projector.bin"]
    weights = torch.load(tmp_path / "checkpoint-3" / "mm_projector.bin", weights_only=True)
    assert sorted(weights) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                               "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    torch.testing.assert_close(weights["model.mm_projector.0.weight"], model.model.mm_projector[0].weight.detach())


def test_train_lora_checkpoint_has_non_lora_trainables(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = ToyLlava(tiny_llama_config())
    targets = find_all_linear_names(base)
    assert "lm_head" not in targets and "q_proj" in targets
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.base_model.model.model.mm_projector.requires_grad_(True)
    args = make_args(tmp_path, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                     mm_projector_lr=5e-3, save_strategy="steps", save_steps=1, logging_steps=1)
    trainer = LLaVATrainer(model=model, args=args, train_dataset=ModalityDataset())
    trainer.train()

    ckpt = tmp_path / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "non_lora_trainables.bin",
            "trainer_state.json", "optimizer.pt"} <= files
    non_lora = torch.load(ckpt / "non_lora_trainables.bin", weights_only=True)
    assert sorted(non_lora) == ["base_model.model.model.mm_projector.0.bias",
                                "base_model.model.model.mm_projector.0.weight",
                                "base_model.model.model.mm_projector.2.bias",
                                "base_model.model.model.mm_projector.2.weight"]
    projector = model.base_model.model.model.mm_projector
    torch.testing.assert_close(non_lora["base_model.model.model.mm_projector.0.weight"], projector[0].weight.detach())

    # resuming restores the projector from non_lora_trainables.bin
    saved = projector[0].weight.detach().clone()
    with torch.no_grad():
        projector[0].weight.zero_()
    trainer._load_from_checkpoint(str(ckpt))
    torch.testing.assert_close(projector[0].weight.detach(), saved)


# --------------------------------------------------------------------------------------------------
# scripts
# --------------------------------------------------------------------------------------------------

def test_extract_mm_projector_sharded_and_single(tmp_path):
    import json

    from safetensors.torch import save_file

    from scripts.extract_mm_projector import main

    proj = {"model.mm_projector.0.weight": torch.randn(3, 3), "model.mm_projector.2.bias": torch.randn(3)}
    other = {"model.embed_tokens.weight": torch.randn(5, 3), "lm_head.weight": torch.randn(5, 3)}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file(other, str(sharded / "model-00001-of-00002.safetensors"))
    save_file(proj, str(sharded / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in other},
                                            **{k: "model-00002-of-00002.safetensors" for k in proj}}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out" / "mm_projector.bin"
    main(["--model-path", str(sharded), "--output", str(out)])
    got = torch.load(out, weights_only=True)
    assert set(got) == set(proj)
    for k in proj:
        torch.testing.assert_close(got[k], proj[k])

    single = tmp_path / "single"
    single.mkdir()
    torch.save({**proj, **other}, single / "pytorch_model.bin")
    out2 = tmp_path / "p2.bin"
    main(["--model-path", str(single), "--output", str(out2)])
    assert set(torch.load(out2, weights_only=True)) == set(proj)

    with pytest.raises(SystemExit):
        main(["--model-path", str(tmp_path / "out"), "--output", str(tmp_path / "none.bin")])


def test_merge_lora_weights_cli_parses():
    from scripts.merge_lora_weights import build_parser

    ns = build_parser().parse_args(["--model-path", "a", "--model-base", "b", "--save-model-path", "c"])
    assert (ns.model_path, ns.model_base, ns.save_model_path) == ("a", "b", "c")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model-path", "a"])
