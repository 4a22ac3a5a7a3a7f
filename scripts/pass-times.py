"""Time each compiled pass of the fused layers on its own, at the paper's image shapes.

    .venv/bin/python scripts/pass-times.py [--points 65536] [--width 256] [--device cpu]

For every kernel: the hidden layer's forward pass (bias + activation) and backward pass (gradient
factor + bias gradient), and the first layer's two passes (its 2-term product computed inside).
WIRE's and Wire-FINER's layers are complex, ``width / sqrt(2)`` wide. A pass that the compiler did
not vectorise, or that writes intermediate tensors, shows here as several times a copy of its output,
where the whole step (``finer bench speed``) blurs it. Median of ``--calls`` calls after 3 warm-up calls.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the finer command does (finer/launch.py), before torch

import torch  # noqa: E402

from finer.nn import fused as F  # noqa: E402


def median_ms(fn, *args, device: torch.device, calls: int = 15) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(3):
        once()
    return 1e3 * statistics.median(once() for _ in range(calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per pass (median; default 15)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    n, w = args.points, args.width

    def rand(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).to(device)

    def timed(fn, *a):
        return median_ms(fn, *a, device=device, calls=args.calls)

    x = rand(n, 2)
    print(f"{n} points, width {w}, {device}, {torch.get_num_threads()} threads; milliseconds per call")
    print(f"copy of a {n} x {w} tensor: {timed(torch.clone, rand(n, w)):.1f}")
    print("| kernel | forward | backward | first layer forward | first layer backward |")
    print("|---|---|---|---|---|")
    for kernel in F.KERNELS.values():
        value, grad = F._linear_runners(kernel, True)
        stem_value, stem_grad = F._stem_runners(kernel, True)
        z, b, g = rand(n, w, scale=0.1), rand(w, scale=0.1), rand(n, w, scale=1e-4)
        w_t, b1 = rand(2, w, scale=0.5), rand(w)
        times = [timed(value, z, b), timed(grad, g, z, b),
                 timed(stem_value, x, w_t, b1), timed(stem_grad, g, x, w_t, b1)]
        print(f"| {kernel.__name__} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
    c = round(w / math.sqrt(2))
    for kernel in F.COMPLEX_KERNELS.values():
        value, grad = F._complex_linear_runners(kernel, False, True)
        z, b, g = rand(n, 2 * c, scale=0.1), rand(2 * c, scale=0.1), rand(n, c, 2, scale=1e-4)
        times = [timed(value, z, b), timed(grad, g, z, b)]
        print(f"| {kernel.__name__} ({c} complex) | " + " | ".join(f"{t:.1f}" for t in times) + " | – | – |")


if __name__ == "__main__":
    main()
