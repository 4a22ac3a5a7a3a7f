"""How far bf16 mixed precision moves each method's parameter gradients from float64, at initialisation.

    .venv/bin/python scripts/bf16-gradients.py [--models finer,siren,gauss,gauss-finer,wire,wire-finer]
                                               [--points 4096] [--width 256] [--seeds 0,1,2]

For each method: its image network (``--width``, three hidden layers, 2 -> 3) built with a seed, one
loss (the mean squared error to random targets on ``--points`` random coordinates of [-1, 1]^2) and its
gradient twice: in float64 without autocast, and in float32 under bfloat16 autocast on the CPU
(what ``--precision bf16`` trains with). Prints ``|g_bf16 - g_64| / |g_64|`` over all parameters
(complex ones as their real and imaginary parts), the median over the seeds and their range.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from finer.models import build_model


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    parts = [torch.view_as_real(p.grad) if p.grad.is_complex() else p.grad for p in model.parameters()]
    return torch.cat([g.flatten().double() for g in parts])


def relative_error(name: str, width: int, points: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(points, 2, generator=generator) * 2 - 1
    target = torch.rand(points, 3, generator=generator)
    exact = build_model(name, 2, 3, width=width, seed=seed).double()
    (exact(coords.double()) - target.double()).square().mean().backward()
    mixed = build_model(name, 2, 3, width=width, seed=seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = mixed(coords)
    (pred.float() - target).square().mean().backward()
    want = flat_gradient(exact)
    return float((flat_gradient(mixed) - want).norm() / want.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="finer,siren,gauss,gauss-finer,wire,wire-finer")
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"relative gradient error of bf16 autocast against float64, {args.points} points, width {args.width}, "
          f"seeds {args.seeds}")
    for name in args.models.split(","):
        errors = [relative_error(name, args.width, args.points, seed) for seed in seeds]
        print(f"{name:12s} median {statistics.median(errors):.4f}  (range {min(errors):.4f} to {max(errors):.4f})")


if __name__ == "__main__":
    main()
