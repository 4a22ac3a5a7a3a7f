"""Figures written by runs: training curves and error maps (matplotlib, no display needed)."""

from __future__ import annotations

import os

from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone
import numpy as np

from finer.io import atomic_write


def psnr_curve(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """PSNR vs step: training PSNR (every step, unclipped) and evaluation PSNR (clipped)."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_psnr"] for h in history], lw=1, label="train batch (unclipped)")
    ev = [(h["step"], h["eval_psnr"]) for h in history if h.get("eval_psnr") is not None]
    if ev:
        ax.plot(*zip(*ev), "o-", ms=3, label="full image (clipped)")
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def error_map(pred: np.ndarray, target: np.ndarray, path: str | os.PathLike, vmax: float | None = None) -> None:
    """Absolute error, averaged over channels, colour-mapped (brighter = worse) beside its colour bar.

    Pixel values are in [0, 1]; the scale tops at ``vmax``, by default the 99.5th percentile of the error
    (so that a few outliers do not darken the rest), and the bar says which."""
    err = np.abs(pred.astype(np.float64) - target.astype(np.float64)).mean(axis=-1)
    label = "mean |error| (0-1)"
    if vmax is None:
        vmax = max(float(np.percentile(err, 99.5)), 1e-6)
        label += "\nscale: 99.5th percentile"
    h, w = err.shape
    zoom = max(1.0, 320 / max(h, w))  # small images drawn larger, others at one pixel per pixel
    dpi, gap, bar_width, labels = 100, 0.08, 0.15, 0.85  # inches
    width, height = w * zoom / dpi, h * zoom / dpi
    fig = Figure(figsize=(width + gap + bar_width + labels, height), dpi=dpi)
    total = width + gap + bar_width + labels
    ax = fig.add_axes((0, 0, width / total, 1))
    shown = ax.imshow(err, cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    bar = fig.colorbar(shown, cax=fig.add_axes(((width + gap) / total, 0.05, bar_width / total, 0.9)))
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
