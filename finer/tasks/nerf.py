"""Neural radiance fields on Blender-format scenes, in plain PyTorch.

The pieces are pure functions (camera rays, stratified and importance sampling, volume rendering
of any field given as a callable) plus two small modules: :class:`RadianceField`, a density network
and a colour network built from the model registry (so FINER, SIREN, WIRE, Gauss and PE-MLP all
plug in), and :class:`Renderer`, which turns a batch of rays into colours and is what the generic
training loop optimises.

Conventions (WIRE's setting, which the paper follows): Blender cameras look down their -z axis with +y
up; rays go through pixel centres; RGBA images are composited on a white background and the
renderer composites the leftover transmittance on white too (one departure from NeRF's and WIRE's
renderer: the last sample's interval ends at ``far`` instead of being unbounded, see :func:`composite`);
points are divided by ``bound``
(1.5 for the synthetic scenes) so the networks see coordinates in about [-1, 1]; samples lie
between ``near = 2`` and ``far = 6``. Colour does not depend on the viewing direction (an
assumption: the paper's description of its colour network lists no direction input).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from finer.errors import FinerError
from finer.tasks.image import to_float


# -- data -----------------------------------------------------------------------------------------
@dataclass
class Views:
    """Images ``(V, H, W, 3)`` in [0, 1], camera-to-world matrices ``(V, 4, 4)``, focal in pixels."""

    images: np.ndarray
    poses: np.ndarray
    focal: float
    names: list[str]
    files: list[Path] = field(default_factory=list)
    """The image files read, one a view (empty for views made otherwise)."""

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]


def spread(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when ``count`` is None)."""
    if count is None or count >= total:
        return list(range(total))
    if count < 1:
        raise FinerError(f"the number of views must be >= 1, got {count}")
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def _frame_pose(frame, index: int, meta_path: Path) -> np.ndarray:
    """A frame's camera-to-world matrix, checked: ``{"file_path": ..., "transform_matrix": 4 x 4}``."""
    if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
        raise FinerError(f"{meta_path}: frame {index} has no file_path")
    try:
        pose = np.asarray(frame.get("transform_matrix"), dtype=np.float32)
    except (TypeError, ValueError):
        pose = np.empty(0)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise FinerError(f"{meta_path}: frame {index} ({frame['file_path']}) needs a transform_matrix of 4 x 4 "
                         "finite numbers")
    singular = np.linalg.svd(pose[:3, :3].astype(np.float64), compute_uv=False)  # scale-free: scaled poses pass
    if not singular[-1] > 1e-6 * singular[0]:
        raise FinerError(f"{meta_path}: frame {index} ({frame['file_path']}) has a transform_matrix whose rotation "
                         "(the upper-left 3 x 3) is singular: it gives the camera no orientation")
    return pose


VIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Endings that make a frame's ``file_path`` a whole file name; any other path gets ``.png`` appended."""


def view_file(scene: Path, file_path: str) -> tuple[Path, str]:
    """The image file of a frame and the view's name. Blender scenes name their frames without the
    ``.png``, which the official loaders always append (``./train/r_0`` is ``train/r_0.png``, and so is
    ``./train/r_0.v1``, named ``r_0.v1``); a path that ends in an image suffix is taken as it is."""
    path = Path(file_path)
    if path.suffix.lower() in VIEW_SUFFIXES:
        return scene / path, path.stem
    return scene / f"{file_path}.png", path.name


