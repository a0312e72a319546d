"""DUET-VLM stage A (`--vtp_method duet`): the merge against a per-sample reference written from the spec, the
signals against an eager CLIP pass, and the plug-in inside the merge wrapper (counts, tokens, gradients)."""
import pytest
import torch
import torch.nn.functional as F

import dualspeed_patch
from dualspeed_patch import context, isolator, signals
from dualspeed_patch.pruners import MissingSignalError, budget, duet, get_reducer
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.helpers import make_tiny_llava

ISO = 4


@pytest.fixture
def patched():
    dualspeed_patch.apply("llava")
    yield
    dualspeed_patch.remove()


def reference_stage_a(hidden, cls_attention, keys, k1, k2, width):
    """Spec 2.2, one sample at a time with Python lists: [CLS, dominant (raster order), contextual] in CLIP space."""
    n = cls_attention.shape[0]
    order = sorted(range(n), key=lambda i: (-float(cls_attention[i]), i))
    dominant = sorted(order[:k1 - 1])
    rows = [hidden[0]] + [hidden[i + 1] for i in dominant]
    remaining = order[k1 - 1:]
    pool = remaining[:min(width * k2, len(remaining))]
    step = len(pool) // k2 if k2 else 0
    anchors = [pool[a * step] for a in range(k2)]
    members = [p for p in pool if p not in anchors]
    unit = F.normalize(keys, dim=-1)
    groups = {a: [] for a in anchors}
    for m in members:
        best = max(anchors, key=lambda a: (float(unit[m] @ unit[a]), -anchors.index(a)))
        groups[best].append(m)
    for a in anchors:
        extra = torch.stack([hidden[m + 1] for m in groups[a]]).mean(0) if groups[a] else 0
        rows.append(hidden[a + 1] + extra)
    return torch.stack(rows)


@pytest.mark.parametrize("n,k,contextual,width", [(16, 6, 2, 2), (16, 6, 2, 4), (40, 9, 3, 4), (12, 11, 1, 4),
                                                  (30, 7, None, 4), (10, 1, None, 4)])
def test_merge_matches_the_spec_reference(n, k, contextual, width):
    torch.manual_seed(n + k)
    b, dv, d = 3, 8, 6
    hidden = torch.randn(b, n + 1, dv)
    layer = duet.VisionLayer(torch.softmax(torch.randn(b, n), -1), torch.randn(b, n, 5), hidden)
    projector = torch.nn.Linear(dv, d)
    out = duet.merge(torch.zeros(b, n, d), k, vision_layer=layer, projector=projector, contextual=contextual,
                     cluster_width=width)
    k1, k2 = duet.split_budget(k, contextual)
    for i in range(b):
        expected = reference_stage_a(hidden[i], layer.cls_attention[i], layer.keys[i], k1, k2, width)
        assert torch.allclose(out[i], projector(expected), atol=1e-5), i


def test_split_budget():
    assert duet.split_budget(307) == (300, 7)      # DUET-LLaVA's default, k from --pruning_ratio 0.467 on 576
    assert duet.split_budget(budget(576, 0.9)) == (56, 1)
    assert duet.split_budget(1) == (1, 0)          # the CLS token alone
    assert duet.split_budget(10, contextual=9) == (1, 9)
    with pytest.raises(ValueError, match="10 contextual tokens do not fit a budget of 10"):
        duet.split_budget(10, contextual=10)


def test_merge_without_signals_says_how_to_get_them():
    with pytest.raises(MissingSignalError, match="vision_layer"):
        duet.merge(torch.zeros(1, 8, 4), 3)


def test_vision_layer_signal_matches_an_eager_pass(vision_path):
    """CLS attention, head-mean keys and the layer output, from hooks on the selected layer of a tower that
    keeps SDPA, against output_attentions / output_hidden_states of an eager pass over the same weights."""
    from dualspeed_patch.signals import _selected_layer

    model = make_tiny_llava(vision_path)
    tower = model.get_vision_tower()
    pixels = torch.randn(2, 3, 336, 336)
    with signals.span_vision_layer(model) as capture, torch.no_grad():
        model.encode_images(pixels)
    got = capture.rows()
    clip = tower.vision_tower
    clip.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = clip(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        clip.config._attn_implementation = "sdpa"
    select = tower.select_layer
    layer_index = len(out.attentions) + select  # the layer whose output is hidden_states[select]
    assert torch.allclose(got["cls_attention"], out.attentions[layer_index][:, :, 0, 1:].mean(1), atol=1e-5)
    assert torch.allclose(got["hidden"], out.hidden_states[select], atol=1e-5)
    layer = _selected_layer(tower)
    heads = layer.self_attn.num_heads
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[select - 1]))
    expected_keys = keys.view(2, keys.shape[1], heads, -1)[:, 1:].mean(2)
    assert torch.allclose(got["keys"], expected_keys, atol=1e-5)


