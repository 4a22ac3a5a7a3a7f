"""Time inference (no gradients) in chunks of several sizes: what finer.tasks.points_per_pass chooses from.

    .venv/bin/python scripts/eval-chunks.py [--device cpu] [--chunks 262144,65536,16384,4096,2048]
                                            [--image 256] [--grid 96] [--view 40]

Three inference passes of the library, each with a 3 x 256 FINER (2 x 256 for the SDF): an image of
``--image``^2 pixels (``predict_image``), an SDF grid of ``--grid``^3 points (``evaluate_grid``), and a
NeRF view of ``--view``^2 rays at 64 + 64 samples (``render_view``, its chunk in rays: points / 128).
Median seconds of ``--calls`` calls after one warm-up call (on CUDA, each call ends synchronised);
the same values whatever the chunk (a test checks it). Pick sizes of several chunks of the largest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the finer command does (finer/launch.py), before torch

import torch  # noqa: E402

from finer.models import build_model  # noqa: E402
from finer.nerf_run import NeRFRunConfig, build_renderer  # noqa: E402
from finer.tasks import nerf as N  # noqa: E402
from finer.tasks import points_per_pass  # noqa: E402
from finer.tasks.image import predict_image  # noqa: E402
from finer.tasks.sdf import evaluate_grid  # noqa: E402


def median_seconds(fn, calls: int, device: torch.device) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", default="262144,65536,16384,4096,2048", help="points per pass")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--image", type=int, default=256, help="image side (pixels)")
    parser.add_argument("--grid", type=int, default=96, help="SDF grid side (points)")
    parser.add_argument("--view", type=int, default=40, help="NeRF view side (rays)")
    args = parser.parse_args()
    device = torch.device(args.device)
    chunks = [int(c) for c in args.chunks.split(",")]
    image_net = build_model("finer", 2, 3, seed=0).to(device).eval()
    sdf_net = build_model("finer", 3, 1, hidden_layers=2, seed=0).to(device).eval()
    renderer = build_renderer(NeRFRunConfig(scene="none")).to(device).eval()
    pose = torch.from_numpy(N.orbit_poses(1, 4.0, 30.0)[0]).float().to(device)
    per_ray = renderer.samples + renderer.fine
    print(f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}; points_per_pass: "
          f"{points_per_pass(device)}")
    n, g, v = args.image, args.grid, args.view
    print(f"| points per pass | image {n}^2 (s) | SDF grid {g}^3 (s) | NeRF view {v}^2 (s) |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for chunk in chunks:
            image = median_seconds(lambda: predict_image(image_net, n, n, target_range=(-1.0, 1.0), chunk=chunk,
                                                         device=device), args.calls, device)
            grid = median_seconds(lambda: evaluate_grid(sdf_net, g, device, chunk=chunk), args.calls, device)
            view = median_seconds(lambda: renderer.render_view(v, v, 50.0 * v / 40, pose, max(1, chunk // per_ray)),
                                  args.calls, device)
            print(f"| {chunk} | {image:.3f} | {grid:.3f} | {view:.3f} |")


if __name__ == "__main__":
    main()
