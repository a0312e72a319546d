"""DualSpeed through upstream LLaVA's own classes (llava-torch 1.2.2.post1, transformers 4.37.2).

Run inside .venv-upstream (tests/upstream/helpers.run_upstream). Prints one `PASS <name>` line per check."""
import json
import os
import sys
import tempfile

import torch

import tiny_upstream as tu


def close(a, b, what):
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{what}: {a} != {b}")


def main():
    tu.assert_upstream_llava()
    import llava
    from transformers import LlamaForCausalLM

    import dualspeed_patch
    from dualspeed_patch import context, isolator
    from dualspeed_patch import DualSpeedArguments
    from dualspeed_patch.distill import kl_divergence
    from dualspeed_patch.pruners import budget

    dualspeed_patch.apply(llava)
    tmp = tempfile.mkdtemp(prefix="ds-upstream-")
    model, tokenizer, processor = tu.build_tiny_upstream(tmp)
    isolator.attach(model, 4)
    model.train()
    batch = tu.make_batch(tokenizer, processor, n=2, tmpdir=tmp)
    trainer = tu.make_trainer(model, tokenizer, processor, tmp, save_strategy="no")
    k = budget(576, 0.9)

    # fast step: the LLM sees the pruned sequence
    seen = []
    hook = model.get_model().layers[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.0))
    loss = trainer.compute_loss(model, batch)
    model(**batch)
    hook.remove()
    assert seen[0] == seen[1] - (576 - k - 4), seen
    full_length = seen[1]
    loss.backward()
    assert isolator.get(model).weight.grad.abs().sum() > 0
    print(f"PASS fast_step llm_tokens={seen[0]} full={seen[1]} loss={loss.item():.4f}")

    # slow step: CE(student, full) + KL(teacher pruned || student) on the answer tokens
    model.zero_grad()
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=1.0))
    loss = trainer.compute_loss(model, batch)
    student = model(**batch)
    args = (batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch["images"])
    with torch.no_grad(), context.mode(context.ModeSpec(context.FAST, "divprune", 0.9, True)):
        teacher = model(**batch)
        pruned = model.prepare_inputs_labels_for_multimodal(*args)
    full = model.prepare_inputs_labels_for_multimodal(*args)
    kl = kl_divergence(student.logits, teacher.logits, full[5], pruned[5])
    close(loss, student.loss + kl, "slow loss")
    loss.backward()
    assert model.get_model().mm_projector[0].weight.grad is not None
    print(f"PASS slow_step loss={loss.item():.4f} kl={kl.item():.6f}")

    # a short upstream training run in both modes saves the isolator
    modes_path = os.path.join(tmp, "modes.{rank}.jsonl")
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.5, mode_log=modes_path))
    trainer.train()
    with open(modes_path.format(rank=0)) as f:
        modes = [json.loads(line)["mode"] for line in f]
    assert os.path.isfile(os.path.join(trainer.args.output_dir, "mode_isolator.bin"))
    print(f"PASS trainer_train modes={modes}")

    # pruned generation equals generating from the pruned embeddings by hand
    model.eval()
    ids = tu.make_prompt_ids(tokenizer)
    image = batch["images"][:1]
    with dualspeed_patch.pruned_inference("divprune", 0.9, isolator=True):
        out = model.generate(ids, images=image, max_new_tokens=4, do_sample=False)
        _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image)
    assert embeds.shape[1] == ids.shape[1] - 1 + 4 + k, embeds.shape
    by_hand = LlamaForCausalLM.generate(model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4,
                                        do_sample=False)
    assert torch.equal(out, by_hand), (out, by_hand)
    print(f"PASS pruned_generate tokens={out.tolist()}")

    # DUET stage A: hooks on upstream's CLIP layer (transformers 4.37 nests it under vision_model and returns
    # tuples), merged before upstream's projector, with counts as options; then pruned generation with it
    model.train()
    model.zero_grad()
    seen = []
    hook = model.get_model().layers[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    dualspeed_patch.configure(DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.0, vtp_method="duet",
                                                 duet_dominant=30, duet_contextual=3))
    loss = trainer.compute_loss(model, batch)
    hook.remove()
    assert seen == [full_length - (576 - 33 - 4)], (seen, full_length)
    loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    model.eval()
    with dualspeed_patch.pruned_inference("duet", 0.9, isolator=True, dominant=30, contextual=3):
        out = model.generate(ids, images=image, max_new_tokens=4, do_sample=False)
        _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image)
    assert embeds.shape[1] == ids.shape[1] - 1 + 4 + 33, embeds.shape
    by_hand = LlamaForCausalLM.generate(model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4,
                                        do_sample=False)
    assert torch.equal(out, by_hand), (out, by_hand)
    print(f"PASS duet_stage_a llm_tokens={seen[0]} full={full_length} tokens={out.tolist()}")
    dualspeed_patch.configure(None)

    # DUET stage B on upstream's transformers 4.37 decoder (decoder_loop_v4.py): a fast and a slow step through
    # the trainer with stages A and B, the counts as configured; then pruned generation with the KV cache equals
    # recomputing the whole sequence at every step under the same schedule
    model.train()
    model.zero_grad()
    cfg = DualSpeedArguments(dualspeed=True, slow_mode_ratio=0.0, vtp_method="duet", duet_dominant=30,
                             duet_contextual=3, duet_stage_b=True, duet_stage_b_layers="1", duet_stage_b_ratios="0.5")
    lengths = []
    hook = model.get_model().layers[1].register_forward_pre_hook(
        lambda m, a, kw: lengths.append((a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    dualspeed_patch.configure(cfg)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    assert isolator.get(model).weight.grad.abs().sum() > 0
    assert lengths == [full_length - (576 - 33 - 4) - (33 - 16)], (lengths, full_length)
    model.zero_grad()
    dualspeed_patch.configure(DualSpeedArguments(**{**vars(cfg), "slow_mode_ratio": 1.0}))
    slow = trainer.compute_loss(model, batch)
    slow.backward()
    hook.remove()
    assert torch.isfinite(slow), slow
    model.eval()
    from dualspeed_patch.layer_drop import LayerDropSpec

    spec = dict(isolator=True, dominant=30, contextual=3, stage_b=LayerDropSpec((1,), (0.5,)))
    with dualspeed_patch.pruned_inference("duet", 0.9, **spec) as state:
        out = model.generate(ids, images=image, max_new_tokens=4, do_sample=False, use_cache=True)
    # upstream's generate passes embeddings: 4.37 starts the output with BOS, then the new tokens
    assert out[0, 0].item() == tokenizer.bos_token_id, out
    new_tokens = out[0, 1:].tolist()
    assert state.layer_drop.counts[1].tolist() == [16], state.layer_drop.counts
    seq, n = ids, ids.shape[1]
    for _ in new_tokens:
        labels = torch.full_like(seq, -100)
        labels[:, n:] = seq[:, n:]  # generated tokens are answers: never queries
        with torch.no_grad(), dualspeed_patch.pruned_inference("duet", 0.9, **spec):
            logits = model(input_ids=seq, images=image, labels=labels).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert seq[0, n:].tolist() == new_tokens, (seq[0, n:].tolist(), new_tokens)
    print(f"PASS duet_stage_b llm_tokens={lengths} slow_loss={slow.item():.4f} tokens={new_tokens}")
    dualspeed_patch.configure(None)

    # our training entry on upstream's train(): pretrain with DualSpeed writes mode_isolator.bin
    dualspeed_patch.configure(None)
    base = tu.save_tiny_base(os.path.join(tmp, "base"))
    data, images = tu.make_synthetic_data(os.path.join(tmp, "pt"), 4, pretrain=True)
    out_dir = os.path.join(tmp, "pretrain-dualspeed")
    argv = tu.train_argv("pretrain", model_name_or_path=base["base"], vision_tower=base["vision_tower"],
                         data_path=data, image_folder=images, output_dir=out_dir)
    from dualspeed_patch.train import main as train_main

    sys.argv = ["train.py"]
    train_main(argv + ["--dualspeed", "True", "--vtp_method", "divprune"])
    files = sorted(os.listdir(out_dir))
    assert "mm_projector.bin" in files and "mode_isolator.bin" in files, files
    print(f"PASS train_entry files={files}")
    dualspeed_patch.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
