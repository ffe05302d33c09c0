"""Benchmarks: per-stage model timings, the thinker-performer latency budget, kernels."""
