"""Image loading (grey, RGB, RGBA, 16-bit), crop/resize, coordinates, and bad files."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from finer.errors import FinerError
from finer.tasks import image as img


def test_default_image_is_a_real_sample():
    arr = img.load_image(None)
    assert arr.shape == (512, 512, 3) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.std() > 0.1


def test_grey_rgb_rgba_and_16_bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert img.load_image(tmp_path / "g.png").shape == (8, 8, 1)
    np.testing.assert_allclose(img.load_image(tmp_path / "g.png")[..., 0], grey / 255, atol=1e-6)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0  # fully transparent red
    Image.fromarray(rgba).save(tmp_path / "a.png")
    white = img.load_image(tmp_path / "a.png")
    assert white.shape == (4, 4, 3) and np.allclose(white, 1.0)
    assert np.allclose(img.load_image(tmp_path / "a.png", alpha="black"), 0.0)
    assert img.load_image(tmp_path / "a.png", alpha="keep").shape == (4, 4, 4)
    assert np.allclose(img.load_image(tmp_path / "a.png", alpha="drop")[..., 0], 1.0)

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_allclose(img.load_image(tmp_path / "d.png")[..., 0], deep / 65535, atol=1e-6)

    # integer images scale by their format's white, not by their content: a dark 16-bit image stays dark
    dark = np.full((4, 4), 100, np.uint16)
    (tmp_path / "dark.pgm").write_bytes(b"P5 4 4 65535\n" + dark.astype(">u2").tobytes())  # PIL: mode I
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    for name in ("dark.pgm", "dark.tif"):
        np.testing.assert_allclose(img.load_image(tmp_path / name), 100 / 65535, rtol=1e-5)
    Image.fromarray(dark.astype(np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(FinerError, match="wide.tif: its samples are 32-bit integers, whose white is not defined"):
        img.load_image(tmp_path / "wide.tif")
    from PIL import TiffImagePlugin

    signed = TiffImagePlugin.ImageFileDirectory_v2()
    signed[339] = 2  # SampleFormat: signed integers (scaled by 65535 they lost half the range, and the negatives)
    Image.fromarray(dark).save(tmp_path / "signed.tif", tiffinfo=signed)
    with pytest.raises(FinerError, match="signed.tif: its samples are signed integers, whose white is not defined"):
        img.load_image(tmp_path / "signed.tif")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "signed8.tif", tiffinfo=signed)  # -1 as int8
    with pytest.raises(FinerError, match="signed8.tif: its samples are signed integers"):
        img.load_image(tmp_path / "signed8.tif")  # (PIL reads int8 samples as 8-bit grey: -1 was white)


def test_an_exif_rotated_photo_is_read_as_it_is_shown(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 tall, a bright left column
    stored[:, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    shown = img.load_image(tmp_path / "phone.jpg")
    assert shown.shape == (20, 10, 3)  # 10 wide, 20 tall, as a viewer shows it
    assert shown[0].mean() > 0.9 and shown[-1].mean() < 0.1  # the left column is now the top row


def test_crop_and_resize(png_path):
    assert img.load_image(png_path, crop=16).shape == (16, 16, 3)
    assert img.load_image(png_path, crop="10x20").shape == (10, 20, 3)
    assert img.load_image(png_path, size=12).shape == (12, 12, 3)
    full = img.load_image(png_path)
    np.testing.assert_array_equal(img.load_image(png_path, crop=8), full[8:16, 8:16])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"crop": 100}, "larger than the image"), ({"crop": "ax3"}, "crop must be"), ({"alpha": "pink"}, "unknown alpha")],
)
def test_bad_options(png_path, kwargs, message):
    with pytest.raises(FinerError, match=message):
        img.load_image(png_path, **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(FinerError, match="not found"):
        img.load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(FinerError, match="cannot read image"):
        img.load_image(tmp_path / "junk.png")
    with pytest.raises(FinerError, match="directory"):
        img.load_image(tmp_path)


def test_float_images_must_hold_finite_values_in_0_1(tmp_path):
    ok = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(ok, "F").save(tmp_path / "ok.tif")
    np.testing.assert_allclose(img.load_image(tmp_path / "ok.tif")[..., 0], ok)
    Image.fromarray(ok * 240 + 15, "F").save(tmp_path / "wide.tif")  # 0-255 floats: were clipped to all white
    with pytest.raises(FinerError, match="wide.tif is a float image with values from 15 to 255; float images are "
                                         "read as \\[0, 1\\]"):
        img.load_image(tmp_path / "wide.tif")
    bad = ok.copy()
    bad[1, 2] = np.nan
    Image.fromarray(bad, "F").save(tmp_path / "nan.tif")
    with pytest.raises(FinerError, match="nan.tif is a float image with 1 non-finite values"):
        img.load_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("name, shape", [("horse", (328, 400, 1)), ("shepp_logan_phantom", (400, 400, 1)),
                                         ("camera", (512, 512, 1))])
def test_scikit_image_samples_of_every_kind_are_read(name, shape):
    arr = img.load_image(f"skimage:{name}")  # bool, float and 8-bit samples
    assert arr.shape == shape and arr.dtype == np.float32 and arr.min() >= 0 and arr.max() == 1


def test_a_random_scikit_image_sample_is_the_same_image_at_every_read():
    first = img.load_image("skimage:binary_blobs", size=64)  # a fit, its resume and its scores read it again
    assert first.std() > 0.3 and np.array_equal(first, img.load_image("skimage:binary_blobs", size=64))


@pytest.mark.parametrize("name, message", [
    ("lfw_subset", "is not a 2-D image of up to 4 channels \\(shape \\(200, 25, 25\\)\\)"),
    ("file_hash", "cannot be read as a sample image here"), ("_fetch", "has no sample image"),
    ("stereo_motorcycle", "is not one image \\(it gives 3 arrays\\)"),
    ("nonesuch", "has no sample image")])
def test_scikit_image_names_that_are_no_sample_image_are_refused(name, message):
    with pytest.raises(FinerError, match=message):
        img.load_image(f"skimage:{name}")


def test_without_a_memory_budget_the_cpus_applies(png_path, monkeypatch):
    monkeypatch.setattr(img, "memory_budget", lambda device: 1000)  # a 24x24 image needs more
    with pytest.raises(FinerError, match="more than the .* GiB available"):
        img.load_image(png_path)
    assert img.load_image(png_path, max_bytes=2**30).shape == (24, 24, 3)


def test_too_large_for_memory_is_refused_before_decoding(png_path):
    with pytest.raises(FinerError, match="more than the .* GiB available"):
        img.load_image(png_path, max_bytes=1000)
    # an upscaling --size is checked before resizing (skimage:camera is 512x512)
    with pytest.raises(FinerError, match="size 100000 makes the 512x512 image 100000x100000 pixels, about .* GiB to "
                                         "resize, more than the .* GiB available; choose a smaller size"):
        img.load_image("skimage:camera", size=100_000)


def test_coordinate_grid():
    grid = img.coordinate_grid(3, 5)
    assert grid.shape == (15, 2)
    assert torch.allclose(grid[0], torch.tensor([-1.0, -1.0])) and torch.allclose(grid[-1], torch.tensor([1.0, 1.0]))
    assert torch.allclose(grid[1], torch.tensor([-0.5, -1.0]))  # x varies fastest
    kept = img.coordinate_grid(2, 4, aspect="preserve")
    assert kept[:, 0].abs().max() == 1.0 and kept[:, 1].abs().max() == pytest.approx(0.5)


def test_task_batches_and_ranges(astronaut_small):
    task = img.ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    x, y = task.batch(0)
    assert x.shape == (24 * 24, 2) and y.min() >= -1 and y.max() <= 1
    batched = img.ImageTask(astronaut_small, (0.0, 1.0), torch.device("cpu"), batch_size=50, seed=3)
    bx, by = batched.batch(0)
    assert bx.shape == (50, 2) and by.shape == (50, 3)
    assert task.train_psnr(0.04) == pytest.approx(20.0)  # MSE 0.04 on [-1,1] = 0.01 on [0,1]


def test_batch_size_choice():
    assert img.choose_batch_size(1000, 10_000, 20_000) is None
    assert img.choose_batch_size(1_000_000, 10**10, 10**8) == 8192


def test_reading_an_image_leaves_pils_decompression_guard_in_place(png_path):
    guard = Image.MAX_IMAGE_PIXELS
    img.load_image(png_path)
    assert Image.MAX_IMAGE_PIXELS == guard


@pytest.mark.parametrize("image, message", [
    (np.full((4, 4, 3), 200, np.uint8), "float array in \\[0, 1\\]"), (np.full((4, 4, 3), 200.0), "divide by 255"),
    (np.zeros((4, 4)), "\\(H, W, C\\)"), (torch.zeros(4, 4, 3), "got Tensor"),
    (np.full((4, 4, 3), np.nan), "values in \\[0, 1\\]")])
def test_an_image_task_refuses_what_it_would_fit_wrongly(image, message):
    with pytest.raises(FinerError, match=message):
        img.ImageTask(image, (-1.0, 1.0), torch.device("cpu"))


@pytest.mark.parametrize("options, message", [
    (dict(target_range=(0, 0)), "low < high"), (dict(target_range=(1, -1)), "low < high"),
    (dict(target_range=(0, math.inf)), "low < high"), (dict(target_range=(0,)), "low < high"),
    (dict(batch_size=0), "batch_size is a positive number"), (dict(batch_size=-3), "batch_size is a positive"),
    (dict(batch_size=2.5), "batch_size is a positive")])
def test_an_image_task_refuses_ranges_and_batches_it_cannot_use(options, message):
    with pytest.raises(FinerError, match=message):
        img.ImageTask(np.zeros((4, 4, 3)), **{"target_range": (-1.0, 1.0), **options}, device=torch.device("cpu"))


def test_an_image_task_takes_a_flipped_view_and_refuses_a_model_of_other_channels(astronaut_small):
    from finer.models import build_model
    from finer.train import TrainConfig, fit

    bgr = astronaut_small[..., ::-1]  # a view with a negative stride (OpenCV's BGR to RGB)
    task = img.ImageTask(bgr, (-1.0, 1.0), torch.device("cpu"))
    torch.testing.assert_close(task.targets[:, 0], torch.from_numpy(astronaut_small[..., 2].reshape(-1)) * 2 - 1)
    grey_net = build_model("finer", 2, 1, width=8, hidden_layers=1, seed=0)  # 1 output for 3 channels
    with pytest.raises(FinerError, match="the model gives 1 outputs a pixel, the image has 3 channels"):
        fit(grey_net, task, TrainConfig(steps=2, eval_every=0), progress=False)


@pytest.mark.parametrize("field, value, message", [("image", np.zeros((4, 4, 3)), "image is a file path"),
                                                   ("model_options", None, "model_options is a dict"),
                                                   ("seed", -1, "seed must be an integer")])
def test_an_image_run_config_refuses_wrong_kinds(field, value, message):
    from finer.runs import ImageRunConfig

    with pytest.raises(FinerError, match=message):
        ImageRunConfig(**{field: value}).validate()


def test_evaluation_chunks_follow_the_device_and_change_no_value():
    """Small chunks on a CPU (the cache), large ones on a GPU; the prediction is the same either way."""
    import torch

    from finer.models import build_model
    from finer.tasks import points_per_pass

    assert points_per_pass("cpu") == 4096 and points_per_pass(torch.device("cuda")) == 262_144
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0).eval()
    with torch.no_grad():
        auto = img.predict_image(net, 80, 70, target_range=(-1.0, 1.0))  # 5600 pixels: two chunks
        whole = img.predict_image(net, 80, 70, target_range=(-1.0, 1.0), chunk=65536)
    np.testing.assert_allclose(auto, whole, atol=1e-6)


def test_grey_and_alpha_is_written_as_it_was_read(tmp_path):
    """A grey image with alpha, fitted with --alpha keep, is written as grey and alpha (it was written as RGBA,
    which `finer eval image` could not compare with its grey source)."""
    rng = np.random.default_rng(0)
    data = np.stack([rng.integers(0, 256, (6, 5)), rng.integers(1, 256, (6, 5))], -1).astype(np.uint8)
    img.save_image(data / 255.0, tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(img.load_image(tmp_path / "la.png", alpha="keep"), data / np.float32(255.0))
    img.check_writable_as(tmp_path / "la.tif", 2)
    with pytest.raises(FinerError, match="cannot write this LA image to .*la.jpg: the .jpg format has no LA or RGBA"):
        img.check_writable_as(tmp_path / "la.jpg", 2)
    img.check_writable_as(tmp_path / "la.bmp", 2)  # no grey and alpha there: written as RGBA
    img.save_image(data / 255.0, tmp_path / "la.bmp")
    assert Image.open(tmp_path / "la.bmp").size == (5, 6)


def test_a_colour_key_is_transparency(tmp_path):
    """A PNG whose one colour (RGB) or grey level (L) is marked transparent is composited as any alpha (it was
    read opaque unless it had a palette)."""
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = [10, 20, 30]
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    grey = np.zeros((4, 4), np.uint8)
    grey[0, 0] = 200
    Image.fromarray(grey).save(tmp_path / "grey.png", transparency=0)
    for name, channels, corner in (("rgb.png", 3, [10, 20, 30]), ("grey.png", 1, [200])):
        white = img.load_image(tmp_path / name)
        assert white.shape == (4, 4, channels)
        np.testing.assert_allclose(white[0, 0], np.array(corner) / 255.0, rtol=1e-6)
        assert (white[1:] == 1.0).all()  # the keyed pixels: over white
        assert img.load_image(tmp_path / name, alpha="keep").shape == (4, 4, channels + 1)
