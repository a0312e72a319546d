"""The toy task and the offline-pretrained toy models of the DualSpeed reproduction (dualspeed_lab.reproduce).

Task:    scenes.py (scene parameters, captions) -> render.py (pixels, ground truth) -> questions.py (questions,
         scoring) -> task.py (splits, files, CLI; re-exports the other three); blind_baseline.py (text-only
         baselines, CLI).
Models:  config.py (sizes, defaults) and optim.py (LR schedule, AdamW, one step) are shared; tower.py (CLIP tower)
         -> tower_pretrain.py (its dense pretraining); lm_warmup.py (tokenizer, text warm-up) -> scene_warmup.py
         (scene warm-up); probe.py (tower probe); models.py (the build and its CLI).
Tools:   lm_probe.py (does the LLaVA-style LM learn to read the toy images? CLI).

    python -m dualspeed_lab.toy.task --out /tmp/toytask
    python -m dualspeed_lab.toy.models --data /tmp/toytask --out /tmp/toymodels

Measured figures: docs/toy_findings.md.
"""
