"""Tasks: what a signal is, how it is sampled for training, and how a fit is evaluated."""

from __future__ import annotations


def points_per_pass(device) -> int:
    """Points a network is evaluated on at once when nothing is trained (evaluation, renders, surfaces):
    4096 on a CPU, where a chunk's activations then stay in the cache (on 2 cores 1.65 x to 2.8 x faster
    than the chunks used before; ``scripts/eval-chunks.py``, docs/results/README.md), 262144 on a GPU,
    which large passes keep busy."""
    import torch

    return 262_144 if torch.device(device).type == "cuda" else 4096
