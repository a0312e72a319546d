"""Pruner plug-ins: the common contract, hand-worked cases, reference cross-checks, registry, budget."""
import itertools
import math

import pytest
import torch

from dualspeed_patch import pruners
from dualspeed_patch.pruners import cdpruner, common, divprune, fastervlm, random_select, uniform
from dualspeed_patch.pruners.common import MissingSignalError, check_indices

BUILTINS = ["cdpruner", "divprune", "fastervlm", "random", "uniform"]
B, N, D, K = 4, 40, 24, 7


def _features(b=B, n=N, d=D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g).to(dtype)


def _signals(name, x, seed=1):
    """Signals a caller would pass; every pruner also gets an unknown one, which must be ignored."""
    b, n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    sig = {"unused_signal": object(), "another_unknown": 3}
    if name == "fastervlm":
        sig["cls_attention"] = torch.softmax(torch.randn(b, n, generator=g), dim=-1)
    elif name == "cdpruner":
        sig["text_embeds"] = torch.randn(b, 5, d, generator=g)
    elif name == "random":
        sig["generator"] = torch.Generator().manual_seed(seed)
    return sig


def _slice(sig, i):
    return {key: (val[i:i + 1] if isinstance(val, torch.Tensor) else val) for key, val in sig.items()}


def _assert_contract(idx, b, n, k, device=torch.device("cpu")):
    check_indices(idx, b, n, k)
    assert idx.device == device
    assert not idx.requires_grad
    for row in idx.tolist():
        assert len(set(row)) == k


def test_builtins_registered():
    assert set(BUILTINS) <= set(pruners.available())


# ----------------------------------------------------------------------------------------------
# the contract, for every built-in pruner


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("k", [1, K, N])
def test_contract(name, k):
    x = _features()
    threads = torch.get_num_threads()
    idx = pruners.get_pruner(name)(x, k, **_signals(name, x))
    _assert_contract(idx, B, N, k)
    assert torch.get_num_threads() == threads          # the CPU single-thread section is undone


@pytest.mark.parametrize("name", BUILTINS)
def test_no_grad_needed(name):
    x = _features().requires_grad_(True)
    idx = pruners.get_pruner(name)(x, K, **_signals(name, x))
    _assert_contract(idx, B, N, K)
    assert idx.grad_fn is None
    # the caller's gather keeps the gradient
    kept = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
    kept.sum().backward()
    assert x.grad is not None and int((x.grad.abs().sum(-1) > 0).sum()) == B * K


@pytest.mark.parametrize("name", BUILTINS)
def test_batched_equals_per_image_loop(name):
    x = _features(b=6)
    fn = pruners.get_pruner(name)
    batched = fn(x, K, **_signals(name, x))
    loop_sig = _signals(name, x)           # fresh generator with the same seed for "random"
    looped = torch.cat([fn(x[i:i + 1], K, **_slice(loop_sig, i)) for i in range(x.shape[0])])
    assert torch.equal(batched, looped)


@pytest.mark.parametrize("name", BUILTINS)
def test_bf16_input(name):
    x = _features(dtype=torch.bfloat16)
    fn = pruners.get_pruner(name)
    idx = fn(x, K, **_signals(name, x))
    _assert_contract(idx, B, N, K)
    # computations are in fp32, so a bf16 input selects exactly what its fp32 upcast selects
    assert torch.equal(idx, fn(x.float(), K, **_signals(name, x)))


@pytest.mark.parametrize("name", BUILTINS)
def test_invalid_inputs(name):
    fn = pruners.get_pruner(name)
    x = _features()
    sig = _signals(name, x)
    with pytest.raises(ValueError, match="3-D"):
        fn(x[0], K, **sig)
    for bad_k in (0, N + 1, -2):
        with pytest.raises(ValueError, match="k must satisfy"):
            fn(x, bad_k, **sig)
    with pytest.raises(TypeError):
        fn(x, 2.5, **sig)
    bad = x.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(bad, K, **sig)


