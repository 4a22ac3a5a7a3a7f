"""``finer fit nerf`` and ``finer render nerf``: one radiance-field run in its own folder.

The folder holds ``config.json``, ``curve.csv`` (loss and training PSNR per step),
``metrics.json`` (test-view PSNR/SSIM/LPIPS, per view and mean, time per step),
``test/`` (each evaluated test view: rendering beside ground truth, and depth) and
``checkpoint.pt`` (weights plus everything needed to rebuild the renderer). ``finer render nerf``
reads the checkpoint alone and writes a turntable GIF of colour and depth.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finer import io
from finer.errors import FinerError, FinerWarning, InterruptedRun
from finer.lpips import available as lpips_available
from finer.metrics import image_metrics, lpips_left_out
from finer.models import count_parameters, plain_numbers
from finer.nn.fused import apply_fused
from finer.runs import _prepare_out, finished, resolve_device
from finer.tasks import nerf as N
from finer.tasks.image import memory_budget, save_image
from finer.train import TrainConfig, curve_columns, fit

NERF_FORMAT = io.NERF_CHECKPOINT_FORMAT
RUN_FILES = ("config.json", "checkpoint.pt", "curve.csv", "metrics.json")
"""What a NeRF run writes besides its test views; ``--overwrite`` deletes these and the earlier run's
test views (those its config.json names), nothing else (a turntable rendered from an earlier run's
checkpoint stays)."""


def _earlier_outputs(out: Path, scene_views: list[str]) -> list[str]:
    """The files of the NeRF run already in ``out``: :data:`RUN_FILES` and its test views, as its config.json
    or its metrics.json names them; where neither names any (both unreadable), the pairs ``test/VIEW.png`` and
    ``test/VIEW_depth.png`` that a run writes, for ``VIEW`` among ``scene_views`` (the test split's names), so
    that no other file of the user's is taken for one."""
    config, metrics = io.read_record(out / "config.json"), io.read_record(out / "metrics.json")
    views = list(config.get("test_views", [])) if config.get("task") == "nerf" else []
    if metrics.get("task") == "nerf" and isinstance(metrics.get("views"), list):
        views += [v.get("view") for v in metrics["views"] if isinstance(v, dict)]
    if not views:
        views = [name for name in scene_views
                 if (out / "test" / f"{name}.png").is_file() and (out / "test" / f"{name}_depth.png").is_file()]
    return _outputs(sorted({name for name in views if isinstance(name, str) and name and "/" not in name}))


def _outputs(test_views: list[str]) -> list[str]:
    """The files of a NeRF run whose test views are ``test_views``, relative to its folder."""
    return [*RUN_FILES, *(f"test/{name}{end}" for name in test_views for end in (".png", "_depth.png"))]


def _check_scene_untouched(scene, out: Path, written: list[str], splits) -> None:
    """Refuse an ``out`` where a file the run writes or removes (``written``, relative to ``out``) is one
    of the scene's: its transforms files or the views it read (a scene folder named ``test`` inside ``out``
    holds ``test/r_0.png`` as the run's test pictures do)."""
    inputs = {Path(scene, f"transforms_{split}.json").resolve() for split in ("train", "test")}
    inputs |= {Path(f).resolve() for views in splits for f in views.files}
    for name in written:
        if (out / name).resolve() in inputs:
            raise FinerError(f"--out {out}: the run's {name} is the scene's {out / name}, which it would replace "
                             "or delete; choose another --out")


@dataclass
class NeRFRunConfig:
    scene: str
    """Blender-format scene folder (transforms_{train,test}.json and images)."""
    model: str = "finer"
    model_options: dict[str, Any] = field(default_factory=dict)
    views: int = 25
    """Training views, spread evenly over the training split."""
    downscale: int = 2
    """Image downscaling factor (2 turns the 400-px shared lego into the paper's 200 px)."""
    steps: int = 2000
    rays: int = 1024
    """Rays per step."""
    samples: int = 64
    """Stratified samples per ray."""
    fine: int = 64
    """Importance samples per ray added from the coarse weights (0: stratified only)."""
    lr: float = 5e-4
    width: int = 182
    test_views: int = 8
    """Test views evaluated at the end, spread over the test split."""
    seed: int = 0
    device: str = "auto"
    fused: str = "auto"
    chunk: int | None = None
    """Rays per forward pass when rendering whole views (None: finer.tasks.points_per_pass points, by device)."""

    def __post_init__(self):
        plain_numbers(self)  # (NumPy scalars)

    def validate(self) -> None:
        for name in ("views", "downscale", "steps", "rays", "samples", "width", "test_views", "chunk"):
            value = getattr(self, name)
            if name == "chunk" and value is None:
                continue
            if not isinstance(value, int) or value <= 0:
                raise FinerError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.fine, int) or self.fine < 0:
            raise FinerError(f"fine must be zero or a positive integer, got {self.fine!r}")
        if self.fine and self.samples < 3:
            raise FinerError(f"fine samples are drawn between the coarse ones, which takes samples >= 3; got samples "
                             f"{self.samples} with fine {self.fine} (give more samples, or fine 0)")
        if not self.lr > 0:
            raise FinerError(f"lr must be positive, got {self.lr!r}")
        fixed = {"width": "--width", "lr": "--lr", "seed": "--seed",
                 "hidden_layers": "no option: the networks' depths are fixed",
                 "in_features": "no option: the networks' inputs and outputs are the radiance field's",
                 "out_features": "no option: the networks' inputs and outputs are the radiance field's",
                 "target_range": "no option: the colour network ends in a sigmoid, whose range is [0, 1]"}
        clash = sorted(set(self.model_options) & set(fixed))
        if clash:
            raise FinerError(f"--option {clash[0]}=... does not apply to a radiance field ({fixed[clash[0]]})")


