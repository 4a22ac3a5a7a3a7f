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


def check_run_names(runs, what: str) -> None:
    """Refuse a grid in which two runs would share a name: ``runs`` are ``(name, input path, model)``,
    names compared without case (``x-gauss`` with ``finer`` and ``x`` with ``gauss-finer``; names that
    differ only by case are one file on macOS and Windows): one would replace the other's files."""
    named: dict[str, tuple] = {}
    for record, path, model in runs:
        key = record.casefold()
        if key in named and named[key] != (path, model):
            other = named[key]
            raise FinerError(f"two runs of this grid would both be named {record!r} ({other[0].name} with {other[1]}, "
                             f"{path.name} with {model}), and one would replace the other's files: rename one {what}")
        named[key] = (path, model)
