"""``finer bench compare``: per-image head-to-head comparisons from a grid's ``results.json``.

A grid's summary gives means; a user choosing a method also asks "on how many of my images is A
better than B, and by how much at worst?". ``A:B`` answers over the (image, seed, width) cases both
methods ran (a width sweep's ``width.json`` has several widths per image): the mean, smallest and
largest PSNR difference A − B and the number of cases where A is ahead. ``lead(A)``: A's margin over
the best other method, over the cases every method ran. A run without a PSNR (one that diverged before
its first evaluation) takes no part.
"""

from __future__ import annotations

from pathlib import Path

from finer import io
from finer.bench import check_record
from finer.errors import FinerError
from finer.metrics import mean, psnr_difference


def psnr_table(results: str | Path) -> dict[tuple[str, int, int], dict[str, float]]:
    """``{(image, seed, width): {model: psnr}}`` from a grid's ``results.json`` or a width sweep's
    ``width.json`` (or the folder of either)."""
    path = Path(results)
    if path.is_dir():
        path = path / ("width.json" if (path / "width.json").is_file() and not (path / "results.json").exists()
                       else "results.json")
    if not path.is_file():
        raise FinerError(f"no grid results at {path} (a folder written by `finer bench images` or `finer bench "
                         "width`, or its results.json or width.json)")
    data = io.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise FinerError(f"{path} is not a grid's results.json (no list of runs)")
    if any(isinstance(run, dict) and "chamfer" in run for run in data["runs"]):
        raise FinerError(f"{path} holds the shapes of `finer bench sdf` (Chamfer and IoU, in its summary.md); "
                         "`finer bench compare` compares the PSNR of image grids")
    table: dict[tuple[str, int, int], dict[str, float]] = {}
    for i, run in enumerate(data["runs"]):
        check_record(run, f"{path}: run {i + 1}", numbers=("psnr", "seed"), texts=("image", "model"))
        if run.get("psnr") is not None:  # ("inf" for an exact fit)
            table.setdefault((run["image"], run["seed"], run.get("width")), {})[run["model"]] = \
                io.stored_number(run["psnr"])
    return table


def _stats(diffs: list[float]) -> dict:
    if not diffs:
        raise FinerError("no image was run by both methods")
    return {"pairs": len(diffs), "ahead": sum(d > 0 for d in diffs), "mean": mean(diffs),
            "min": min(diffs), "max": max(diffs)}


def _check(table: dict, name: str) -> None:
    models = sorted({m for row in table.values() for m in row})
    if name not in models:
        raise FinerError(f"method {name!r} is not in these results; they have: {', '.join(models)}")


def pair(table: dict, a: str, b: str) -> dict:
    """PSNR differences ``a - b`` over the (image, seed, width) cases both ran."""
    _check(table, a)
    _check(table, b)
    both = [row for row in table.values() if a in row and b in row]
    return {"a": a, "b": b, **_stats([psnr_difference(row[a], row[b]) for row in both])}


def lead(table: dict, a: str) -> dict:
    """``a``'s margin over the best other method, over the cases that every method ran."""
    _check(table, a)
    models = {m for row in table.values() for m in row}
    if len(models) < 2:
        raise FinerError("a lead needs at least two methods in the results")
    full = [row for row in table.values() if set(row) == models]
    if not full:
        raise FinerError("no image was run by every method; compare pairs instead (A:B)")
    return {"a": a, "b": "best other",
            **_stats([psnr_difference(row[a], max(v for m, v in row.items() if m != a)) for row in full])}


def describe(stats: dict) -> str:
    return (f"{stats['a']} - {stats['b']}: mean {stats['mean']:+.2f} dB, range {stats['min']:+.2f} to "
            f"{stats['max']:+.2f} dB, ahead on {stats['ahead']} of {stats['pairs']}")
