"""Per-image comparisons behind the sentences of docs/results/README.md, from a grid's results.json.

    python scripts/compare.py docs/results/images/results.json finer:siren wire-finer:wire mpa:sc-mlp
    python scripts/compare.py docs/results/images/results.json --lead finer

``A:B`` prints, over the (image, seed) pairs both methods ran, the mean, smallest and largest PSNR
difference A - B and on how many pairs A is ahead. ``--lead A`` prints A's margin over the best
other method of the grid on each pair that every method ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def psnr_table(path: str) -> dict[tuple, dict[str, float]]:
    with open(path) as fh:
        runs = json.load(fh)["runs"]
    table: dict[tuple, dict[str, float]] = {}
    for run in runs:
        table.setdefault((run["image"], run["seed"]), {})[run["model"]] = run["psnr"]
    return table


def describe(diffs: list[float], what: str) -> str:
    return (f"{what}: mean {statistics.mean(diffs):+.2f} dB, range {min(diffs):+.2f} to {max(diffs):+.2f} dB, "
            f"ahead on {sum(d > 0 for d in diffs)} of {len(diffs)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a grid's results.json")
    parser.add_argument("pairs", nargs="*", metavar="A:B", help="methods to compare, A - B")
    parser.add_argument("--lead", metavar="A", help="A's margin over the best other method")
    args = parser.parse_args(argv)
    table = psnr_table(args.results)
    models = sorted({m for row in table.values() for m in row})
    for pair in args.pairs:
        a, _, b = pair.partition(":")
        if a not in models or b not in models:
            parser.error(f"{pair}: methods in the grid are {', '.join(models)}")
        diffs = [row[a] - row[b] for row in table.values() if a in row and b in row]
        print(describe(diffs, f"{a} - {b}"))
    if args.lead:
        if args.lead not in models:
            parser.error(f"{args.lead}: methods in the grid are {', '.join(models)}")
        full = [row for row in table.values() if len(row) == len(models)]
        margins = [row[args.lead] - max(v for m, v in row.items() if m != args.lead) for row in full]
        print(describe(margins, f"{args.lead} - best other"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