@pytest.mark.parametrize("name", ["divprune", "cdpruner"])
def test_cosine_methods_invariant_to_positive_token_rescale(name):
    x = _features()
    scale = torch.rand(B, N, 1, generator=torch.Generator().manual_seed(5)) * 10 + 0.1
    fn = pruners.get_pruner(name)
    sig = _signals(name, x)
    assert torch.equal(fn(x, K, **sig), fn(x * scale, K, **sig))
    assert torch.equal(fn(x, K), fn(x * scale, K))   # cdpruner unconditional too


@pytest.mark.parametrize("name", ["divprune", "cdpruner"])
def test_zero_rows_do_not_give_nan(name):
    x = _features()
    x[:, ::3] = 0.0                            # zeroed (padding-like) tokens
    idx = pruners.get_pruner(name)(x, K)
    _assert_contract(idx, B, N, K)


# ----------------------------------------------------------------------------------------------
# DivPrune


def _points(angles_deg, norms=None):
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    pts = torch.stack([a.cos(), a.sin()], dim=-1)
    if norms is not None:
        pts = pts * torch.tensor(norms, dtype=torch.float64).unsqueeze(-1)
    return pts.float().unsqueeze(0)


def test_divprune_cluster_and_outlier():
    # four clustered directions (0..15 degrees) and one outlier at 120 degrees, arbitrary norms
    x = _points([10, 0, 15, 120, 5], norms=[1.0, 3.0, 0.5, 2.0, 7.0])
    # step 0: the outlier (largest nearest-neighbour distance); step 1: the point farthest from it
    assert divprune.select(x, 1).tolist() == [[3]]
    assert divprune.select(x, 2).tolist() == [[1, 3]]
    # step 2: the cluster point farthest from both chosen ones (15 degrees)
    assert divprune.select(x, 3).tolist() == [[1, 2, 3]]


def test_divprune_ties_go_to_lowest_index():
    x = torch.eye(4).unsqueeze(0)              # all pairwise distances equal 1
    assert divprune.select(x, 2).tolist() == [[0, 1]]


def test_divprune_duplicates_never_selected_twice():
    base = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    x = base.repeat(3, 1).unsqueeze(0)         # tokens i, i+3, i+6 are identical
    idx = divprune.select(x, 5)
    _assert_contract(idx, 1, 9, 5)
    # the first three picks cover the three distinct vectors once each
    assert sorted(i % 3 for i in divprune.select(x, 3)[0].tolist()) == [0, 1, 2]
    idx = divprune.select(x, 9)
    assert idx.tolist() == [list(range(9))]


def _divprune_reference(x, k):
    """The original recompute-from-scratch formulation, float64, one image."""
    xn = x.double() / x.double().norm(dim=-1, keepdim=True)
    dist = 1 - xn @ xn.T
    n = dist.shape[0]
    nearest = torch.stack([torch.cat([dist[i, :i], dist[i, i + 1:]]).min() for i in range(n)])
    chosen = [int(nearest.argmax())]
    while len(chosen) < k:
        to_set = dist[chosen].min(dim=0).values
        to_set[chosen] = -float("inf")
        chosen.append(int(to_set.argmax()))
    return sorted(chosen)


def test_divprune_matches_reference_formulation():
    x = _features(b=3, n=30, d=12, seed=11)
    got = divprune.select(x, 9)
    for b in range(3):
        assert got[b].tolist() == _divprune_reference(x[b], 9)


# ----------------------------------------------------------------------------------------------
# CDPruner


def _cdpruner_brute_force(x, r, k):
    """Greedy log-det maximisation with explicit determinants (float64), one image."""
    xn = x.double() / x.double().norm(dim=-1, keepdim=True)
    kernel = r.double()[:, None] * (xn @ xn.T) * r.double()[None, :]
    chosen = []
    for _ in range(k):
        best, best_i = -float("inf"), None
        for i in range(x.shape[0]):
            if i in chosen:
                continue
            sub = kernel[chosen + [i]][:, chosen + [i]]
            det = float(torch.linalg.det(sub))
            if det > best + 1e-12:
                best, best_i = det, i
        chosen.append(best_i)
    return sorted(chosen)