def build_renderer(cfg: NeRFRunConfig | dict) -> N.Renderer:
    c = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    field_ = N.RadianceField(c["model"], width=c["width"], seed=c["seed"], **c["model_options"])
    return N.Renderer(field_, samples=c["samples"], fine=c["fine"], seed=c["seed"])


STEP_BYTES_PER_UNIT = 28
"""Bytes a training step holds for each sample point, hidden unit and activated layer (twice that for
complex layers), the most of the kinds of layers: measured on the CPU at the default width, FINER 12 compiled,
19-20 plain and 23-25 fused without compiling; Gauss 20-22; WIRE 26 plain (counting its complex units twice)."""


def _check_memory(renderer: N.Renderer, cfg: NeRFRunConfig, device: torch.device) -> None:
    """Refuse, before training, a step (``rays x (samples + fine)`` points with gradients) or a rendering
    pass (``chunk`` rays without) that would not fit in the memory a run may use."""
    nets = [renderer.field.density, renderer.field.colour]
    per_point = sum(net.config.hidden_width() * (net.config.hidden_layers + 1) * (2 if net.config.complex_weights
                                                                                   else 1) for net in nets)
    points = cfg.samples + cfg.fine
    budget = memory_budget(device)
    step = cfg.rays * points * per_point * STEP_BYTES_PER_UNIT
    if step > budget:
        raise FinerError(f"a step of {cfg.rays} rays x {points} samples needs about {step / 2**30:.1f} GiB "
                         f"(> {budget / 2**30:.1f} GiB available); use fewer --rays, --samples or --fine")
    render = (cfg.chunk or 0) * points * per_point * STEP_BYTES_PER_UNIT / 4  # (no gradients: a quarter)
    if render > budget:
        raise FinerError(f"rendering {cfg.chunk} rays x {points} samples at once needs about "
                         f"{render / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB available); use a smaller chunk")