def _batch():
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8], [1, 11, 12, 13, 14, 0]])
    mask = ids != 0
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    labels[ids == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    labels[~mask] = IGNORE_INDEX
    return ids, mask, labels, torch.randn(2, 3, 336, 336)  # the text-only sample's dummy second


def test_duet_in_the_merge_wrapper(vision_path, patched):
    """Fast mode: [isolator, projector(CLS, dominant, contextual)] where the image was, computed here from the
    tower's own hidden states; gradients reach the projector through every kept token and the isolator."""
    model = make_tiny_llava(vision_path)
    isolator.attach(model, ISO)
    ids, mask, labels, images = _batch()
    k = budget(576, 0.9)
    with signals.span_vision_layer(model) as capture, torch.no_grad():
        model.encode_images(images[:1])
    row = capture.rows()
    layer = duet.VisionLayer(row["cls_attention"], row["keys"], row["hidden"])
    k1, k2 = duet.split_budget(k)
    expected = reference_stage_a(row["hidden"][0], row["cls_attention"][0], row["keys"][0], k1, k2, 4)
    with context.mode(context.ModeSpec(context.FAST, "duet", 0.9, True)) as state:
        _, _, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, mask, None, labels, images)
    assert new_mask.sum(1).tolist() == [5 + ISO + k, 5] and state.visual_kept == k and state.visual_total == 576
    projector = model.get_model().mm_projector
    assert torch.allclose(embeds[0, 2 + ISO:2 + ISO + k], projector(expected), atol=1e-5)
    assert duet.merge(torch.zeros(1, 576, embeds.shape[-1]), k, vision_layer=layer, projector=projector).shape == \
        (1, k, embeds.shape[-1])
    assert (new_labels[0, :2 + ISO + k] == IGNORE_INDEX).all() and new_labels[0, -3:].tolist() == [6, 7, 8]
    embeds[0, 2 + ISO + k - 1].sum().backward(retain_graph=True)  # the contextual token alone
    assert projector[0].weight.grad.abs().sum() > 0
    embeds[0, 2:2 + ISO].sum().backward()
    assert isolator.get(model).weight.grad.abs().sum() > 0


def test_duet_is_a_registered_merge():
    reducer = get_reducer("duet")
    assert reducer.kind == "merge" and reducer.signals == ("vision_layer", "projector")


def test_duet_refuses_anyres(vision_path, patched):
    from PIL import Image

    from llava.mm_utils import process_images

    model = make_tiny_llava(vision_path, merge="spatial_unpad", image_aspect_ratio="anyres",
                            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672]])
    image = Image.new("RGB", (700, 300), (10, 200, 30))
    pixels = [process_images([image], model.get_vision_tower().image_processor, model.config)[0]]
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6]])
    with context.mode(context.ModeSpec(context.FAST, "duet", 0.9, False)), pytest.raises(
            NotImplementedError, match=r"vision_layer \(duet\) needs one vision-tower row per image"):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels, image_sizes=[image.size])