def test_cdpruner_matches_brute_force_greedy():
    x = _features(b=2, n=20, d=10, seed=3)
    r = torch.rand(2, 20, generator=torch.Generator().manual_seed(4)) + 0.1
    got = cdpruner.select(x, 6, relevance=r)
    for b in range(2):
        assert got[b].tolist() == _cdpruner_brute_force(x[b], r[b], 6)


def test_cdpruner_first_two_steps_closed_form():
    x = _features(b=3, n=25, d=8, seed=6)
    r = torch.rand(3, 25, generator=torch.Generator().manual_seed(7)) + 0.05
    s0 = r.argmax(dim=1)
    assert cdpruner.select(x, 1, relevance=r)[:, 0].tolist() == s0.tolist()
    xn = torch.nn.functional.normalize(x, dim=-1)
    sim = torch.einsum("bnd,bd->bn", xn, xn[torch.arange(3), s0])
    gain = r.square() * (1 - sim.square())
    gain[torch.arange(3), s0] = -1
    s1 = gain.argmax(dim=1)
    expected = torch.sort(torch.stack([s0, s1], dim=1), dim=1).values
    assert torch.equal(cdpruner.select(x, 2, relevance=r), expected)


def test_cdpruner_strong_relevance_picks_those_tokens():
    x = _features(b=2, n=30, d=16, seed=8)
    r = torch.full((2, 30), 0.01)
    favoured = [[3, 11, 17, 25], [0, 1, 29, 14]]
    for b, ids in enumerate(favoured):
        r[b, ids] = 1.0
    idx = cdpruner.select(x, 4, relevance=r)
    assert idx.tolist() == [sorted(ids) for ids in favoured]


def test_cdpruner_rank_deficient_identical_tokens():
    x = torch.ones(2, 10, 6)
    # unconditional: one DPP pick, then the lowest unselected indices
    idx = cdpruner.select(x, 5)
    _assert_contract(idx, 2, 10, 5)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2
    # with relevance: the fill follows relevance
    r = torch.rand(2, 10, generator=torch.Generator().manual_seed(9))
    idx = cdpruner.select(x, 5, relevance=r)
    assert torch.equal(idx, torch.sort(r.topk(5, dim=1).indices, dim=1).values)


def test_cdpruner_rank_deficient_two_directions():
    g = torch.Generator().manual_seed(10)
    dirs = torch.randn(2, 8, generator=g)
    which = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    scale = torch.rand(12, 1, generator=g) + 0.5
    x = (dirs[which] * scale).unsqueeze(0)
    for kwargs in ({}, {"relevance": torch.rand(1, 12, generator=g) + 0.1},
                   {"text_embeds": torch.randn(3, 8, generator=g)}):
        idx = cdpruner.select(x, 5, **kwargs)
        _assert_contract(idx, 1, 12, 5)
        assert set(which[idx[0]].tolist()) == {0, 1}     # both directions are represented
    assert cdpruner.select(x, 12).tolist() == [list(range(12))]


def test_cdpruner_zero_relevance_does_not_break():
    x = _features(b=2, n=12, d=4)
    idx = cdpruner.select(x, 5, relevance=torch.zeros(2, 12))
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_compute_relevance_formula_and_sign():
    x = _features(b=2, n=15, d=8, seed=12)
    text = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(13))
    r = cdpruner.compute_relevance(x, text)
    xn, tn = (torch.nn.functional.normalize(t, dim=-1) for t in (x, text))
    s = torch.einsum("bnd,btd->bnt", xn, tn).mean(-1)
    lo, hi = s.amin(1, keepdim=True), s.amax(1, keepdim=True)
    assert torch.allclose(r, (s - lo + 1e-6) / (hi - lo), atol=1e-5)
    assert torch.equal(r.argmax(1), s.argmax(1))
    r_neg = cdpruner.compute_relevance(x, text, sign=-1)
    assert torch.equal(r_neg.argmax(1), s.argmin(1))
    assert torch.equal(r_neg.argmin(1), s.argmax(1))
    # select with text_embeds == select with the relevance computed from them
    assert torch.equal(cdpruner.select(x, 5, text_embeds=text),
                       cdpruner.select(x, 5, relevance=r))
    assert torch.equal(cdpruner.select(x, 5, text_embeds=text, relevance_sign=-1),
                       cdpruner.select(x, 5, relevance=r_neg))


