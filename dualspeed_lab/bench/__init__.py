"""Benchmarks (`python -m dualspeed_lab.bench.bench_step`, `... .bench_pruner`) and the FLOP model (`.flops`)."""
