"""2-D image fitting: loading, coordinates, the training task, and prediction.

Coordinates: pixel centres on ``linspace(-1, 1)`` per axis, as ``(x, y)`` with x along the width.
With ``aspect="preserve"`` the longer axis spans [-1, 1] and the shorter one proportionally less.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from finer.errors import ConfigError, CropError, FinerError
from finer.metrics import psnr_from_mse

ALPHA_CHOICES = ("white", "black", "keep", "drop")
ASPECT_CHOICES = ("stretch", "preserve")
DEFAULT_IMAGE = "skimage:astronaut"
"""The image fitted when no path is given: scikit-image's astronaut (512x512 RGB, public domain)."""


# -- loading ---------------------------------------------------------------------------------------
def _parse_hw(value: int | str | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        h, w = value
    elif isinstance(value, int):
        h = w = value
    else:
        parts = str(value).lower().split("x")
        try:
            h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except ValueError:
            raise FinerError(f"{what} must be N or HxW with positive integers, got {value!r}") from None
        if len(parts) > 2:
            raise FinerError(f"{what} must be N or HxW with positive integers, got {value!r}")
    if h <= 0 or w <= 0:
        raise FinerError(f"{what} must be positive, got {value!r}")
    return int(h), int(w)


def _white(im: Image.Image) -> float:
    """The value of white of an integer-mode (``I``, ``I;16``) image, from its format, not its content:
    65535 for 16-bit images (PNG, and PGM, which PIL scales to 16 bits), 255 for a TIFF of 8-bit samples;
    wider TIFF integers have no white, and are refused (signed ones too, as the file is read)."""
    bits = getattr(im, "tag_v2", {}).get(258) if im.mode == "I" else 16  # TIFF BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    if isinstance(bits, int) and bits > 16:
        raise ValueError(f"its samples are {bits}-bit integers, whose white is not defined; save it with 8- or "
                         "16-bit samples (or floats in [0, 1])")
    return 255.0 if bits == 8 else 65535.0


def to_float(im: Image.Image, white: float | None = None, source: str = "the image") -> np.ndarray:
    """PIL image -> float32 ``(H, W, C)`` array in [0, 1], keeping an alpha channel if present.
    ``white``: of an integer-mode image, as :func:`_white` found it in the file (default: its own).
    ``source``: what an error calls the image (a float image must hold finite values in [0, 1])."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        return (np.clip(arr / (white or _white(im)), 0, 1)[..., None]).astype(np.float32)
    if im.mode == "F":
        return _checked_float(np.asarray(im, dtype=np.float32), source)[..., None]
    # a colour key (a palette's transparent entry, or one grey level or colour of an L or RGB PNG) is alpha too
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)
    if im.mode == "L" and has_alpha:
        im = im.convert("LA")
    elif im.mode in ("L", "1"):
        im = im.convert("L")
    elif im.mode == "LA":
        pass
    else:
        im = im.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _apply_alpha(arr: np.ndarray, alpha: str) -> np.ndarray:
    if arr.shape[-1] not in (2, 4):
        return arr
    color, a = arr[..., :-1], arr[..., -1:]
    if alpha == "keep":
        return arr
    if alpha == "drop":
        return color
    background = 1.0 if alpha == "white" else 0.0
    return color * a + background * (1.0 - a)


def memory_budget(device: torch.device) -> int:
    """Bytes a run may use: half the available RAM on CPU, 80% of the free memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(info.get("MemAvailable", info["MemTotal"]) * 0.5)
    except (OSError, KeyError, ValueError):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


def load_image(
    path: str | os.PathLike | None = None,
    *,
    crop: int | str | None = None,
    size: int | None = None,
    alpha: str = "white",
    max_bytes: int | None = None,
) -> np.ndarray:
    """Read an image as a float32 ``(H, W, C)`` array in [0, 1].

    Args:
        path: a PNG/JPEG/... file, or ``None`` (or ``"skimage:NAME"``) for a scikit-image sample.
        crop: centre crop to ``N`` x ``N`` or ``"HxW"`` (applied first).
        size: resize (anti-aliased) so that the longer side is ``size`` pixels.
        alpha: RGBA/LA images: ``"white"`` or ``"black"`` composite over that background
            (default white), ``"keep"`` fits the alpha channel too, ``"drop"`` ignores it.
        max_bytes: refuse images whose decoded float array would exceed this many bytes (default: the
            CPU's :func:`memory_budget`, half the available memory), before decoding them.
    Grey images have one channel, colour images three (four with ``alpha="keep"``).
    """
    if alpha not in ALPHA_CHOICES:
        raise FinerError(f"unknown alpha mode {alpha!r}; choose one of: {', '.join(ALPHA_CHOICES)}")
    path = DEFAULT_IMAGE if path is None else str(path)
    if path.startswith("skimage:"):
        arr = _sample_image(path.split(":", 1)[1])
    else:
        arr = _read_file(Path(path), max_bytes)
    arr = _apply_alpha(arr, alpha)
    if crop is not None:
        h, w = _parse_hw(crop, "crop")
        if h > arr.shape[0] or w > arr.shape[1]:
            raise CropError(f"crop {h}x{w} is larger than the image ({arr.shape[0]}x{arr.shape[1]})")
        top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
        arr = arr[top : top + h, left : left + w]
    if size is not None:
        if not isinstance(size, int) or size <= 0:
            raise FinerError(f"size must be a positive integer, got {size!r}")
        scale = size / max(arr.shape[:2])
        shape = (max(1, round(arr.shape[0] * scale)), max(1, round(arr.shape[1] * scale)))
        needed = shape[0] * shape[1] * arr.shape[2] * 8 * 3  # float64 while resizing, a few copies
        budget = memory_budget(torch.device("cpu")) if max_bytes is None else max_bytes
        if needed > budget:
            raise FinerError(f"size {size} makes the {arr.shape[0]}x{arr.shape[1]} image {shape[0]}x{shape[1]} pixels, "
                             f"about {needed / 2**30:.1f} GiB to resize, more than the {budget / 2**30:.1f} GiB "
                             "available; choose a smaller size")
        if shape != arr.shape[:2]:
            from skimage.transform import resize

            arr = resize(arr, shape + arr.shape[2:], anti_aliasing=scale < 1, preserve_range=True)
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def _sample_image(name: str) -> np.ndarray:
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if name.startswith("_") or fn is None or not callable(fn):
        raise FinerError(f"scikit-image has no sample image {name!r} (try skimage:astronaut)")
    import inspect

    try:
        params = inspect.signature(fn).parameters
        seeded = {"rng": 0} if "rng" in params else {"seed": 0} if "seed" in params else {}
        sample = fn(**seeded)  # a random sample (binary_blobs): the same image at every read
    except Exception as exc:  # a sample fetched on demand (needs pooch and the network), or not an image
        first = (str(exc).splitlines() or [""])[0][:160]
        raise FinerError(f"scikit-image's {name!r} cannot be read as a sample image here ({type(exc).__name__}: "
                         f"{first}); those that ship with it load offline, e.g. skimage:astronaut") from None
    if isinstance(sample, (tuple, list)):
        raise FinerError(f"scikit-image's {name!r} is not one image (it gives {len(sample)} arrays)")
    arr = np.asarray(sample)
    if not (arr.ndim == 2 or (arr.ndim == 3 and 1 <= arr.shape[-1] <= 4)) or arr.size == 0:
        raise FinerError(f"scikit-image's {name!r} is not a 2-D image of up to 4 channels (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr.astype(np.float32) / float(np.iinfo(arr.dtype).max), 0, 1)
    else:
        arr = _checked_float(arr.astype(np.float32), f"skimage:{name}")
    return arr[..., None] if arr.ndim == 2 else arr


def _checked_float(arr: np.ndarray, source: str) -> np.ndarray:
    """A float image's values, which must be finite and in [0, 1] (clipping others would make, say, a float
    image of 0-255 values all white)."""
    if not np.isfinite(arr).all():
        raise FinerError(f"{source} is a float image with {int((~np.isfinite(arr)).sum())} non-finite values "
                         "(NaN or infinite); repair or convert it")
    low, high = float(arr.min()), float(arr.max())
    if low < 0 or high > 1:
        raise FinerError(f"{source} is a float image with values from {low:.4g} to {high:.4g}; float images are read "
                         "as [0, 1] (convert it to 8 or 16 bits, or scale it into [0, 1])")
    return arr


def _read_file(path: Path, max_bytes: int | None = None) -> np.ndarray:
    if not path.exists():
        raise FinerError(f"image file not found: {path}")
    if path.is_dir():
        raise FinerError(f"expected an image file, got a directory: {path}")
    if max_bytes is None:
        max_bytes = memory_budget(torch.device("cpu"))
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # we check the size ourselves, before decoding
    try:
        with Image.open(path) as im:
            w, h = im.size
            needed = w * h * 4 * 4 * 3  # float32, up to 4 channels, a few copies while converting
            if needed > max_bytes:
                raise FinerError(
                    f"image {path} is {w}x{h} pixels: decoding it needs about {needed / 2**30:.1f} GiB, "
                    f"more than the {max_bytes / 2**30:.1f} GiB available; crop or downscale it first"
                )
            im.load()
            white = _white(im) if im.mode.startswith("I") else None  # (the file's tags: before transposing)
            kind = getattr(im, "tag_v2", {}).get(339)  # TIFF SampleFormat, 2: signed integers (int8 read as L)
            if (kind[0] if isinstance(kind, tuple) and kind else kind) == 2:
                raise ValueError("its samples are signed integers, whose white is not defined; save it with "
                                 "unsigned 8- or 16-bit samples (or floats in [0, 1])")
            return to_float(ImageOps.exif_transpose(im), white, str(path))  # as viewers show it (a rotated JPEG)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FinerError(f"cannot read image {path}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = guard  # the caller's process keeps PIL's own guard


def check_image_path(path: str | os.PathLike) -> None:
    """Refuse, before any work, a path whose extension names no image format PIL can write."""
    suffix = Path(path).suffix.lower()
    if Image.registered_extensions().get(suffix) not in Image.SAVE:  # PIL reads some formats it cannot write
        raise FinerError(f"cannot write an image to {path}: PIL writes no format with the extension "
                         f"{suffix or '(none)'!r}; use .png (or .jpg, .tif, ...)")


def check_writable_as(path: str | os.PathLike, channels: int) -> None:
    """Refuse, before any work, a format that cannot hold an image of ``channels`` channels (JPEG has no
    alpha), by writing a 1 x 1 image of that kind to memory."""
    check_image_path(path)
    modes = {1: ["L"], 2: ["LA", "RGBA"], 3: ["RGB"]}.get(channels, ["RGBA"])  # as save_image writes it
    if not any(_takes(path, mode) for mode in modes):
        raise FinerError(f"cannot write this {modes[0]} image to {path}: the {Path(path).suffix} format has no "
                         f"{' or '.join(modes)} images; use .png")


def save_image(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Write a ``(H, W, C)`` array in [0, 1] as an 8-bit PNG (grey, grey and alpha, RGB or RGBA); NaN is written
    as 0."""
    arr = np.clip(np.nan_to_num(np.asarray(arr), nan=0.0), 0.0, 1.0)
    data = (arr * 255.0 + 0.5).astype(np.uint8)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] == 2 and not _takes(path, "LA"):  # (BMP, PPM, QOI hold no grey and alpha)
        data = np.concatenate([data[..., :1]] * 3 + [data[..., 1:]], axis=-1)
    Image.fromarray(data).save(path)  # (H, W, 2): grey and alpha ("LA")


def _takes(path: str | os.PathLike, mode: str) -> bool:
    """Whether the format of ``path``'s extension can hold an image of ``mode`` (PIL writes a 1 x 1 one)."""
    import io as _io

    try:
        Image.new(mode, (1, 1)).save(_io.BytesIO(), format=Image.registered_extensions()[Path(path).suffix.lower()])
    except (OSError, KeyError, ValueError):
        return False
    return True


# -- coordinates -----------------------------------------------------------------------------------
def coordinate_grid(height: int, width: int, aspect: str = "stretch") -> Tensor:
    """Pixel coordinates ``(height * width, 2)`` as ``(x, y)``, row-major (y outer, x inner)."""
    if aspect not in ASPECT_CHOICES:
        raise FinerError(f"unknown aspect mode {aspect!r}; choose one of: {', '.join(ASPECT_CHOICES)}")
    sx = sy = 1.0
    if aspect == "preserve":
        longest = max(height, width)
        sx, sy = width / longest, height / longest
    ys = torch.linspace(-sy, sy, height)
    xs = torch.linspace(-sx, sx, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def to_range(values: Tensor, low: float, high: float) -> Tensor:
    """Map values in [0, 1] to [low, high]."""
    return values * (high - low) + low


def from_range(values: Tensor, low: float, high: float) -> Tensor:
    """Map values in [low, high] back to [0, 1]."""
    return (values - low) / (high - low)


@torch.no_grad()
def predict_image(
    model: torch.nn.Module,
    height: int,
    width: int,
    *,
    target_range: tuple[float, float],
    aspect: str = "stretch",
    chunk: int | None = None,
    device: torch.device | str = "cpu",
    coords: Tensor | None = None,
) -> np.ndarray:
    """Evaluate ``model`` on a ``height x width`` grid in chunks (default: :func:`finer.tasks.points_per_pass`);
    returns ``(H, W, C)`` in [0, 1], clipped. ``coords``: that grid (:func:`coordinate_grid`), if already made."""
    from finer.tasks import points_per_pass

    coords = coordinate_grid(height, width, aspect) if coords is None else coords
    chunk = chunk or points_per_pass(device)
    outs = []
    for start in range(0, coords.shape[0], chunk):
        outs.append(model(coords[start : start + chunk].to(device)).float().cpu())
    values = from_range(torch.cat(outs), *target_range).clamp(0.0, 1.0)
    return values.reshape(height, width, -1).numpy()


# -- the training task -----------------------------------------------------------------------------
@dataclass
class ImageTask:
    """Fit pixel values from coordinates with MSE; full batch unless ``batch_size`` is given.

    ``image`` is ``(H, W, C)`` in [0, 1]; targets are scaled to ``target_range``.
    """

    image: np.ndarray
    target_range: tuple[float, float]
    device: torch.device
    batch_size: int | None = None
    aspect: str = "stretch"
    eval_chunk: int | None = None
    seed: int = 0

    def __post_init__(self):
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or not np.issubdtype(image.dtype, np.floating):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ConfigError(f"ImageTask takes an (H, W, C) float array in [0, 1] (load_image gives one), got {got}")
        if image.size and not (image.min() >= 0.0 and image.max() <= 1.0):  # (also refuses NaN)
            raise ConfigError(f"ImageTask takes values in [0, 1], got {image.min()} to {image.max()} "
                              "(8-bit values? divide by 255)")
        try:
            low, high = (float(v) for v in self.target_range)
        except (TypeError, ValueError):
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"target_range is (low, high) with low < high, got {self.target_range!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"batch_size is a positive number of pixels, or None for all; got {self.batch_size!r}")
        h, w, c = image.shape
        self.height, self.width, self.channels = h, w, c
        self.coords = coordinate_grid(h, w, self.aspect).to(self.device)
        pixels = torch.from_numpy(np.ascontiguousarray(self.image).reshape(-1, c))  # (a view with negative strides)
        self.targets = to_range(pixels, *self.target_range).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        n = h * w
        if self.batch_size is not None and self.batch_size >= n:
            self.batch_size = None

    @property
    def replayable(self) -> bool:
        """Full batch: the same tensors every step, so a step can be recorded as a CUDA graph."""
        return self.batch_size is None

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        if self.batch_size is None:
            return self.coords, self.targets
        idx = torch.randint(
            0, self.coords.shape[0], (self.batch_size,), device=self.device, generator=self.generator
        )
        return self.coords[idx], self.targets[idx]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:  # (broadcasting would fit 1 output to the mean of 3 channels, silently)
            raise ConfigError(f"the model gives {pred.shape[-1]} outputs a pixel, the image has {target.shape[-1]} "
                              f"channels (prediction {tuple(pred.shape)}, targets {tuple(target.shape)}); build the "
                              "model with out_features equal to the image's channels")
        return torch.mean((pred - target) ** 2)

    def train_psnr(self, loss: float) -> float:
        """PSNR on the [0, 1] scale of a training loss (unclipped prediction)."""
        low, high = self.target_range
        return psnr_from_mse(loss / (high - low) ** 2)

    def step_metrics(self, loss: float) -> dict[str, float]:
        return {"train_psnr": self.train_psnr(loss)}

    def predict(self, model: torch.nn.Module) -> np.ndarray:
        return predict_image(
            model,
            self.height,
            self.width,
            target_range=self.target_range,
            aspect=self.aspect,
            chunk=self.eval_chunk,
            device=self.device,
            coords=self.coords,  # already on the device: made once, not at every evaluation
        )

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """PSNR of the clipped full-image prediction (chunked, no gradients)."""
        from finer.metrics import psnr

        was_training = model.training
        model.eval()
        pred = self.predict(model)
        model.train(was_training)
        return {"psnr": psnr(pred, self.image)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def full_batch_bytes(n_pixels: int, width: int, activated_layers: int, complex_weights: bool) -> int:
    """Rough memory of one full-batch training step: saved activations of every layer.

    About eight float32 tensors of ``n_pixels x width`` per activated layer (pre-activation,
    the activation's intermediates, output and their gradients); twice that for complex layers.
    """
    per = n_pixels * width * 4 * 8 * (2 if complex_weights else 1)
    return int(per * activated_layers)


def choose_batch_size(n_pixels: int, bytes_full: int, budget: int) -> int | None:
    """``None`` (full batch) if it fits in ``budget``; else the largest power of two that does."""
    if bytes_full <= budget:
        return None
    per_pixel = bytes_full / n_pixels
    return max(1024, 2 ** int(math.log2(max(1.0, budget / per_pixel))))