def test_compute_relevance_shared_text_and_mask():
    x = _features(b=3, n=15, d=8, seed=14)
    text = torch.randn(4, 8, generator=torch.Generator().manual_seed(15))
    shared = cdpruner.compute_relevance(x, text)
    assert torch.allclose(shared, cdpruner.compute_relevance(x, text.expand(3, 4, 8)))
    padded = torch.cat([text, torch.randn(2, 8) * 100]).expand(3, 6, 8)
    mask = torch.tensor([1, 1, 1, 1, 0, 0])
    assert torch.allclose(shared, cdpruner.compute_relevance(x, padded, mask), atol=1e-6)
    with pytest.raises(ValueError):
        cdpruner.compute_relevance(x, torch.randn(4, 7))


def test_cdpruner_theta_and_bad_relevance_shape():
    x = _features()
    r = torch.rand(B, N)
    idx = cdpruner.select(x, K, relevance=r, theta=0.5)
    _assert_contract(idx, B, N, K)
    with pytest.raises(ValueError, match="theta"):
        cdpruner.select(x, K, relevance=r, theta=1.0)
    with pytest.raises(ValueError, match="relevance"):
        cdpruner.select(x, K, relevance=torch.rand(B, N + 1))
    with pytest.raises(ValueError, match=">= 0"):
        cdpruner.select(x, K, relevance=torch.rand(B, N) - 0.5)


# ----------------------------------------------------------------------------------------------
# FasterVLM


def test_fastervlm_topk_of_cls_attention():
    x = _features()
    att = torch.rand(B, N, generator=torch.Generator().manual_seed(16))
    idx = fastervlm.select(x, K, cls_attention=att)
    assert torch.equal(idx, torch.sort(att.topk(K, dim=1).indices, dim=1).values)
    # bf16 attention scores are compared in fp32; ties go to the lowest index
    tied = torch.zeros(1, 10)
    tied[0, [2, 7]] = 1.0
    assert fastervlm.select(torch.zeros(1, 10, 3), 4, cls_attention=tied).tolist() == [[0, 1, 2, 7]]


def test_fastervlm_requires_cls_attention():
    x = _features()
    for sig in ({}, {"cls_attention": None, "relevance": torch.rand(B, N)}):
        with pytest.raises(MissingSignalError, match="cls_attention") as err:
            fastervlm.select(x, K, **sig)
        assert "clip_cls_attention" in str(err.value)
    with pytest.raises(ValueError, match="cls_attention"):
        fastervlm.select(x, K, cls_attention=torch.rand(B, N - 1))