def fit_nerf(cfg: NeRFRunConfig, out, *, progress: bool = True, overwrite: bool = False, log=io.quiet) -> dict:
    """Fit a Blender scene; returns the metrics (also in ``out/metrics.json``) and the run folder (``out``)."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, scene=str(Path(cfg.scene).resolve()))  # recorded: found from any folder
    out = Path(out)
    _prepare_out(out, overwrite, create=False, kind="nerf")
    io.check_out(out / "test", folder=True)  # where the test views go, at the end: checked now
    if out.resolve() == Path(cfg.scene).resolve():
        raise FinerError(f"output folder {out} is the scene folder, whose test/ views the run would write over; "
                         "choose another --out")
    device = resolve_device(cfg.device)
    train = N.load_views(cfg.scene, "train", views=cfg.views, downscale=cfg.downscale)
    test = N.load_views(cfg.scene, "test", views=cfg.test_views, downscale=cfg.downscale)
    _check_scene_untouched(cfg.scene, out, [*_earlier_outputs(out, N.split_names(cfg.scene, "test")),
                                            *_outputs(test.names)], (train, test))
    asked = (("views", cfg.views, "train", train), ("test-views", cfg.test_views, "test", test))
    notes = [f"{flag} {n}: the {split} split of {cfg.scene} has {len(got.names)} views; using all of them"
             for flag, n, split, got in asked if n > len(got.names)]
    for note in notes:
        warnings.warn(note, FinerWarning, stacklevel=2)
    renderer = build_renderer(cfg).to(device)
    fused = apply_fused(renderer, cfg.fused, cfg.steps)
    task = N.NeRFTask(train, cfg.rays, device, seed=cfg.seed)
    rays_note = (f"--rays {cfg.rays}: the {len(train.names)} training views hold {task.rays_per_step} rays; "
                 f"using {task.rays_per_step} per step") if task.rays_per_step < cfg.rays else ""
    if rays_note:
        warnings.warn(rays_note, FinerWarning, stacklevel=2)
        cfg = dataclasses.replace(cfg, rays=task.rays_per_step)  # the records state what was used
    _check_memory(renderer, cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    io.warn_stale_outputs(out, "the network of the run this one overwrites")
    # an overwritten run's files: none may pass for this run's
    io.remove_outputs(out, _earlier_outputs(out, N.split_names(cfg.scene, "test")))
    io.write_json(out / "config.json", {
        "task": "nerf", "run": dataclasses.asdict(cfg), "train_views": train.names, "test_views": test.names,
        **({"views_note": "; ".join(notes)} if notes else {}), **({"rays_note": rays_note} if rays_note else {}),
        "view_height": train.height, "view_width": train.width, "focal": train.focal, "near": renderer.near,
        "far": renderer.far, "bound": renderer.field.bound, "activations": fused,
        "versions": {"torch": torch.__version__, "python": platform.python_version()}})
    running = {"task": "nerf", "model": cfg.model, "status": "running", "steps": 0, "steps_planned": cfg.steps}
    io.write_json(out / "metrics.json", running)
    log(f"{len(train.names)} training views of {train.width}x{train.height}, {task.rays.shape[0]} rays; "
        f"{cfg.rays} rays x ({cfg.samples} + {cfg.fine}) samples per step")

    def save(state, snapshot):
        payload = {"format": NERF_FORMAT, "config": dataclasses.asdict(cfg), "model": snapshot["model"],
                   "optimizer": snapshot["optimizer"], "fit": {"step": state.step, "status": state.status},
                   "camera": {"height": train.height, "width": train.width, "focal": train.focal}}
        io.atomic_write(out / "checkpoint.pt", lambda tmp: torch.save(payload, tmp))

    train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, eval_every=0, checkpoint_every=max(cfg.steps // 4, 1),
                            log_every=25)
    with io.failure_recorded(out / "metrics.json"):  # not left saying "running" after an error
        state = fit(renderer, task, train_cfg, on_checkpoint=save, progress=progress, desc=f"nerf/{cfg.model}")
        io.write_csv(out / "curve.csv", state.history, curve_columns(task))
        if state.status == "interrupted":  # stopped as asked, after the current step: no minutes of rendering
            metrics = {**running, "status": "interrupted", "steps": state.step, "message": state.message,
                       "params": count_parameters(renderer), "width": cfg.width, "seed": cfg.seed,
                       "seconds": round(state.train_seconds, 2), "test_psnr": None,
                       "test_note": "interrupted: the test views are rendered and scored after a full fit"}
            io.write_json(out / "metrics.json", metrics)
            return finished(state, out, metrics, go_on=(
                f"{out} keeps the network of step {state.step} (checkpoint.pt; `finer render nerf {out}` renders it), "
                "unscored; this kind of run is not resumed: fit it again with --overwrite to train it fully"))
        io.write_json(out / "metrics.json", {**running, "steps": state.step, "stage": "rendering the test views"})
        try:
            metrics = _test_and_record(cfg, renderer, state, test, len(train.names), fused, device, out)
        except KeyboardInterrupt:
            raise InterruptedRun(f"interrupted while rendering the test views; {out} keeps the network of step "
                                 f"{state.step} (checkpoint.pt; `finer render nerf {out}` renders it), "
                                 "unscored") from None
    return finished(state, out, metrics)


def _test_and_record(cfg: NeRFRunConfig, renderer, state, test, train_views: int, fused: dict, device,
                     out: Path) -> dict:
    """Render the test views, score them, write their pictures and ``metrics.json``; returns the metrics."""
    renderer.eval()
    views, t0 = [], time.perf_counter()
    with_lpips = lpips_available()  # the weights are an optional install: without them, no LPIPS, no crash
    (out / "test").mkdir(exist_ok=True)
    for image, pose, name in zip(test.images, test.poses, test.names):
        view = renderer.render_view(test.height, test.width, test.focal, torch.from_numpy(pose).to(device), cfg.chunk)
        pred = view["rgb"].clamp(0, 1).cpu().numpy()
        scores = image_metrics(pred, image, with_lpips=with_lpips)
        views.append({"view": name, **scores})
        save_image(np.concatenate([pred, image], axis=1), out / "test" / f"{name}.png")
        save_image(_depth_picture(view, renderer.near, renderer.far),
                   out / "test" / f"{name}_depth.png")
    metrics = {
        "task": "nerf", "model": cfg.model, "status": state.status, "steps": state.step, "steps_planned": cfg.steps,
        "params": count_parameters(renderer), "width": cfg.width, "seed": cfg.seed,
        "test_psnr": float(np.mean([v["psnr"] for v in views])),
        "test_ssim": float(np.mean([v["ssim"] for v in views])),
        "test_lpips": (float(np.mean([v["lpips"] for v in views])) if all(v.get("lpips") is not None for v in views)
                       else None),
        "test_lpips_note": lpips_left_out(test.images.shape[1:], with_lpips),
        "seconds": round(state.train_seconds, 2),
        "seconds_per_step": round(state.train_seconds / max(state.step, 1), 4),
        "render_seconds_per_view": round((time.perf_counter() - t0) / len(views), 2), "device": str(device),
        "fused": fused["fused"], "views": views, "train_views": train_views, "view_height": test.height,
        "view_width": test.width, "rays_per_step": cfg.rays, "samples": cfg.samples, "fine": cfg.fine, "lr": cfg.lr,
        "message": state.message or None,
        "pictures": {"test/VIEW.png": "rendering (left) beside the ground truth (right)",
                     "test/VIEW_depth.png": f"rendered depth, grey from white (near, {renderer.near:g}) to black "
                                            f"(far, {renderer.far:g}, and empty space)"},
    }
    io.write_json(out / "metrics.json", metrics)
    return metrics


def _depth_picture(view: dict, near: float, far: float) -> np.ndarray:
    """A rendered view's depth as grey (near = white, far = black), ``(H, W, 1)`` in [0, 1]; what a ray
    sees through (1 - opacity) counts as at ``far``, so empty space is black, not taken for near."""
    depth = (view["depth"] + (1.0 - view["opacity"]) * far).cpu().numpy()
    return np.clip((far - depth) / (far - near), 0.0, 1.0)[..., None]


def load_renderer(checkpoint, device) -> tuple[N.Renderer, dict]:
    _, payload = io.read_payload(checkpoint, NERF_FORMAT)
    renderer = build_renderer(payload["config"])
    renderer.load_state_dict(payload["model"])
    return renderer.to(device).eval(), payload


TURNTABLE_FILES = ("turntable.gif", "turntable_depth.gif")


def render_nerf(checkpoint, *, frames: int = 60, out=None, device: str = "auto", scale: float = 1.0,
                radius: float = 4.0311, elevation: float = 30.0, fps: int = 20, progress: bool = True,
                overwrite: bool = False) -> Path:
    """A turntable around the scene: ``turntable.gif`` (colour) and ``turntable_depth.gif`` in ``out``
    (default: the run's ``turntable/``, whose earlier turntables are replaced; those of a given ``out`` only
    with ``overwrite``); returns the first.

    Pillow stores consecutive identical frames once, with their durations summed, so a GIF of a scene that
    looks the same from several angles counts fewer frames than ``frames`` but plays for as long."""
    from PIL import Image
    from tqdm import tqdm

    if frames < 1:
        raise FinerError(f"frames must be >= 1, got {frames}")
    if not scale > 0:
        raise FinerError(f"scale must be positive, got {scale}")
    if not -90.0 <= elevation <= 90.0:  # also refuses NaN
        raise FinerError(f"elevation is in degrees, from -90 to 90; got {elevation}")
    if out:
        if Path(out).suffix.lower() in (".gif", ".png", ".jpg", ".mp4"):
            raise FinerError(f"--out {out} names a file; it is the folder that gets turntable.gif and "
                             "turntable_depth.gif")
        io.check_claim(out, TURNTABLE_FILES, overwrite, "turntable")
    dev = resolve_device(device)
    renderer, payload = load_renderer(checkpoint, dev)
    cam = payload["camera"]
    h, w = max(1, round(cam["height"] * scale)), max(1, round(cam["width"] * scale))
    need, budget = h * w * (4 * frames + 4 * 8), memory_budget(torch.device("cpu"))  # 8-bit frames, one float view
    if need > budget:
        raise FinerError(f"{frames} frames of {w}x{h} need about {need / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB "
                         "available); use a smaller --scale or fewer --frames")
    focal = cam["focal"] * w / cam["width"]  # (the width as rounded: the field of view stays the run's)
    ckpt = Path(checkpoint)
    out = Path(out) if out else (ckpt if ckpt.is_dir() else ckpt.parent) / "turntable"
    out.mkdir(parents=True, exist_ok=True)
    colour, depth = [], []
    for pose in tqdm(N.orbit_poses(frames, radius, elevation), desc="turntable", disable=not progress, leave=False):
        view = renderer.render_view(h, w, focal, torch.from_numpy(pose).to(dev), payload["config"].get("chunk"))
        colour.append(Image.fromarray((view["rgb"].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)))
        d = _depth_picture(view, renderer.near, renderer.far)[..., 0]
        depth.append(Image.fromarray((d * 255 + 0.5).astype(np.uint8)))
    duration = max(1, round(1000 / fps))
    for frames_, name in zip((colour, depth), TURNTABLE_FILES):
        io.atomic_write(out / name, lambda tmp, f=frames_: f[0].save(tmp, format="GIF", save_all=True,
                                                                       append_images=f[1:], duration=duration, loop=0))
    return out / "turntable.gif"

