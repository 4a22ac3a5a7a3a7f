"""Image-fitting runs: a run folder in, a fitted model and self-describing outputs out.

A run folder holds ``config.json`` (the resolved config, with the image's absolute path and the
SHA-256 of its file, which ``finer resume`` checks), ``checkpoint.pt`` (weights, optimiser,
progress and everything needed to rebuild the model), ``curve.csv`` (per-step loss/PSNR),
``reconstruction.png``, ``error_map.png``, ``psnr_curve.png`` and ``metrics.json``, whose
``status`` says whether the run is ``complete``, ``interrupted``, ``diverged`` or ``failed``
(``running`` while it trains).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finer import io
from finer.errors import ConfigError, DivergedError, FinerError, FinerWarning, InterruptedRun
from finer.metrics import psnr, ssim
from finer.models import build_model, count_parameters, network_shape, plain_numbers
from finer.nn.fused import FUSED_MODES, apply_fused
from finer.plots import error_map, psnr_curve
from finer.tasks import image as img
from finer.train import PRECISIONS, FitState, TrainConfig, continued_fit, curve_columns, fit, fit_record, graph_problem

DEVICE_CHOICES = ("auto", "cpu", "cuda")
RUN_FILES = ("config.json", "checkpoint.pt", "curve.csv", "metrics.json", "reconstruction.png", "error_map.png",
             "psnr_curve.png")
"""The files an image run writes; ``--overwrite`` deletes these (and only these) before the new run starts."""


@dataclass
class ImageRunConfig:
    """Everything that defines an image fit; saved as ``config.json`` in the run folder."""

    image: str | None = None
    """Path of the image; None fits scikit-image's astronaut."""
    model: str = "finer"
    """A registry name (``finer models`` lists them)."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of the method's defaults (width, hidden_layers, lr, first_bias_scale, ...)."""
    steps: int = 1000
    """Optimisation steps."""
    seed: int = 0
    """Seed of the initialisation and of random pixel batches."""
    crop: str | None = None
    """Centre crop, N or HxW, applied before resizing."""
    size: int | None = None
    """Resize so that the longer side has this many pixels."""
    alpha: str = "white"
    """RGBA images: composite over white/black, keep or drop the alpha channel."""
    aspect: str = "stretch"
    """Coordinates: each axis in [-1, 1] (stretch), or the longer axis only (preserve)."""
    batch_size: int | None = None
    """Pixels per step; None = all pixels (full batch) when they fit in memory."""
    eval_chunk: int | None = None
    """Pixels per forward pass when evaluating (None: finer.tasks.points_per_pass, by device)."""
    eval_every: int = 100
    """Steps between full-image PSNR evaluations."""
    log_every: int = 10
    """Steps between progress updates."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    fused: str = "auto"
    """Activations: compile (fused, compiled), eager (fused), off (plain autograd), or auto
    (compile for runs of 500 steps or more); see finer.nn.fused."""
    precision: str = "fp32"
    """Training arithmetic: fp32, tf32 or bf16 (see finer.train.PRECISIONS); evaluation is float32."""
    cuda_graph: bool = False
    """Record the training step once as a CUDA graph and replay it (CUDA, full batch; see
    finer.train.TrainStep)."""

    def __post_init__(self):
        plain_numbers(self)  # (NumPy scalars)

    def validate(self) -> None:
        for name in ("steps", "eval_chunk", "log_every"):
            value = getattr(self, name)
            if name == "eval_chunk" and value is None:
                continue
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be zero or a positive integer, got {value!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size <= 0):
            raise ConfigError(f"batch-size must be a positive integer, got {self.batch_size!r}")
        if self.fused not in FUSED_MODES:
            raise ConfigError(f"unknown fused mode {self.fused!r}; choose one of: {', '.join(FUSED_MODES)}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.image is not None and not isinstance(self.image, (str, os.PathLike)):
            raise ConfigError(f"image is a file path (or skimage:NAME), got a {type(self.image).__name__}; to fit "
                              "an array, use finer.tasks.image.ImageTask with finer.train.fit")
        if not isinstance(self.model_options, dict):
            raise ConfigError(f"model_options is a dict of model options, got {self.model_options!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer from 0 to 2^32 - 1, got {self.seed!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FinerError("device cuda was asked for, but PyTorch sees no CUDA device")
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


CPUINFO = "/proc/cpuinfo"


def device_name(device: torch.device) -> str:
    """What a report says the work ran on: the GPU's name on CUDA, the processor's on the CPU (its model name
    where Linux gives one: ``platform.processor()`` says only ``x86_64`` there)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith("model name") and ":" in line and line.split(":", 1)[1].strip():
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def default_out_dir(cfg: ImageRunConfig) -> Path:
    """``runs/image-STEM-MODEL-DATE-TIME`` (``-2``, ``-3``, ... after it when runs started in the same second
    already hold that name: a loop of quick fits gets a folder each), made empty here: the name is this
    run's even when another process picks one at the same moment. A long stem is shortened."""
    image = str(cfg.image) if cfg.image else ""
    stem = Path(image).stem if image and not image.startswith("skimage:") else image[8:] or "astronaut"
    stem = stem.encode()[:120].decode(errors="ignore")  # (bytes: a file name's limit is in bytes)
    base = Path("runs") / f"image-{stem}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    out, n = base, 1
    while True:
        try:
            out.mkdir()
            return out
        except FileExistsError:
            n += 1
            out = base.with_name(f"{base.name}-{n}")


