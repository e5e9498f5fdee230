"""Benchmarks: each writes its numbers to bench/results/."""
