"""Benchmarks: grids of runs, the eager reference of the official code, and their reports."""