KINDS = {"image": "an image run", "sdf": "an SDF run", "nerf": "a NeRF run",
         "image folder": "a folder fit of images (summary.json)",
         "benchmark": "a benchmark's results (results.json or width.json, runs/)"}


def _folder_kind(out: Path) -> str | None:
    """The kind of run whose results ``out`` holds (a key of :data:`KINDS`), or None. A run's config.json
    names it, or else its metrics.json (a stacked fit's images have no config.json; one may be damaged)."""
    kind = _run_kind(out)
    if kind is None:
        task = io.read_record(out / "metrics.json").get("task")
        kind = task if task in ("image", "sdf", "nerf") else None
    if kind is None and isinstance(io.read_record(out / "summary.json").get("runs"), list):
        return "image folder"
    if kind is None and any(isinstance(io.read_record(out / name).get("runs"), list)
                            for name in ("results.json", "width.json")):
        return "benchmark"
    return kind


def check_bench_out(out: Path, bench: str) -> None:
    """A benchmark's ``--out`` must not be a run's folder, nor hold another benchmark's results (``bench``:
    this one's, ``images``, ``width`` or ``sdf``): tables and runs would mix, or replace the others'."""
    out = Path(out)
    kind = _folder_kind(out) if out.is_dir() else None
    if kind not in (None, "benchmark"):
        raise FinerError(f"--out {out} holds {KINDS[kind]}; a benchmark writes its tables and runs into a folder of "
                         "its own: choose another --out")
    rows = io.read_record(out / "results.json").get("runs")
    found = ("width" if isinstance(io.read_record(out / "width.json").get("runs"), list) else
             None if not isinstance(rows, list) or not rows else
             "sdf" if any(isinstance(r, dict) and "shape" in r for r in rows) else "images")
    if found not in (None, bench):
        raise FinerError(f"--out {out} holds the results of `finer bench {found}`; `finer bench {bench}` would "
                         "replace or mix with its tables: choose another --out")


