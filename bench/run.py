"""Benchmarks (filled in by the performance issue)."""