def test_clip_cls_attention_matches_eager_attentions():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, attn_implementation="eager")
    model = CLIPVisionModel(config).eval()
    assert model.config._attn_implementation == "eager"
    pixels = torch.randn(3, 3, 336, 336)
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]

    layer_idx = 0                                # layer -2 of a 2-layer tower
    layer = getattr(model, "vision_model", model).encoder.layers[layer_idx]   # transformers 5 flattened it
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    finally:
        handle.remove()
    expected = out.attentions[layer_idx][:, :, 0, 1:].mean(dim=1)
    got = fastervlm.clip_cls_attention(layer, captured["h"])
    assert got.shape == (3, 576) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # the same from output_hidden_states (hidden_states[L] is the input of layers[L])
    assert torch.allclose(fastervlm.clip_cls_attention(layer, out.hidden_states[layer_idx]), expected,
                          atol=1e-5, rtol=0)
    # and in a bf16 tower the helper still returns fp32 scores close to the fp32 ones
    got_bf16 = fastervlm.clip_cls_attention(layer.to(torch.bfloat16), captured["h"].bfloat16())
    assert got_bf16.dtype == torch.float32
    assert torch.allclose(got_bf16, expected, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# random and uniform


def test_random_reproducible_by_seed():
    x = _features(b=8, n=100)
    a = random_select.select(x, 10, seed=123)
    assert torch.equal(a, random_select.select(x, 10, seed=123))
    assert not torch.equal(a, random_select.select(x, 10, seed=124))
    # default: fixed seed, deterministic
    default = random_select.select(x, 10, seed=random_select.DEFAULT_SEED)
    assert torch.equal(random_select.select(x, 10), default)
    # a generator advances: two calls differ, and re-seeding repeats them
    g = torch.Generator().manual_seed(5)
    first, second = random_select.select(x, 10, generator=g), random_select.select(x, 10, generator=g)
    assert not torch.equal(first, second)
    g.manual_seed(5)
    assert torch.equal(first, random_select.select(x, 10, generator=g))
    # images of a batch get different subsets
    assert len({tuple(row) for row in a.tolist()}) > 1
    with pytest.raises(TypeError):
        random_select.select(x, 10, seed="7")


def test_random_is_roughly_uniform():
    x = torch.zeros(2000, 20, 1)
    counts = torch.bincount(random_select.select(x, 5, seed=0).flatten(), minlength=20).float()
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500


def test_uniform_positions():
    assert uniform.select(torch.zeros(2, 10, 3), 3).tolist() == [[1, 5, 8]] * 2
    assert uniform.select(torch.zeros(1, 576, 3), 4).tolist() == [[72, 216, 360, 504]]
    for n, k in itertools.product([1, 7, 576], [1, 3, 7, 57]):
        if k <= n:
            pos = uniform.positions(n, k)
            assert pos.tolist() == [((2 * i + 1) * n) // (2 * k) for i in range(k)]
            check_indices(pos.unsqueeze(0), 1, n, k)


# ----------------------------------------------------------------------------------------------
# registry and budget


def test_get_pruner_unknown_lists_available():
    with pytest.raises(ValueError) as err:
        pruners.get_pruner("no-such-pruner")
    for name in BUILTINS:
        assert name in str(err.value)
    assert isinstance(err.value, pruners.UnknownPrunerError)
    assert pruners.get_pruner(" DivPrune ") is divprune.select


def test_register_custom_pruner():
    @pruners.register("test_norm_topk")
    def by_norm(features, k, **signals):
        with torch.no_grad():
            return features.float().norm(dim=-1).topk(k, dim=1).indices.sort(dim=1).values

    try:
        assert "test_norm_topk" in pruners.available()
        assert pruners.get_pruner("test_norm_topk") is by_norm
        x = _features()
        _assert_contract(pruners.get_pruner("test_norm_topk")(x, K, cls_attention=None), B, N, K)
        with pytest.raises(ValueError, match="already registered"):
            pruners.register("test_norm_topk", by_norm)
        with pytest.raises(ValueError, match="already registered"):
            pruners.register("divprune", by_norm)

        def other(features, k, **signals):
            return uniform.select(features, k)

        assert pruners.register("test_norm_topk", other, override=True) is other
        assert pruners.get_pruner("test_norm_topk") is other
        with pytest.raises(TypeError):
            pruners.register("test_not_callable", 42)
    finally:
        pruners.unregister("test_norm_topk")
    assert "test_norm_topk" not in pruners.available()


def test_budget():
    assert pruners.budget(576, 0.9) == 57
    assert pruners.budget(5, 0.9) == 1
    assert pruners.budget(576, 0.0) == 576
    assert pruners.budget(576, 0.5) == 288
    assert pruners.budget(576, 0.75) == 144
    assert pruners.budget(2880, 0.9) == 288
    assert pruners.budget(1, 0.999) == 1
    for bad in (1.0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="pruning_ratio"):
            pruners.budget(576, bad)
    with pytest.raises(ValueError):
        pruners.budget(0, 0.5)
    with pytest.raises(TypeError):
        pruners.budget(576, "0.9")
    with pytest.raises(TypeError):
        pruners.budget(57.5, 0.5)


def test_finite_check_can_be_disabled(monkeypatch):
    monkeypatch.setattr(common, "CHECK_FINITE", False)
    x = _features()
    x[0, 0, 0] = float("inf")
    pruners.get_pruner("uniform")(x, K)        # no check, no error