def _prepare_out(out: Path, overwrite: bool, create: bool = True, resumable: bool = False,
                 kind: str = "image") -> None:
    """Check (and with ``create`` make) a run's output folder. ``resumable``: the run is one that
    ``finer resume`` continues (a single image fit), so the error for a used folder suggests it
    when the folder holds such a run. ``kind`` (a key of :data:`KINDS`): the run's; overwriting
    replaces only a run of the same kind, whose files it knows, so that none of another's stay."""
    io.check_out(out, folder=True)
    found = _folder_kind(out) if out.is_dir() else None
    replaces = {kind, "image"} if kind == "image folder" else {kind}  # (a folder fit removes an image run's files)
    if overwrite and found is not None and found not in replaces:
        raise FinerError(f"output folder {out} holds {KINDS[found]}; overwriting replaces {KINDS[kind]} only, "
                         "whose files it knows: choose another --out, or delete the folder first")
    if out.exists() and any(out.iterdir()) and not overwrite:
        hint = ""
        if resumable and (out / "checkpoint.pt").exists() and _run_kind(out) == "image":
            status = _recorded_status(out)
            hint = (f", or train its finished run longer with `finer resume {out} --steps N`" if status == "complete"
                    else "" if status == "diverged" else f", or continue its run with `finer resume {out}`")
        raise FinerError(f"output folder {out} is not empty; choose another --out or pass --overwrite "
                         f"(overwrite=True from Python){hint}")
    if create:
        out.mkdir(parents=True, exist_ok=True)


def precision_note(precision: str, device: torch.device) -> str:
    """What a run computes otherwise than its ``--precision`` says (empty if nothing): tf32 off CUDA."""
    if precision == "tf32" and device.type != "cuda":
        return "tf32 changes only CUDA matrix products: on the CPU this run computes in float32, as fp32 does"
    return ""


