"""Figures written by runs: training curves and error maps (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from finer.io import atomic_write  # noqa: E402


def psnr_curve(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """PSNR vs step: training PSNR (every step, unclipped) and evaluation PSNR (clipped)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
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
    plt.close(fig)


def error_map(pred: np.ndarray, target: np.ndarray, path: str | os.PathLike, vmax: float | None = None) -> None:
    """Absolute error, averaged over channels, as a colour-mapped PNG (brighter = worse)."""
    err = np.abs(pred.astype(np.float64) - target.astype(np.float64)).mean(axis=-1)
    vmax = vmax if vmax is not None else max(float(np.percentile(err, 99.5)), 1e-6)
    atomic_write(path, lambda tmp: plt.imsave(tmp, err, cmap="inferno", vmin=0.0, vmax=vmax, format="png"))
