"""The lab: what measures the token-reduction core offline.

- `dualspeed_lab.tiny`: tiny untrained assets (CLIP, Llama, tokenizer, data) for plumbing tests and the tour;
- `dualspeed_lab.toy`: the toy task (scenes and questions) and the toy models (pretrained tiny CLIP, warmed LLM);
- `dualspeed_lab.reproduce`: the paper-table driver (`python -m dualspeed_lab.reproduce --help`);
- `dualspeed_lab.bench`: step-time and pruner benchmarks and the FLOP model.
"""