@pytest.mark.slow
def test_duet_trains_through_finetune_lora_and_prunes_at_inference(tiny_assets, tmp_path):
    """`--vtp_method duet` through the user's route: fast and slow steps of finetune_lora.sh, then pruned
    inference with the same plug-in through the runner."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import BIN, ROOT, run_script

    pretrain = tmp_path / "pretrain"
    run_script("pretrain.sh", tiny_assets, pretrain, extra=["--max_steps", "1"])
    out = tmp_path / "llava-tiny-lora-duet"
    log_path = tmp_path / "modes.jsonl"
    proc = run_script("finetune_lora.sh", tiny_assets, out, DUALSPEED="1",
                      PRETRAIN_MM_MLP_ADAPTER=str(pretrain / "mm_projector.bin"),
                      extra=["--vtp_method", "duet", "--slow_mode_ratio", "0.5", "--max_steps", "4",
                             "--mode_log", str(log_path), "--logging_steps", "1"])
    log = proc.stdout + proc.stderr
    modes = [json.loads(line)["mode"] for line in log_path.read_text().splitlines()]
    assert "fast" in modes and "slow" in modes, modes
    assert "'dualspeed/kl'" in log and (out / "mode_isolator.bin").is_file()
    with open(tiny_assets["finetune_data"]) as f:
        image = next(os.path.join(tiny_assets["image_folder"], r["image"]) for r in json.load(f) if "image" in r)
    question = tmp_path / "q.jsonl"
    question.write_text(json.dumps({"question_id": 1, "image": os.path.basename(image), "text": "Color?"}) + "\n")
    answers = tmp_path / "answers.jsonl"
    cmd = [sys.executable, "-m", "dualspeed_patch.run", "--pruned", "--vtp_method", "duet", "--pruning_ratio", "0.9",
           "llava.eval.model_vqa_loader", "--model-path", str(out), "--model-base", tiny_assets["model"],
           "--image-folder", os.path.dirname(image), "--question-file", str(question), "--answers-file",
           str(answers), "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "3",
           "--num-workers", "0", "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Pruned inference: duet, ratio 0.90, isolator on" in run.stderr
    assert json.loads(answers.read_text())["question_id"] == 1


# ----------------------------------------------------------------------------------------- options and counts

@pytest.mark.parametrize("kw,message", [
    ({"duet_contextual": 3}, "--duet_contextual is an option of --vtp_method duet, not of 'divprune'"),
    ({"vtp_method": "duet", "duet_dominant": 300, "pruning_ratio": 0.5}, "give one of them"),
    ({"vtp_method": "duet", "duet_cluster_width": 0}, "--duet_cluster_width must be >= 1, got 0"),
    ({"vtp_method": "duet", "duet_dominant": 0}, "--duet_dominant must be >= 1, got 0"),
    ({"vtp_method": "duet", "duet_contextual": 2.5}, "--duet_contextual must be an integer, got 2.5"),
])
def test_option_errors(kw, message):
    from dualspeed_patch import DualSpeedConfig

    with pytest.raises(ValueError, match=message):
        DualSpeedConfig(dualspeed=True, **kw)


def test_config_options_reach_the_mode_spec():
    from dualspeed_patch import DualSpeedConfig

    cfg = DualSpeedConfig(dualspeed=True, vtp_method="duet", duet_dominant=300, duet_contextual=7)
    spec = context.ModeSpec.from_config(cfg, context.FAST)
    assert spec.options == (("dominant", 300), ("contextual", 7), ("cluster_width", 4))
    assert context.ModeSpec.from_config(DualSpeedConfig(dualspeed=True), context.FAST).options == ()
    with pytest.raises(ValueError, match=r"--vtp_method divprune takes no option \['contextual'\]"):
        context.ModeSpec(context.FAST, "divprune", 0.9, False, 0, {"contextual": 2})


@pytest.mark.parametrize("options,kept", [({"dominant": 30, "contextual": 3}, 33), ({"dominant": 300}, 307),
                                          ({"contextual": 5}, budget(576, 0.9)), ({"dominant": 1, "contextual": 0}, 1)])
def test_counts_set_the_budget(vision_path, patched, options, kept):
    model = make_tiny_llava(vision_path)
    ids, mask, labels, images = _batch()
    with context.pruned_inference("duet", 0.9, False, **options) as state:
        _, _, new_mask, _, _, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    assert new_mask.sum(1).tolist() == [5 + kept, 5] and state.visual_kept == kept


def test_a_budget_larger_than_the_span_is_refused(vision_path, patched):
    model = make_tiny_llava(vision_path)
    ids, mask, labels, images = _batch()
    with context.pruned_inference("duet", 0.9, False, dominant=570, contextual=7), pytest.raises(
            ValueError, match="570 dominant \\+ 7 contextual tokens is larger than this image span of 576 tokens"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)


def test_runner_flags(monkeypatch):
    from dualspeed_patch import run

    with pytest.raises(SystemExit, match="--duet_contextual given without --pruned"):
        run.configure_inference(run.build_parser().parse_args(["--duet_contextual", "3", "llava.eval.run_llava"]))
    with pytest.raises(SystemExit, match="an option of --vtp_method duet, not of 'cdpruner'"):
        run.configure_inference(run.build_parser().parse_args(
            ["--pruned", "--vtp_method", "cdpruner", "--duet_dominant", "30", "llava.eval.run_llava"]))
