"""Benchmarks: grids of runs, the eager reference of the official code, and their reports."""

from finer.errors import FinerError

REFERENCE = "official-finer"
"""The name of the eager re-implementation of the official FINER code (:mod:`finer.bench.reference`)."""


def check_models(models: list[str], choices: list[str]) -> None:
    """Refuse a grid's model list that is empty, names a model not in ``choices``, or repeats one."""
    unknown = [m for m in models if m not in choices]
    if unknown:
        raise FinerError(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(choices)}")
    if not models:
        raise FinerError("no models given")
    if len(set(models)) < len(models):
        raise FinerError(f"models listed more than once: {', '.join(models)}")