def split_names(scene: str | Path, split: str) -> list[str]:
    """The names of all the views of a split, as :func:`load_views` names them (empty if its file is unreadable)."""
    try:
        frames = json.loads((Path(scene) / f"transforms_{split}.json").read_text())["frames"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [view_file(Path(scene), f["file_path"])[1] for f in frames
            if isinstance(f, dict) and isinstance(f.get("file_path"), str)]


def load_views(scene: str | Path, split: str, *, views: int | None = None, downscale: int = 1) -> Views:
    """Read ``transforms_{split}.json`` and its images (a subset of ``views`` spread over the split)."""
    from PIL import Image

    scene = Path(scene)
    meta_path = scene / f"transforms_{split}.json"
    if not scene.exists():
        raise FinerError(f"scene folder not found: {scene}")
    if not meta_path.is_file():
        raise FinerError(f"not a Blender scene folder (no {meta_path.name}): {scene}")
    try:
        meta = json.loads(meta_path.read_text())
        frames, angle = meta["frames"], float(meta["camera_angle_x"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise FinerError(f"cannot read {meta_path}: {exc}") from None
    if not 0 < angle < math.pi:  # (also NaN)
        raise FinerError(f"{meta_path}: camera_angle_x is the horizontal field of view in radians, between 0 and "
                         f"pi; got {angle}")
    if downscale < 1:
        raise FinerError(f"downscale must be >= 1, got {downscale}")
    if not isinstance(frames, list) or not frames:
        raise FinerError(f"{meta_path} lists no frames")
    images, poses, names, files, size = [], [], [], [], None
    for i in spread(len(frames), views):
        frame = frames[i]
        pose = _frame_pose(frame, i, meta_path)
        path, name = view_file(scene, frame["file_path"])
        try:
            with Image.open(path) as im:
                # 16-bit or float grey: scaled by its format, then read at 8 bits as the RGBA views are
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    im = Image.fromarray((to_float(im, source=str(path))[..., 0] * 255 + 0.5).astype(np.uint8), "L")
                size = size or im.size
                if im.size != size:
                    raise FinerError(f"view {path} is {im.width}x{im.height}, the split's first view "
                                     f"{size[0]}x{size[1]}: the views of a scene share one size")
                im = im.convert("RGBA")
                if downscale > 1:
                    if im.width < downscale or im.height < downscale:
                        raise FinerError(f"downscale {downscale} leaves nothing of the {im.width}x{im.height} "
                                         f"view {path}; use at most {min(im.width, im.height)}")
                    im = im.resize((im.width // downscale, im.height // downscale), Image.Resampling.BOX)
                rgba = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise FinerError(f"cannot read view {path}: {exc}") from None
        images.append(rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:]))  # on white
        poses.append(pose)
        names.append(name)
        files.append(path)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise FinerError(f"{meta_path}: several views are named {', '.join(repeated)}; "
                         "their pictures and records would be confused: give the views distinct file names")
    width = images[0].shape[1]
    return Views(np.stack(images), np.stack(poses), 0.5 * width / math.tan(0.5 * angle), names, files)


# -- rays and samples -------------------------------------------------------------------------------
def camera_rays(height: int, width: int, focal: float, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Origins and unit directions ``(H*W, 3)`` of the rays through the pixel centres, row-major."""
    j, i = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=c2w.device),
                          torch.arange(width, dtype=torch.float32, device=c2w.device), indexing="ij")
    cam = torch.stack([(i + 0.5 - width / 2) / focal, -(j + 0.5 - height / 2) / focal, -torch.ones_like(i)], -1)
    dirs = cam.reshape(-1, 3) @ c2w[:3, :3].T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(dirs), dirs


def stratified(n_rays: int, near: float, far: float, samples: int, *, perturb: bool, device,
               generator: torch.Generator | None = None) -> Tensor:
    """Depths ``(R, S)``: one per equal bin of ``[near, far]``, uniform in it (or the centre)."""
    edges = torch.linspace(near, far, samples + 1, device=device)
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    u = torch.rand(n_rays, samples, device=device, generator=generator) if perturb else torch.full(
        (n_rays, samples), 0.5, device=device)
    return lower + width * u


def importance(t: Tensor, weights: Tensor, samples: int, *, perturb: bool,
               generator: torch.Generator | None = None) -> Tensor:
    """Depths ``(R, samples)`` drawn from the piecewise-constant density of ``weights`` over the bins
    around ``t`` (inverse CDF), as NeRF's hierarchical sampling does."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    w = weights[:, 1:-1] + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, S-1)
    u = torch.rand(t.shape[0], samples, device=t.device, generator=generator) if perturb else \
        torch.linspace(0.0, 1.0, samples, device=t.device).expand(t.shape[0], samples)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    lo, hi = (idx - 1).clamp(0, cdf.shape[-1] - 1), idx.clamp(0, cdf.shape[-1] - 1)
    c_lo, c_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    m_lo, m_hi = mids.gather(-1, lo), mids.gather(-1, hi)
    frac = torch.where(c_hi - c_lo > 1e-8, (u - c_lo) / (c_hi - c_lo), torch.zeros_like(u))
    return m_lo + frac * (m_hi - m_lo)


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, *, far: float, background: float = 1.0) -> dict[str, Tensor]:
    """Volume rendering of ``sigma (R, S)``, ``rgb (R, S, 3)`` at depths ``t (R, S)`` along unit rays
    that end at ``far``, with ``background`` behind them.

    ``alpha_i = 1 - exp(-sigma_i delta_i)`` with ``delta_i = t_{i+1} - t_i`` and, for the last sample,
    ``far - t_S``, ``T_i = prod_{j<i} (1 - alpha_j)``, weights ``T_i alpha_i``; returns ``rgb``,
    ``depth`` (expected depth), ``opacity`` and ``weights``. The last interval is finite: with an
    unbounded one (NeRF's 1e10, made for a ReLU density that can be 0) the soft-plus density, never
    0, makes every ray opaque at its last sample and the background unreachable.
    """
    delta = torch.cat([t[:, 1:] - t[:, :-1], (far - t[:, -1:]).clamp(min=0)], -1)
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans
    opacity = weights.sum(-1)
    colour = (weights[..., None] * rgb).sum(-2) + (1.0 - opacity[..., None]) * background
    return {"rgb": colour, "depth": (weights * t).sum(-1), "opacity": opacity, "weights": weights}


def render_rays(field, origins: Tensor, dirs: Tensor, *, near: float, far: float, samples: int, fine: int = 0,
                perturb: bool = False, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Render rays through ``field(points) -> (sigma, rgb)``: ``samples`` stratified depths, then
    (``fine > 0``) ``fine`` more drawn from the coarse weights, the field evaluated on all of them.

    One field serves both passes: the coarse pass only places samples, so it runs without gradient.
    """
    t = stratified(origins.shape[0], near, far, samples, perturb=perturb, device=origins.device, generator=generator)
    if fine > 0:
        with torch.no_grad():
            sigma, rgb = field(origins[:, None] + dirs[:, None] * t[..., None])
            weights = composite(sigma, rgb, t, far=far)["weights"]
            t_fine = importance(t, weights, fine, perturb=perturb, generator=generator)
        t, _ = torch.sort(torch.cat([t, t_fine], -1), -1)
    sigma, rgb = field(origins[:, None] + dirs[:, None] * t[..., None])
    return composite(sigma, rgb, t, far=far)


# -- the field ------------------------------------------------------------------------------------
class RadianceField(nn.Module):
    """``points (..., 3) -> (sigma (...), rgb (..., 3))``.

    A density network ``3 -> width -> ... -> 1 + width`` (``density_layers`` activated layers and a
    linear one; its first output through soft-plus is the density, the rest is a feature) and a
    colour network ``width -> ... -> 3`` (``colour_layers`` activated layers and a linear one, then
    a sigmoid), both built by :func:`finer.build_model` from one method. PE-MLP encodes the points
    (10 octaves); its colour network is a plain ReLU MLP on the feature.
    """

    def __init__(self, method: str, *, width: int = 182, density_layers: int = 3, colour_layers: int = 3,
                 bound: float = 1.5, seed: int = 0, **options):
        super().__init__()
        from finer.models import build_model

        if bound <= 0:
            raise FinerError(f"bound must be positive, got {bound}")
        self.method, self.bound, self.width = method, bound, width
        self.density = build_model(method, 3, 1 + width, seed=seed, width=width, hidden_layers=density_layers - 1,
                                   **options)
        colour_options = {**options, "n_freqs": 0} if method == "pemlp" else options
        self.colour = build_model(method, width, 3, seed=seed + 1, width=width, hidden_layers=colour_layers - 1,
                                  **colour_options)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        out = self.density(points / self.bound)
        sigma = F.softplus(out[..., 0])
        rgb = torch.sigmoid(self.colour(out[..., 1:]))
        return sigma, rgb


class Renderer(nn.Module):
    """``rays (R, 6) = [origin, direction] -> colours (R, 3)``: what the training loop optimises."""

    def __init__(self, field: RadianceField, *, near: float = 2.0, far: float = 6.0, samples: int = 64,
                 fine: int = 64, seed: int = 0):
        super().__init__()
        self.field, self.near, self.far, self.samples, self.fine = field, near, far, samples, fine
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def render(self, rays: Tensor, perturb: bool | None = None) -> dict[str, Tensor]:
        perturb = self.training if perturb is None else perturb
        return render_rays(self.field, rays[:, :3], rays[:, 3:], near=self.near, far=self.far, samples=self.samples,
                           fine=self.fine, perturb=perturb, generator=self.generator(rays.device))

    def forward(self, rays: Tensor) -> Tensor:
        return self.render(rays)["rgb"]

    @torch.no_grad()
    def render_view(self, height: int, width: int, focal: float, c2w: Tensor,
                    chunk: int | None = None) -> dict[str, Tensor]:
        """A whole view, ``chunk`` rays at a time (default: :func:`finer.tasks.points_per_pass` points over
        the samples of a ray), without perturbation: ``rgb (H, W, 3)``, ``depth (H, W)`` and ``opacity (H, W)``
        (the expected depth is of the ray's opaque part: see :func:`composite`)."""
        from finer.tasks import points_per_pass

        chunk = chunk or max(1, points_per_pass(c2w.device) // (self.samples + self.fine))
        origins, dirs = camera_rays(height, width, focal, c2w)
        rays = torch.cat([origins, dirs], -1)
        parts = [self.render(rays[s:s + chunk], perturb=False) for s in range(0, rays.shape[0], chunk)]
        rgb = torch.cat([p["rgb"] for p in parts]).reshape(height, width, 3)
        depth, opacity = (torch.cat([p[k] for p in parts]).reshape(height, width) for k in ("depth", "opacity"))
        return {"rgb": rgb, "depth": depth, "opacity": opacity}


# -- the training task ----------------------------------------------------------------------------
class NeRFTask:
    """Random batches of rays from all training pixels; MSE on colour."""

    def __init__(self, views: Views, rays_per_step: int, device, seed: int = 0):
        rays, colours = [], []
        for image, pose in zip(views.images, views.poses):
            o, d = camera_rays(views.height, views.width, views.focal, torch.from_numpy(pose))
            rays.append(torch.cat([o, d], -1))
            colours.append(torch.from_numpy(image.reshape(-1, 3)))
        self.rays = torch.cat(rays).to(device)
        self.colours = torch.cat(colours).to(device)
        self.rays_per_step = min(rays_per_step, self.rays.shape[0])
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, self.rays.shape[0], (self.rays_per_step,), device=self.device, generator=self.generator)
        return self.rays[idx], self.colours[idx]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return torch.mean((pred - target) ** 2)

    def step_metrics(self, loss: float) -> dict[str, float]:
        from finer.metrics import psnr_from_mse

        return {"train_psnr": psnr_from_mse(loss)}


def orbit_poses(frames: int, radius: float = 4.0311, elevation_deg: float = 30.0) -> np.ndarray:
    """Camera-to-world matrices ``(frames, 4, 4)`` circling the origin at ``radius``, looking at it
    from ``elevation_deg`` above the horizon (the Blender scenes' test path), +z up."""
    poses = []
    phi = math.radians(elevation_deg)
    for theta in np.linspace(0.0, 2 * math.pi, frames, endpoint=False):
        eye = np.array([radius * math.cos(phi) * math.cos(theta), radius * math.cos(phi) * math.sin(theta),
                        radius * math.sin(phi)])
        back = eye / np.linalg.norm(eye)  # the camera looks along -back
        right = np.cross([0.0, 0.0, 1.0], back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        pose = np.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, eye
        poses.append(pose)
    return np.asarray(poses, dtype=np.float32)
