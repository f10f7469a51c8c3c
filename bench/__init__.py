"""Benchmarks (``make bench``): they measure and report, they do not assert.

Each entry compares variants in one run on the same machine, so the printed
ratios mean something even where the absolute figures depend on the host.
"""