class _Run:
    """The pieces of one image run, shared by a fresh fit and a resumed one."""

    def __init__(self, cfg: ImageRunConfig, out: Path, progress: bool, image_file: str | None = None):
        """``image_file``: where to read the image (default ``cfg.image``; a resumed run reads the file its
        first run recorded, wherever the command is run from)."""
        cfg.validate()
        self.cfg, self.out, self.progress = cfg, out, progress
        self.device = resolve_device(cfg.device)
        budget = img.memory_budget(self.device)
        source = image_file or cfg.image
        self.image = img.load_image(source, crop=cfg.crop, size=cfg.size, alpha=cfg.alpha, max_bytes=budget)
        is_file = source is not None and not str(source).startswith("skimage:")
        self.image_file = str(Path(source).resolve()) if is_file else None
        self.image_sha256 = io.file_digest(self.image_file) if is_file else None
        h, w, c = self.image.shape
        self.model = build_model(cfg.model, 2, c, seed=cfg.seed, **cfg.model_options).to(self.device)
        self.fused = apply_fused(self.model, cfg.fused, cfg.steps)
        mcfg = self.model.config
        all_pixels = cfg.batch_size is not None and cfg.batch_size >= h * w
        self.batch_size = None if all_pixels else cfg.batch_size  # all pixels: the full batch
        self.note = ""
        if self.batch_size is None:
            full = img.full_batch_bytes(h * w, mcfg.width, mcfg.hidden_layers + 1, mcfg.complex_weights)
            self.batch_size = img.choose_batch_size(h * w, full, budget)
            if self.batch_size is not None:
                self.note = (
                    f"a full batch of {h}x{w} pixels needs about {full / 2**30:.1f} GiB "
                    f"(> {budget / 2**30:.1f} GiB available): training on random batches of {self.batch_size} pixels"
                )
        self.precision_note = precision_note(cfg.precision, self.device)
        self.note = "; ".join(filter(None, [self.note, self.precision_note]))
        self.task = img.ImageTask(
            self.image,
            tuple(mcfg.target_range),
            self.device,
            batch_size=self.batch_size,
            aspect=cfg.aspect,
            eval_chunk=cfg.eval_chunk,
            seed=cfg.seed,
        )
        self.train_cfg = TrainConfig(
            steps=cfg.steps,
            lr=mcfg.lr,
            log_every=cfg.log_every,
            eval_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every,
            precision=cfg.precision,
            cuda_graph=cfg.cuda_graph,
        )
        problem = cfg.cuda_graph and graph_problem(self.device, self.task)
        if problem:  # before anything is written
            raise ConfigError(problem)

    def resolved(self) -> dict[str, Any]:
        h, w, c = self.image.shape
        return {
            "task": "image",
            "run": dataclasses.asdict(self.cfg),
            "image": {"source": self.cfg.image or img.DEFAULT_IMAGE, "path": self.image_file,
                      "sha256": self.image_sha256,
                      "height": h, "width": w, "channels": c},
            "model": {"name": self.cfg.model, **dataclasses.asdict(self.model.config)},
            "train": {**dataclasses.asdict(self.train_cfg), "optimizer": "Adam", "loss": "MSE",
                      "batch_size": self.batch_size or h * w, "full_batch": self.batch_size is None},
            "device": str(self.device),
            "activations": self.fused,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }

    def save_checkpoint(self, state: FitState, snapshot: dict) -> None:
        extra = {
            "model": snapshot["model"],
            "optimizer": snapshot["optimizer"],
            "fit": fit_record(state),
            "task": {"kind": "image", "height": self.task.height, "width": self.task.width,
                     "channels": self.task.channels, "target_range": list(self.task.target_range),
                     "aspect": self.task.aspect, "rng": self.task.state_dict()},
        }
        io.save_checkpoint(self.out / "checkpoint.pt", model=self.model, extra=extra)
        io.write_csv(self.out / "curve.csv", state.history, curve_columns(self.task))
        if state.status == "running":
            self.write_metrics(state, final=False)

    def write_metrics(self, state: FitState, final: bool, stage: str | None = None) -> dict[str, Any]:
        h, w, c = self.image.shape
        metrics: dict[str, Any] = {
            "task": "image",
            "model": self.cfg.model,
            "status": state.status if final else "running",
            "params": count_parameters(self.model),
            **network_shape(self.model.config),
            "steps": state.step,
            "steps_planned": self.cfg.steps,
            "psnr": None,
            "ssim": None,
            "seconds": round(state.train_seconds, 3),
            "seconds_per_step": round(state.train_seconds / max(state.step, 1), 5),
            "device": str(self.device),
            "fused": self.fused["fused"],
            "precision": self.cfg.precision,
            **({"precision_note": self.precision_note} if self.precision_note else {}),
            "image": self.image_file or self.cfg.image or img.DEFAULT_IMAGE,  # a file: its absolute path
            "image_height": h,
            "image_width": w,  # "width" is the network's (config.json, bench tables)
            "image_channels": c,
            "lr": self.train_cfg.lr,
            "seed": self.cfg.seed,
            "batch_size": self.batch_size or h * w,
        }
        if final:
            pred = self.task.predict(self.model)
            metrics["psnr"] = round(psnr(pred, self.image), 4)
            metrics["ssim"] = round(ssim(pred, self.image), 5)
            img.save_image(pred, self.out / "reconstruction.png")
            error_map(pred, self.image, self.out / "error_map.png")
            psnr_curve(state.history, self.out / "psnr_curve.png",
                       title=f"{self.cfg.model} on {Path(metrics['image']).name}")
        if state.message:
            metrics["message"] = state.message
        if stage:
            metrics["stage"] = stage
        io.write_json(self.out / "metrics.json", metrics)
        return metrics

    def run(self, state: FitState | None = None, optimizer_state: dict | None = None) -> dict[str, Any]:
        state = state or FitState()
        self.write_metrics(state, final=False)  # "running" from the first step on
        with io.failure_recorded(self.out / "metrics.json"):
            state = fit(
                self.model,
                self.task,
                self.train_cfg,
                state=state,
                optimizer_state=optimizer_state,
                on_checkpoint=self.save_checkpoint,
                progress=self.progress,
                desc=f"{self.cfg.model}",
            )
            if state.status == "complete":  # stopped while scoring: it says so at its last step (resume scores it)
                self.write_metrics(state, final=False, stage="scoring")
            metrics = self.write_metrics(state, final=True)
        return finished(state, self.out, metrics, f"continue with `finer resume {self.out}`")


