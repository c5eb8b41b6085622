"""Benchmarks: each case times a candidate against its baseline in the same run on the same inputs.

Run them with ``python -m bench [--quick] [--json] [--only CASE ...]`` from the repository root;
docs/BENCHMARKS.md has the figures and how to read them. Timing lives here, never in tests.
"""
