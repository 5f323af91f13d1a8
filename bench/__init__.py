"""Benchmarks that print ratios against a baseline measured in the same run (never pytest timings).

Run them from the repository root, e.g. `python bench/bus_overhead.py`.
"""
