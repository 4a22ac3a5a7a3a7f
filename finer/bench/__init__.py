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


def check_record(row, where: str, numbers: tuple[str, ...] = (), texts: tuple[str, ...] = ()) -> dict:
    """``row``, a run's record as a grid stored it, or a :class:`FinerError` naming ``where`` and what is wrong
    (a record edited or damaged by hand): an object whose ``numbers`` are numbers (or null, or "inf"/"-inf" as
    :func:`finer.io.jsonable` writes them) and ``texts`` strings."""
    if not isinstance(row, dict):
        raise FinerError(f"{where} is not a run record (a JSON object); delete it to fit that run again")
    for key in (*numbers, *texts):
        if key not in row:
            raise FinerError(f"{where} is not a run record of a grid (it has no {key}); delete it to fit that run "
                             "again")
    for key in numbers:
        value = row[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number or value is None or value in ("inf", "-inf")):
            raise FinerError(f"{where}: {key} {value!r} is not a number; delete the record to fit that run again")
    for key in texts:
        if not isinstance(row[key], str):
            raise FinerError(f"{where}: {key} {row[key]!r} is not a name; delete the record to fit that run again")
    return row