def finished(state: FitState, out: Path, metrics: dict[str, Any], go_on: str | None = None) -> dict[str, Any]:
    """A fit's result, the metrics with its folder ``out``; a run whose loss diverged raises
    :class:`DivergedError`, one stopped by Ctrl-C :class:`InterruptedRun` (``go_on``: how to continue it;
    default: fit it again), both with these metrics, so that a caller's loop or notebook cell stops too."""
    result = {**metrics, "out": str(out)}
    if state.status == "diverged":
        raise DivergedError(f"{state.message}; checkpoint of step {state.step} kept in {out}", result)
    if state.status == "interrupted":
        raise InterruptedRun(f"{state.message}; " + (go_on or (
            f"{out} keeps the network of step {state.step} (checkpoint.pt) and its scores (metrics.json); this kind "
            "of run is not resumed: fit it again with --overwrite to train it fully")), result)
    return result


def fit_image(cfg: ImageRunConfig, out: str | Path | None = None, *, progress: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    """Fit one image; returns the metrics (also written to ``out/metrics.json``) and the run folder (``out``)."""
    cfg.validate()
    claimed = out is None
    out = Path(out) if out is not None else default_out_dir(cfg)
    try:
        _prepare_out(out, overwrite, create=False, resumable=True)
        run = _Run(cfg, out, progress)  # reads the image and builds the model before anything is written
        io.check_not_an_output(run.image_file, out, RUN_FILES, "image")
        out.mkdir(parents=True, exist_ok=True)
        io.warn_stale_outputs(out, "the network of the run this one overwrites")
        io.remove_outputs(out, RUN_FILES)  # an overwritten run's files: none may pass for this run's
        if run.note:  # done otherwise than asked: a warning (the command prints "warning: ...")
            warnings.warn(run.note, FinerWarning, stacklevel=2)
        io.write_json(out / "config.json", run.resolved())
    except BaseException:
        if claimed:  # the folder default_out_dir made for this run, while it is empty
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return run.run()


def _recorded_status(run_dir: Path) -> str | None:
    """The ``status`` its metrics.json records, or None."""
    return io.read_record(run_dir / "metrics.json").get("status")


def _run_kind(run_dir: Path) -> str | None:
    """The task of the run in ``run_dir`` as its config.json names it ("image", "sdf", "nerf"), or None."""
    task = io.read_record(run_dir / "config.json").get("task")
    return task if task in ("image", "sdf", "nerf") else None


def _no_config_hint(run_dir: Path) -> str:
    """Why a folder with results but no config.json is not resumable."""
    metrics = io.read_record(run_dir / "metrics.json")
    if not metrics:
        return ""
    if "batch_signals" in metrics:  # (only the images of a stacked fit record it)
        return " (an image of a folder fitted with --batch-signals, which is not resumable; fit it again)"
    if not (run_dir / "config.json").exists():
        return " (its config.json, which the run needs to continue, is missing)"
    return ""


def resume_image(run_dir: str | Path, *, steps: int | None = None, progress: bool = True,
                 device: str | None = None) -> dict[str, Any]:
    """Continue an interrupted run (or extend a finished one to ``steps``) from its checkpoint, on ``device``
    (default: the run's own choice, as its config.json records it).

    The learning rate follows the schedule of the run's total steps, ``lr * 0.1^(t/T)``: extended to a
    larger ``T``, it rises at the step it continues from to that schedule's value there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FinerError(f"no run folder at {run_dir}" + (" (a file)" if run_dir.exists() else ""))
    if (run_dir / "config.json").is_file():
        io.read_json(run_dir / "config.json")  # a damaged one is named as such, not taken for no run
    kind = _run_kind(run_dir)
    if kind != "image":
        what = ({"sdf": "an SDF run", "nerf": "a NeRF run"}[kind] if kind
                else "not the folder of a `finer fit image` run (no config.json naming its task)")
        raise FinerError(f"{run_dir} is {what}; `finer resume` continues single image fits"
                         + (_no_config_hint(run_dir) if kind is None else ""))
    if not (run_dir / "checkpoint.pt").exists():
        raise FinerError(f"{run_dir} has no checkpoint.pt to continue from")
    config = io.read_json(run_dir / "config.json")
    known = {f.name for f in dataclasses.fields(ImageRunConfig)}
    cfg = ImageRunConfig(**{k: v for k, v in config.get("run", {}).items() if k in known})
    if steps is not None:
        cfg.steps = steps
    if device is not None:
        cfg.device = device
    recorded = config.get("image") if isinstance(config.get("image"), dict) else {}
    if recorded.get("path") and not Path(recorded["path"]).is_file():
        raise FinerError(f"{run_dir} was fitted to {recorded['path']}, which is no longer there; "
                         "put it back to continue, or fit again")
    run = _Run(cfg, run_dir, progress, image_file=recorded.get("path"))
    _, payload = io.load_checkpoint(run_dir / "checkpoint.pt")
    _check_resumable(run_dir, run, recorded, payload)
    done = payload["fit"]["step"]
    # stopped during its last step, or after it while scoring (the checkpoint complete, metrics.json not: stopped,
    # failed, or still "running" where the process was killed): resumed, it is completed (scored) without training
    stopped_at_the_end = done == cfg.steps and (payload["fit"].get("status") == "interrupted" or (
        payload["fit"].get("status") == "complete" and _recorded_status(run_dir) != "complete"))
    if done >= cfg.steps and not stopped_at_the_end:
        raise FinerError(f"{run_dir} already reached step {done}" + (f" of {cfg.steps}" if steps is None else "")
                         + f"; pass --steps with more than {done} to train longer")
    run.model.load_state_dict(payload["model"])
    run.task.load_state_dict(payload["task"]["rng"])
    state = continued_fit(payload["fit"])
    io.warn_stale_outputs(run_dir, f"the network of step {done} or an earlier one")
    io.write_json(run_dir / "config.json", run.resolved())
    from finer.batch_runs import refresh_summary  # (it imports this module)

    try:
        metrics = run.run(state, payload["optimizer"])
    except (InterruptedRun, DivergedError) as ended:  # an image of a folder fit: its row says so too
        if ended.metrics.get("psnr") is not None:
            refresh_summary(run_dir, ended.metrics)
        raise
    summary = refresh_summary(run_dir, metrics)
    if summary:
        metrics["summary"] = str(summary)
    return metrics


def _check_resumable(run_dir: Path, run: _Run, recorded: dict, payload: dict) -> None:
    """Refuse to continue when the checkpoint is not the run ``config.json`` describes (a folder that mixes
    two runs) or the image is not the one the checkpoint was trained on."""
    config = io.jsonable(dataclasses.asdict(run.model.config))
    if payload["method"] != run.cfg.model or io.jsonable(payload["model_config"]) != config:
        raise FinerError(f"{run_dir}: checkpoint.pt holds a {payload['method']!r} network that is not the "
                         f"{run.cfg.model!r} network config.json describes (the folder mixes two runs); fit again")
    if recorded.get("sha256") and run.image_sha256 != recorded["sha256"]:
        raise FinerError(f"{run.image_file} has changed since {run_dir} was fitted to it (its contents differ); "
                         "fit the new image into a new folder")
    task, (h, w, c) = payload.get("task", {}), run.image.shape
    if (task.get("height"), task.get("width"), task.get("channels")) != (h, w, c):
        raise FinerError(f"{run.image_file or run.cfg.image} gives a {w}x{h}x{c} image but {run_dir} was trained on "
                         f"{task.get('width')}x{task.get('height')}x{task.get('channels')} "
                         "(width x height x channels); "
                         "it is not the image of that run")


def reconstruct_image(checkpoint: str | Path, *, scale: float = 1.0, device: str = "auto",
                      chunk: int | None = None) -> np.ndarray:
    """The image a fitted model represents, from its checkpoint (a run folder or its ``checkpoint.pt``),
    at ``scale`` times the training resolution: float32 ``(H, W, C)`` in [0, 1], as the run's
    ``reconstruction.png`` at ``scale`` 1."""
    return _reconstruct(checkpoint, scale, device, chunk)[0]


def _reconstruct(checkpoint, scale, device, chunk, out=None, reader: str = "finer.reconstruct_image"):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < math.inf:
        raise ConfigError(f"scale must be a positive number, got {scale!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1):
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    if out:
        io.check_out(out, folder=False)
        img.check_image_path(out)
    model, payload = io.load_checkpoint(checkpoint, "image", reader)
    task = payload["task"]
    if out:
        img.check_writable_as(out, task["channels"])
    dev = resolve_device(device)
    h, w = max(1, round(task["height"] * scale)), max(1, round(task["width"] * scale))
    need, budget = h * w * (4 * (task["channels"] + 2) + task["channels"]), img.memory_budget(torch.device("cpu"))
    if need > budget:  # coordinates and the float image in memory, then the 8-bit one
        raise FinerError(f"a {w}x{h} render needs about {need / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB available); "
                         "use a smaller scale (--scale)")
    pred = img.predict_image(model.to(dev).eval(), h, w, target_range=tuple(task["target_range"]),
                             aspect=task["aspect"], chunk=chunk and int(chunk), device=dev)
    return pred, task


def render_checkpoint(checkpoint: str | Path, *, scale: float = 2.0, out: str | Path | None = None,
                      device: str = "auto", chunk: int | None = None, overwrite: bool = False) -> Path:
    """Render an image model at ``scale`` times its training resolution from the checkpoint alone, as a
    PNG (default: ``render_xSCALE.png`` in the run folder, replacing an earlier one); returns its path. The
    array itself: :func:`reconstruct_image`. An existing ``out`` is replaced only with ``overwrite``, and never
    when it is one of the run's own files or the image it was fitted to."""
    ckpt = Path(checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    if out:
        recorded = io.read_record(folder / "config.json").get("image")
        sources = [recorded.get("path") if isinstance(recorded, dict) else None,
                   io.read_record(folder / "metrics.json").get("image")]  # (a folder fit's images: no config.json)
        taken = {(folder / name).resolve(): f"the run's {name}" for name in RUN_FILES}
        taken.update({Path(source).resolve(): "the image this run was fitted to" for source in sources
                      if isinstance(source, str) and source})
        if Path(out).resolve() in taken:
            raise FinerError(f"--out {out} is {taken[Path(out).resolve()]}, which a render would replace; "
                             "choose another file")
        parent = Path(out).parent  # another run's files
        other = _folder_kind(parent) if parent.is_dir() else None
        files = (*RUN_FILES, "render.png")  # (an SDF run's picture)
        if other is not None and Path(out).name in files:
            raise FinerError(f"--out {out} is a file of {KINDS[other]} in {Path(out).parent}, which a render would "
                             "replace; choose another file")
        if Path(out).is_file() and not overwrite:
            raise FinerError(f"--out {out} exists; choose another file or pass --overwrite (overwrite=True from "
                             "Python) to replace it")
    pred, _ = _reconstruct(checkpoint, scale, device, chunk, out, "finer render")
    out = Path(out) if out else folder / f"render_x{scale:g}.png"
    io.atomic_write(out, lambda tmp: img.save_image(pred, tmp))
    return out
