"""First-layer neurons of a trained image model, as pictures and as a frequency spectrum."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from finer.tasks.image import coordinate_grid


@torch.no_grad()
def first_layer_outputs(model: nn.Module, height: int, width: int, aspect: str = "stretch") -> np.ndarray:
    """Outputs of every first-layer neuron on the training grid: ``(units, H, W)``."""
    coords = coordinate_grid(height, width, aspect)
    y = model.layers[0](model.encoding(coords))
    y = y.real if y.is_complex() else y
    return y.T.reshape(-1, height, width).numpy()


def neuron_grid(outputs: np.ndarray, count: int = 64) -> np.ndarray:
    """Tile the first ``count`` neuron images (each min-max normalised) into one square picture."""
    n = min(count, outputs.shape[0])
    side = int(np.ceil(np.sqrt(n)))
    h, w = outputs.shape[1:]
    canvas = np.ones((side * (h + 2), side * (w + 2)))
    for i in range(n):
        img = outputs[i]
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-12)
        r, c = divmod(i, side)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = img
    return canvas


def radial_spectrum(outputs: np.ndarray, chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean power of the neurons' 2-D spectra per radial frequency (cycles per image side), summed ``chunk``
    units at a time (the complex spectra of all units at once take 4 times the outputs' memory)."""
    units, h, w = outputs.shape
    power = np.zeros((h, w))
    for start in range(0, units, chunk):
        part = outputs[start:start + chunk].astype(np.float64)
        part -= part.mean(axis=(1, 2), keepdims=True)
        power += (np.abs(np.fft.fft2(part)) ** 2).sum(axis=0)
    power /= units
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().astype(int)
    top = min(h, w) // 2
    sums = np.bincount(radius.ravel(), weights=power.ravel(), minlength=top + 1)[: top + 1]
    counts = np.bincount(radius.ravel(), minlength=top + 1)[: top + 1]
    return np.arange(top + 1), sums / np.maximum(counts, 1)
