"""Image benchmarks: a grid of fits (methods x images x seeds, or x widths) and its tables.

Each run writes one JSON record under ``OUT/runs/``; a rerun skips the records already written,
so an interrupted grid resumes where it stopped. A run also writes its state every
``checkpoint_every`` steps to ``OUT/runs/RECORD.partial.pt`` (removed once its record is written),
and a rerun continues an interrupted run from there: a paper-protocol run takes hours on a CPU.
Records and partial runs name their image by a digest of its pixels, so a rerun with other settings
or other images is refused rather than mixed in. ``official-finer`` is the eager reference of the
official code (:mod:`finer.bench.reference`), trained by the same loop on the same data.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from finer import io
from finer.bench import REFERENCE, check_models, check_record, check_run_names
from finer.bench.reference import OfficialFiner
from finer.errors import CropError, FinerError
from finer.bench.executors import execute, threads_per_worker
from finer.bench.report import write_report
from finer.lpips import available as lpips_available
from finer.metrics import image_metrics, mean, psnr, psnr_difference
from finer.models import MODELS, build_model, check_buildable, count_parameters
from finer.nn.fused import apply_fused
from finer.nn.stacked import stack_problem
from finer.runs import check_bench_out, device_name, resolve_device
from finer.tasks.image import ImageTask, load_image, save_image
from finer.train import FitState, TrainConfig, continued_fit, fit, fit_record

CURVE_EVERY = 10  # steps between the points of each run's recorded training-PSNR curve
IMAGE_SUFFIXES = {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm",
                  ".ppm", ".pbm", ".pnm", ".pfm", ".tga", ".qoi", ".jp2", ".j2k", ".avif"}
"""The files of a folder taken as its images: the common formats PIL reads (a single image may be any file it
reads; a folder's other files, such as notes or data, are left alone)."""
PARTIAL_SUFFIX = ".partial.pt"


@dataclass
class Protocol:
    """What every run of a grid shares (each method keeps its own learning rate and init)."""

    steps: int = 1000
    """Full-batch optimisation steps."""
    hidden_layers: int = 3
    """Hidden-to-hidden layers."""
    width: int = 128
    """Hidden units per layer."""
    crop: str | None = "256"
    """Centre crop of each image (None: the whole image)."""
    size: int | None = 128
    """Resize the crop so its longer side has this many pixels (None: keep)."""


PRESETS = {
    # CPU-sized: a 256-pixel centre crop downscaled to 128x128, 3 x 128, 1000 steps (about 0.2 s
    # per FINER step on 2 cores, so a 16-image grid of 6 methods takes hours, not days).
    "quick": Protocol(steps=1000, hidden_layers=3, width=128, crop="256", size=128),
    # The official protocol: whole 512x512 images, 3 x 256, 5000 full-batch steps (a GPU's job).
    "paper": Protocol(steps=5000, hidden_layers=3, width=256, crop=None, size=None),
}


def resolve_protocol(preset: str, **overrides) -> Protocol:
    if preset not in PRESETS:
        raise FinerError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for key in ("crop", "size"):
        if str(overrides.get(key, "")).lower() == "none":
            overrides[key] = None  # the whole image, its own size
    return dataclasses.replace(PRESETS[preset], **overrides)


def _build(name: str, channels: int, width: int, hidden_layers: int, seed: int):
    if name == REFERENCE:
        torch.manual_seed(seed)
        model = OfficialFiner(2, channels, width=width, hidden_layers=hidden_layers)
        return model, model.lr, model.target_range
    model = build_model(name, 2, channels, seed=seed, width=width, hidden_layers=hidden_layers)
    return model, model.config.lr, tuple(model.config.target_range)


@dataclass
class Job:
    """One run of a grid, self-contained (the image travels with it) so any worker can execute it."""

    record: str
    image_name: str
    image: np.ndarray
    model: str
    protocol: Protocol
    seed: int
    device: str = "auto"
    progress: bool = False
    fused: str = "auto"
    partial: str | None = None
    """Where the run's state is kept while it trains (``OUT/runs/RECORD.partial.pt``), and continued
    from if it is there; None: neither."""
    checkpoint_every: int = 0
    """Steps between writes of ``partial`` (0: none)."""

    @functools.cached_property
    def digest(self) -> str:
        """:func:`image_digest` of the run's image, computed once."""
        return image_digest(self.image)


def image_digest(image: np.ndarray) -> str:
    """A short hash of the pixels a run fits (after crop and resize): records and partial runs name
    the image by it, so a grid written to the same --out with other images of the same file names
    (the natural and text sets are both 00.png ... 15.png) does not take their runs as its own."""
    data = np.ascontiguousarray(image, dtype=np.float32)
    return hashlib.sha1(str(data.shape).encode() + data.tobytes()).hexdigest()[:16]


def _partial_key(job: Job) -> dict:
    """What a partial run must match to be continued: the run's method, seed, protocol and pixels."""
    p = job.protocol
    return {"model": job.model, "seed": job.seed, "steps": p.steps, "width": p.width,
            "hidden_layers": p.hidden_layers, "image": job.digest}


def _read_partial(job: Job) -> dict | None:
    """The saved state of an interrupted run of ``job`` (None if there is none); an error if the file
    there is not one of this run."""
    if not job.partial or not Path(job.partial).exists():
        return None
    try:
        _, payload = io.read_payload(job.partial, io.BENCH_PARTIAL_FORMAT)
    except FinerError as exc:
        raise FinerError(f"{exc}; delete {job.partial} to start that run again") from None
    if payload.get("key") != _partial_key(job):
        raise FinerError(f"{job.partial} is not a partial run of {job.model} on {job.image_name} (seed {job.seed}) "
                         "at this protocol; delete it, or write this grid to another --out")
    return payload


def _load_partial(job: Job, model, task: ImageTask) -> tuple[FitState | None, dict | None]:
    """Load the state of an interrupted run of ``job`` into ``model`` and ``task``; returns the fit state
    and optimiser state to continue from, or ``(None, None)`` if there is none."""
    payload = _read_partial(job)
    if payload is None:
        return None, None
    model.load_state_dict(payload["model"])
    task.load_state_dict(payload["task"])
    return continued_fit(payload["fit"]), payload["optimizer"]


def _save_partial(path: str, payload: dict) -> None:
    io.atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _partial_writer(job: Job, task: ImageTask):
    """``fit``'s checkpoint callback for ``job``: the state of a run still training or interrupted
    (a finished run's result is its record)."""

    def write(state: FitState, snapshot: dict) -> None:
        if state.status not in ("running", "interrupted"):
            return
        _save_partial(job.partial, {
            "format": io.BENCH_PARTIAL_FORMAT, "key": _partial_key(job), "model": snapshot["model"],
            "optimizer": snapshot["optimizer"], "task": task.state_dict(),
            "fit": fit_record(state)})

    return write


def run_one(job: Job) -> tuple[dict, np.ndarray]:
    """One fit at the method's defaults; returns its metrics row (with a training-PSNR curve) and the
    reconstruction. With ``job.partial``, it continues an interrupted run from there and, every
    ``job.checkpoint_every`` steps, keeps its state there."""
    image, protocol, device = job.image, job.protocol, resolve_device(job.device)
    model, lr, target_range = _build(job.model, image.shape[-1], protocol.width, protocol.hidden_layers, job.seed)
    model = model.to(device)
    fused = apply_fused(model, job.fused, protocol.steps)
    task = ImageTask(image, target_range, device, seed=job.seed)
    state, optimizer_state = _load_partial(job, model, task)
    # a Ray worker on another machine has no grid folder: its run just keeps no state
    writes = bool(job.partial and job.checkpoint_every and Path(job.partial).parent.is_dir())
    cfg = TrainConfig(steps=protocol.steps, lr=lr, eval_every=0, checkpoint_every=job.checkpoint_every if writes else 0,
                      log_every=50)
    state = fit(model, task, cfg, state=state, optimizer_state=optimizer_state,
                on_checkpoint=_partial_writer(job, task) if writes else None, progress=job.progress,
                desc=f"{Path(job.image_name).stem}/{job.model}")
    pred = task.predict(model)
    psnrs = {h["step"]: h["train_psnr"] for h in state.history}
    return _row(job, model, pred, state.status, state.step, state.train_seconds, psnrs, lr, device, fused), pred


def _row(job: Job, model, pred: np.ndarray, status: str, steps: int, seconds: float, train_psnr: dict, lr: float,
         device, fused: dict, **extra) -> dict:
    """A run's metrics row; ``train_psnr``: step -> training PSNR, sampled into the row's curve."""
    protocol = job.protocol
    curve = [[step, round(float(train_psnr[step]), 4)] for step in sorted(train_psnr)
             if step % CURVE_EVERY == 0 or step in (1, steps)]
    return {
        "image": job.image_name, "image_digest": job.digest, "model": job.model, "seed": job.seed,
        "status": status, "steps": steps, "steps_planned": protocol.steps,
        **image_metrics(pred, job.image, with_lpips=lpips_available()), "params": count_parameters(model),
        "seconds": seconds, "seconds_per_step": seconds / max(steps, 1), "threads": torch.get_num_threads(),
        "lr": lr, "width": protocol.width, "hidden_layers": protocol.hidden_layers, "crop": protocol.crop,
        "size": protocol.size, "image_height": job.image.shape[0], "image_width": job.image.shape[1],
        "device": str(device), "processor": device_name(torch.device(device)), "fused": fused["fused"], **extra,
        "curve": curve,
    }


def run_stacked(jobs: list[Job]) -> list[tuple[dict, np.ndarray]]:
    """Runs of one method and seed on same-shaped images, fitted as one stacked network
    (:class:`~finer.nn.stacked.StackedMLP`): each image gets the result of its own :func:`run_one`
    (same initial weights, same steps), and a row like its own, with the group's seconds shared out.
    Divergence is judged per image, as a single fit judges it: the images whose own loss turned
    non-finite or grew past ``divergence_factor`` times its first value are rerun one at a time
    (:func:`run_one`), which stops them at their last good step. Ctrl-C interrupts the group."""
    from finer.batch_runs import fit_stacked

    if len(jobs) == 1:
        return [run_one(jobs[0])]
    first, protocol = jobs[0], jobs[0].protocol
    device = resolve_device(first.device)
    images = np.stack([job.image for job in jobs])
    models = []
    for _ in jobs:
        model, lr, target_range = _build(first.model, images.shape[-1], protocol.width, protocol.hidden_layers,
                                         first.seed)
        models.append(model.to(device))
    fused = [apply_fused(m, first.fused, protocol.steps) for m in models][0]
    cfg = TrainConfig(steps=protocol.steps, lr=lr, eval_every=0, checkpoint_every=0, log_every=50)
    names = ",".join(Path(job.image_name).stem for job in jobs)
    state, task, trained = fit_stacked(models, images, cfg, device, keep_signal_losses=True, progress=first.progress,
                                       desc=f"{names}/{first.model}")
    if state.status == "interrupted":
        raise KeyboardInterrupt
    losses = torch.stack(task.signal_losses).cpu().double().numpy()
    complete = state.status == "complete"
    rerun = set(diverged_signals(losses, cfg.divergence_factor)) if complete else set(range(len(jobs)))
    psnrs = task.signal_psnrs()
    seconds = state.train_seconds / len(jobs)
    out = []
    for k, (job, model) in enumerate(zip(jobs, trained)):
        if k in rerun:
            out.append(run_one(job))
            continue
        pred = ImageTask(job.image, target_range, device, seed=job.seed).predict(model)
        train_psnr = {step: psnrs[step - 1, k] for step in range(1, state.step + 1)}
        out.append((_row(job, model, pred, state.status, state.step, seconds, train_psnr, lr, device, fused,
                         batch_signals=len(jobs)), pred))
    return out


def diverged_signals(losses: np.ndarray, factor: float) -> list[int]:
    """Columns of ``losses (steps, K)`` that a single fit would call diverged: a non-finite loss, or
    one above ``factor`` times the column's first loss (:func:`finer.train.fit`'s rule)."""
    first = np.maximum(losses[0], 1e-12)
    bad = ~np.isfinite(losses) | (losses > factor * first)
    return [int(k) for k in np.flatnonzero(bad.any(axis=0))]


def stackable(name: str) -> bool:
    """Whether runs of method ``name`` can be fitted several at once (``--batch-signals``)."""
    if name == REFERENCE:
        return False
    return stack_problem(build_model(name, 2, 3, width=4, hidden_layers=1, seed=0)) is None


@functools.lru_cache(maxsize=None)
def fusable(name: str) -> bool:
    """Whether ``--fused`` changes anything for method ``name`` (PE-MLP's ReLU and the official code have no
    fused layers)."""
    if name not in MODELS:
        return False
    from finer.nn.fused import kernel_call
    from finer.nn.learnable import LearnableActivation

    model = build_model(name, 2, 3, width=4, hidden_layers=1, seed=0)
    return any(kernel_call(layer.activation) is not None or isinstance(layer.activation, LearnableActivation)
               for layer in model.layers)


def group_jobs(jobs: list[Job], batch_signals: int) -> list[list[Job]]:
    """Jobs in groups of up to ``batch_signals`` runs sharing method, seed, protocol and image shape
    (in plan order); methods that cannot be stacked run alone."""
    if batch_signals <= 1:
        return [[job] for job in jobs]
    can = {name: stackable(name) for name in {job.model for job in jobs}}
    groups: list[list[Job]] = []
    open_groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if not can[job.model]:
            groups.append([job])
            continue
        key = (job.model, job.seed, dataclasses.astuple(job.protocol), job.image.shape)
        group = open_groups.get(key)
        if group is None or len(group) == batch_signals:
            group = open_groups[key] = []
            groups.append(group)
        group.append(job)
    return groups


def list_images(directory, limit: int | None = None) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FinerError(f"not a folder of images: {directory}")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not images:
        raise FinerError(f"no images in {directory}")
    io.check_unique_stems(images, "images")
    return images


def _device(device: str, report_only: bool) -> torch.device:
    """The device runs train on; a report trains none (its conditions are the runs' own): the CPU, whatever
    the command asks (a grid trained on a GPU is reported where there is none)."""
    return torch.device("cpu") if report_only else resolve_device(device)


def _check_networks(jobs) -> None:
    """Before any run: every network of the grid can be built (a setting one method refuses, such as WIRE at
    width 1, or a width too large for the memory, is an error now, not after the other runs trained).
    The official code's network is checked as FINER's, of the same shape."""
    for model, width, layers in sorted({(model, protocol.width, protocol.hidden_layers)
                                        for _, _, model, protocol, _ in jobs}):
        check_buildable("finer" if model == REFERENCE else model, 2, 3, width=width, hidden_layers=layers)


def _check_grid_names(directory, out: Path, jobs, bench: str) -> None:
    """Before any work: ``out`` is not the image folder (the grid's pictures would be images to a rerun),
    every run's files (``runs/RECORD.partial.pt`` the longest) have names the file system takes, and no two
    runs share a name (``x-gauss.png`` with ``finer`` and ``x.png`` with ``gauss-finer``: one would replace
    the other's files)."""
    check_bench_out(out, bench)
    if out.resolve() == Path(directory).resolve():
        raise FinerError(f"--out {out} is the image folder: the grid's pictures would be taken for images when it "
                         "runs again; choose another folder (a subfolder is fine)")
    limit = 255  # bytes of a file name on the common file systems
    long = [record for record, *_ in jobs if len(f"{record}{PARTIAL_SUFFIX}".encode()) > limit]
    if long:
        raise FinerError(f"the run name {long[0]!r} is longer than file names may be here ({limit} bytes with its "
                         "extension): rename the image")
    check_run_names([(record, path, model) for record, path, model, *_ in jobs], "image")


def _protocol_record(directory, images, protocol: Protocol, seeds, device, execution=None) -> dict:
    execution = execution or Execution()
    return {"directory": str(directory), "images": len(images), **dataclasses.asdict(protocol), "seeds": list(seeds),
            "device": str(device), "full_batch": True, "executor": execution.executor, "workers": execution.workers,
            "batch_signals": execution.batch_signals,
            "machine": f"{_machine(execution)}, {device_name(torch.device(device))}", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}


RUN_CONDITIONS = ("device", "executor", "workers", "batch_signals", "machine", "torch", "date")
"""The protocol record's fields that describe how and where the runs were trained."""


def _all_finished(jobs, out: Path) -> bool:
    """Whether every run of the grid has its record in ``out/runs`` already (a rerun then trains nothing)."""
    return all((out / "runs" / f"{record}.json").is_file() for record, *_ in jobs)


def _kept_conditions(meta: dict, earlier: Path, report_only: bool) -> dict:
    """``meta``, with the run conditions of the ``earlier`` record (results.json, width.json) under ``report_only``
    (or a rerun with every run finished): a report written from finished runs describes how they were trained,
    not the command that wrote it."""
    if not report_only:
        return meta
    protocol = io.read_record(earlier).get("protocol")
    if not isinstance(protocol, dict):  # no earlier record to say: not the report command's conditions either
        return {**meta, **{key: None for key in RUN_CONDITIONS},
                "machine": f"not recorded ({earlier.name} missing or unreadable when this report was written)"}
    return {**meta, **{key: protocol.get(key) for key in RUN_CONDITIONS}}


def _machine(execution: Execution) -> str:
    """The machine and how its cores were shared among the runs."""
    if execution.executor == "local" and execution.workers > 1:
        share = (f"{execution.workers} worker processes x {threads_per_worker(execution.workers)} torch threads "
                 "(runs in parallel)")
    elif execution.executor == "local":
        share = f"{torch.get_num_threads()} torch threads"
    else:
        share = "Ray tasks (threads: the cluster's)"
    return f"{platform.machine()}, {share}"


@dataclass
class Execution:
    """How a grid's runs are executed (:mod:`finer.bench.executors`)."""

    executor: str = "local"
    workers: int = 1
    address: str | None = None
    batch_signals: int = 1
    """Runs of one method and seed fitted together as one stacked network (``--batch-signals``)."""
    checkpoint_every: int = 250
    """Steps between writes of a run's state to ``OUT/runs/RECORD.partial.pt``, from which a rerun
    continues it (0: none; runs fitted as one stacked network start again)."""

    def __post_init__(self):
        most = 4 * (os.cpu_count() or 1)  # local worker processes; (a Ray cluster's are its own)
        if self.executor == "local" and self.workers > most:
            raise FinerError(f"workers {self.workers} is more than {most} processes, 4 per core of this machine; "
                             "each run already uses the threads its worker gets")


def protocol_mismatch(row: dict, protocol: Protocol, digest: str, image: np.ndarray | None = None,
                      reconstruction: Path | None = None, folders: tuple = ()) -> str:
    """How a finished run's record differs from ``protocol`` on the image of digest ``digest`` (empty if
    it does not): a grid's runs are named by image file, method and seed only, so a rerun with other
    settings or other images must not take old runs as its own. Records written before they carried
    the image's digest are compared on crop and size, and on ``image`` through the run's saved
    ``reconstruction`` (:func:`_fits_its_image`), or, without one, on ``folders``: the image folder the
    grid's earlier tables name and this grid's, which must have one name."""
    if "image_digest" not in row and image is not None and reconstruction is not None:
        other = _fits_its_image(row, image, reconstruction)
        if other:
            return other
        earlier, now = folders or (None, None)
        if not reconstruction.is_file() and earlier and now and Path(earlier).name != Path(now).name:
            return f"recorded for the images of {earlier}, where this grid's are in {now}"
    steps = row.get("steps", 0)
    planned = row.get("steps_planned", steps if row.get("status") == "complete" else max(steps, protocol.steps))
    recorded = {"steps": planned, "width": row.get("width"), "hidden_layers": row.get("hidden_layers")}
    wanted = {"steps": protocol.steps, "width": protocol.width, "hidden_layers": protocol.hidden_layers}
    if "image_digest" in row:
        recorded["image"], wanted["image"] = f"pixels {row['image_digest']}", f"pixels {digest}"
    else:
        recorded.update(crop=row.get("crop"), size=row.get("size"))
        wanted.update(crop=protocol.crop, size=protocol.size)
    return ", ".join(f"{k} {recorded[k]} where this grid has {wanted[k]}" for k in wanted
                     if str(recorded[k]) != str(wanted[k]))


def _fits_its_image(row: dict, image: np.ndarray, reconstruction: Path) -> str:
    """Whether a record without the image's digest is of ``image``: its saved reconstruction (8-bit) must
    score on it about the PSNR the record states (within 3 dB, of at most 50: 8-bit rounding alone limits
    a PNG to about 59 dB); empty if it does, or if there is no reconstruction to tell, else how it differs.
    The natural and text sets share their file names: a reconstruction of the other set scores 2-15 dB. (A run
    that learned little scores alike on any image, and is taken.)"""
    recorded = io.stored_number(row.get("psnr"))
    if not reconstruction.is_file() or not isinstance(recorded, (int, float)) or not math.isfinite(recorded):
        return ""
    try:
        saved = load_image(reconstruction)
    except (FinerError, OSError):
        return ""
    if saved.shape != image.shape:
        return f"image of {saved.shape[1]}x{saved.shape[0]} where this grid's is {image.shape[1]}x{image.shape[0]}"
    scored = psnr(saved, image)
    if scored < min(recorded, 50.0) - 3.0:
        return (f"its reconstruction scores {scored:.1f} dB on this grid's image where the run recorded "
                f"{recorded:.1f} dB: another image of the same name")
    return ""


def run_grid(plan, out: Path, device: str, progress: bool, on_row=None, execution: Execution | None = None,
             fused: str = "auto", train: bool = True) -> list[dict]:
    """Run ``plan`` = [(record_name, path, model, protocol, seed)], skipping records already written.
    ``train=False``: run nothing, return the records already written (``--report-only``).

    Rows come back in plan order whatever order the runs finish in. ``execution.batch_signals > 1``
    fits the runs of a method and seed on up to that many same-shaped images as one stacked network
    (:func:`run_stacked`; one executor task per group).
    """
    execution = execution or Execution()
    earlier_folder = None  # the image folder that the grid's earlier tables name
    for name in ("results.json", "width.json"):
        recorded = io.read_record(out / name).get("protocol")
        if isinstance(recorded, dict) and isinstance(recorded.get("directory"), str):
            earlier_folder = recorded["directory"]
    done: dict[str, dict] = {}
    images: dict[tuple, np.ndarray] = {}
    jobs = []
    digests: dict[tuple, str] = {}
    for record_name, path, name, protocol, seed in plan:
        record = out / "runs" / f"{record_name}.json"
        partial = (out / "runs" / f"{record_name}{PARTIAL_SUFFIX}").resolve()  # absolute: Ray workers have other cwds
        if not train and not record.exists():
            continue
        key = (path, protocol.crop, protocol.size)
        if key not in images:
            try:
                images[key] = load_image(path, crop=protocol.crop, size=protocol.size)
            except CropError as exc:
                raise CropError(f"{path}: {exc}; this grid crops every image to {protocol.crop} (the preset's crop, "
                                "or --crop): give --crop none to fit whole images, or a smaller --crop") from None
            digests[key] = image_digest(images[key])
        if record.exists():
            row = check_record(io.read_json(record), str(record), numbers=("psnr", "ssim", "steps"),
                               texts=("model", "image", "status"))
            row.update({k: io.stored_number(row[k]) for k in ("psnr", "ssim") if k in row})  # NaN/inf as measured
            mismatch = protocol_mismatch(row, protocol, digests[key], images[key],
                                         out / "runs" / f"{record_name}.png", (earlier_folder, path.parent))
            if mismatch:
                advice = ("--report-only reports the grid its options describe: give the options it was run with"
                          if not train else "write this grid to another --out, or delete that folder's runs")
                raise FinerError(f"{record} is a run of another protocol or image ({mismatch}); {advice}")
            done[record_name] = row
            partial.unlink(missing_ok=True)  # left if a run stopped between its record and this
            continue
        sequential = execution.executor == "local" and execution.workers == 1
        job = Job(record_name, path.name, images[key], name, protocol, seed, str(device), progress and sequential,
                  fused, partial=str(partial), checkpoint_every=execution.checkpoint_every)
        _read_partial(job)  # a partial run of other settings stops the grid now, not hours into it
        jobs.append(job)
    if train:  # every image read and every record checked: only now is anything created (--report-only: nothing)
        (out / "runs").mkdir(parents=True, exist_ok=True)
    if done:
        print(f"{len(done)} of {plural(len(plan), 'run')} already finished in {out / 'runs'}"
              + (": skipped" if train else ""), flush=True)
    order = {record_name: i for i, (record_name, *_) in enumerate(plan)}
    others = sorted(p.stem for p in (out / "runs").glob("*.json") if p.stem not in order)
    if others:  # (kept, not deleted: a grid with those options tabulates them again)
        print(f"{plural(len(others), 'finished run')} in {out / 'runs'} not in this grid (other models, seeds, "
              f"images or widths) left out of its tables: {', '.join(others[:4])}" + (", ..." if len(others) > 4
                                                                                      else ""), flush=True)

    def ordered():
        return [done[k] for k in sorted(done, key=order.__getitem__)]

    total, count = len(jobs), 0
    groups = group_jobs(jobs, execution.batch_signals)
    for group, results in execute(run_stacked, groups, executor=execution.executor, workers=execution.workers,
                                  address=execution.address, gpus_per_job=1.0 if device == "cuda" else 0.0):
        for job, (row, pred) in zip(group, results, strict=True):
            if row["status"] == "interrupted":  # not a result: the next run of the command redoes it
                raise KeyboardInterrupt
            count += 1
            save_image(pred, out / "runs" / f"{job.record}.png")  # before the record, which marks the run done
            io.write_json(out / "runs" / f"{job.record}.json", row)
            Path(job.partial).unlink(missing_ok=True)
            done[job.record] = row
            lp = f"  LPIPS {row['lpips']:.4f}" if row.get("lpips") is not None else ""
            print(f"[{count}/{total}] {job.image_name} {job.model:14s} w{job.protocol.width} s{job.seed} "
                  f"PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}{lp}  {row['seconds_per_step']:.3f} s/step",
                  flush=True)
        if on_row:
            on_row(ordered())  # partial results stay readable
    return ordered()


def _report_rows(jobs, out: Path, device, report_only: bool, **grid) -> list[dict]:
    """The grid's rows: its runs trained (skipping finished ones), or with ``report_only`` only the
    runs already finished (an error if there are none)."""
    rows = run_grid(jobs, out, device, train=not report_only, **grid)
    if report_only and not rows:
        raise FinerError(f"--report-only: no finished runs of this grid in {out / 'runs'}")
    return rows


def run_image_bench(directory, *, models, protocol: Protocol, seeds=(0,), limit=None, out, device="auto",
                    progress=True, execution: Execution | None = None, fused: str = "auto",
                    report_only: bool = False) -> list[dict]:
    """``finer bench images``: methods x images x seeds at one protocol (``report_only``: write the
    table and report from the finished runs, train nothing)."""
    check_models(models, [*MODELS, REFERENCE])
    images, out, dev = list_images(directory, limit), Path(out), _device(device, report_only)
    jobs = [(f"{p.stem}-{m}-s{s}", p, m, protocol, s) for p in images for m in models for s in seeds]
    _check_grid_names(directory, out, jobs, "images")
    if not report_only and not _all_finished(jobs, out):  # (a rerun with all its runs finished trains nothing)
        _check_networks(jobs)
    meta = _kept_conditions(_protocol_record(directory, images, protocol, seeds, dev, execution),
                            out / "results.json", report_only or _all_finished(jobs, out))

    def write(rows) -> list[Path]:
        done = {**meta, "runs_done": len(rows), "runs_planned": len(jobs), **_as_trained(rows, meta)}
        io.write_csv(out / "results.csv", [_flat(r) for r in rows])
        io.write_json(out / "results.json", {"protocol": done, "runs": rows})
        text = summary_table(rows, models, done)
        io.atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
        report = write_report(out, rows, models, done, images)
        return [out / "summary.md", report, out / "results.csv", out / "results.json"]

    rows = _report_rows(jobs, out, device, report_only, progress=progress, on_row=write, execution=execution,
                        fused=fused)
    _say_written(rows, write(rows))
    return rows


def run_width_bench(directory, *, models, widths, protocol: Protocol, seeds=(0,), limit=None, out, device="auto",
                    progress=True, execution: Execution | None = None, fused: str = "auto",
                    report_only: bool = False) -> list[dict]:
    """``finer bench width`` (supplement Fig. 2): PSNR against hidden width with two hidden layers
    (``report_only``: write the table and plot from the finished runs, train nothing)."""
    check_models(models, [*MODELS, REFERENCE])
    images, out, dev = list_images(directory, limit), Path(out), _device(device, report_only)
    protocol = dataclasses.replace(protocol, hidden_layers=2)
    jobs = [(f"{p.stem}-{m}-w{w}-s{s}", p, m, dataclasses.replace(protocol, width=w), s)
            for w in widths for p in images for m in models for s in seeds]
    _check_grid_names(directory, out, jobs, "width")
    if not report_only and not _all_finished(jobs, out):  # (a rerun with all its runs finished trains nothing)
        _check_networks(jobs)
    record = _protocol_record(directory, images, protocol, seeds, dev, execution)
    meta = _kept_conditions({**{k: v for k, v in record.items() if k != "width"}, "widths": list(widths)},
                            out / "width.json", report_only or _all_finished(jobs, out))

    def write(rows) -> list[Path]:
        done = {**meta, "runs_done": len(rows), "runs_planned": len(jobs), **_as_trained(rows, meta)}
        io.write_csv(out / "width.csv", [_flat(r) for r in rows])
        io.write_json(out / "width.json", {"protocol": done, "runs": rows})
        text = width_table(rows, models, widths, done)
        io.atomic_write(out / "width.md", lambda tmp: Path(tmp).write_text(text))
        width_plot(rows, models, widths, out / "width.png")
        return [out / "width.md", out / "width.png", out / "width.csv", out / "width.json"]

    rows = _report_rows(jobs, out, device, report_only, progress=progress, on_row=write, execution=execution,
                        fused=fused)
    _say_written(rows, write(rows))
    return rows


def _as_trained(rows: list[dict], meta: dict) -> dict:
    """What the rows say of how they were trained, where the protocol record (the last command's) would not:
    ``mixed_devices`` (``["cpu, PROCESSOR: 12 runs", ...]``) where they were trained on more than one device or
    processor (a grid continued on another machine: their seconds do not compare); ``mixed_fused``
    (``["wire: off 2, compile 4", ...]``) where a method's runs were trained with fused layers and without
    (a grid continued with another --fused: the same arithmetic, rounded otherwise); ``batch_signals``: the
    most images stacked in one fit, where that is not what the command allowed (images of other shapes, methods
    that do not stack, or a grid stacked earlier and continued without)."""
    out: dict = {}
    devices = {r.get("device") for r in rows}
    processors = {(r.get("device"), r["processor"]) for r in rows if r.get("processor")}  # (older rows: none)
    if len(devices) > 1 or len(processors) > 1:
        counts = collections.Counter(", ".join(str(r[k]) for k in ("device", "processor") if r.get(k))
                                     or "not recorded" for r in rows)
        out["mixed_devices"] = [f"{where}: {plural(n, 'run')}" for where, n in sorted(counts.items())]
    fused: dict = {}
    for r in rows:
        if r.get("fused") and fusable(r["model"]):
            fused.setdefault(r["model"], collections.Counter())[r["fused"]] += 1
    mixed = [f"{m}: " + ", ".join(f"{mode} {n}" for mode, n in sorted(c.items()))
             for m, c in fused.items() if len(c) > 1]
    if mixed:
        out["mixed_fused"] = mixed
    allowed = meta.get("batch_signals") or 1
    stacked = max((r.get("batch_signals") or 1 for r in rows), default=1)
    if stacked != allowed and (allowed > 1 or stacked > 1):  # (stacked earlier, continued unstacked: said too)
        out["batch_signals"] = stacked
    return out


def _say_written(rows: list[dict], paths: list[Path]) -> None:
    print(f"{plural(len(rows), 'run')}: " + ", ".join(str(p) for p in paths), flush=True)


def _flat(row: dict) -> dict:
    """A row without its curve, for CSV."""
    return {k: v for k, v in row.items() if k != "curve"}


def plural(n: int, noun: str) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _protocol_line(p: dict, spread: bool = True) -> str:
    """The protocol of a grid's table, in one sentence; ``spread``: its table gives mean ± std over runs."""
    crop = f"centre crop {p['crop']}" if p["crop"] else "whole images"
    size = f", resized to {p['size']}" if p["size"] else ""
    return (f"Protocol: {plural(p['images'], 'image')} from `{p['directory']}`, {crop}{size}, "
            f"{p['hidden_layers']} hidden layers x width {p['width']}, {p['steps']} full-batch steps, "
            "each method's default learning rate, "
            f"seeds {p['seeds']}, "
            + (f"{p['device']} ({p['machine']}), torch {p['torch']}, {p['date']}; " if p.get("device")
               else f"run conditions {p['machine']}; ")
            + plural(p["runs_done"], "run")
            + (f" of {p['runs_planned']} planned" if p.get("runs_planned", p["runs_done"]) != p["runs_done"] else "")
            + (f" (trained on more than one device: {'; '.join(p['mixed_devices'])}; their seconds do not compare)"
               if p.get("mixed_devices") else "")
            + (f" (fused layers for some runs of a method, not for others: {'; '.join(p['mixed_fused'])}; the same "
               "arithmetic, rounded otherwise)" if p.get("mixed_fused") else "")
            + (f"; a method's runs fitted up to {p['batch_signals']} images at a time as one stacked network "
               "(a stacked run's seconds: its group's divided by the group's size)"
               if (p.get("batch_signals") or 1) > 1 else "")
            + ". PSNR/SSIM/LPIPS (AlexNet, v0.1) of the clipped prediction on [0, 1]"
            + (", mean ± std over runs." if spread else "."))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation; no deviation (``nan``) of one value, or of values not all finite."""
    spread = len(values) > 1 and all(math.isfinite(v) for v in values)
    return mean(values), (statistics.stdev(values) if spread else math.nan)


def summary_table(rows: list[dict], models: list[str], protocol: dict) -> str:
    """Markdown table of mean ± std PSNR/SSIM, LPIPS, speed and wins per model."""
    lines = [_protocol_line(protocol), "", "| model | PSNR (dB) | SSIM | LPIPS | params | s/step | runs | best on |",
             "|---|---|---|---|---|---|---|---|"]
    best = best_counts(rows, models)
    for name, p, sp, s, ss, lp, slp, params, sps, n in summary_rows(rows, models):
        lpips_cell = f"{lp:.2e}{_pm(slp, '.1e')}" if lp is not None else "-"
        diverged = sum(r["model"] == name and r.get("status") == "diverged" for r in rows)
        runs = f"{n} ({diverged} †)" if diverged else f"{n}"
        lines.append(f"| {name} | {p:.2f}{_pm(sp, '.2f')} | {s:.4f}{_pm(ss, '.4f')} | {lpips_cell} | {params} | "
                     f"{sps:.3f} | {runs} | {best[name]} |")
    return "\n".join(lines) + "\n" + BEST_NOTE + "\n" + _diverged_note(rows)


def _diverged_note(rows: list[dict], curves: bool = True) -> str:
    """The footnote of the runs marked †, if any; ``curves``: the table comes with training curves."""
    if not any(r.get("status") == "diverged" for r in rows):
        return ""
    return ("\n† runs whose loss diverged: scored at their last good step and counted in the means as measured "
            "(a rerun would diverge again)" + ("; the training curves leave them out" if curves else "") + ".\n")


BEST_NOTE = ("\n*best on*: of the images (and seeds) that every method of the table has run, on how many "
             "this method has the highest PSNR.")


def best_counts(rows: list[dict], models: list[str]) -> dict[str, str]:
    """Per model, ``"k/n"``: among the ``n`` (image, seed) pairs that every model with runs in ``rows``
    has run, the ``k`` where this model has the highest PSNR (a tie counts for each tied model)."""
    present = [m for m in models if any(r["model"] == m for r in rows)]
    psnr: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["model"] in present:
            psnr.setdefault((r["image"], r["seed"]), {})[r["model"]] = r["psnr"]
    complete = [v for v in psnr.values() if len(v) == len(present)]
    wins = {m: sum(v[m] == max(v.values()) for v in complete) for m in present}
    return {m: f"{wins.get(m, 0)}/{len(complete)}" for m in models}


def _pm(std: float, fmt: str) -> str:
    """`` ± std``, or nothing for a single run (no spread to show)."""
    return "" if std is None or math.isnan(std) else f" ± {std:{fmt}}"


def summary_rows(rows: list[dict], models: list[str]) -> list[tuple]:
    """Per model: name, PSNR mean/std, SSIM mean/std, LPIPS mean/std (None when not measured), params (text: a
    range where the runs' counts differ), seconds per step, runs; models ranked by mean PSNR."""
    out = []
    for name in models:
        sel = [r for r in rows if r["model"] == name]
        if not sel:
            continue
        p, sp = _mean_std([r["psnr"] for r in sel])
        s, ss = _mean_std([r["ssim"] for r in sel])
        lp_values = [r["lpips"] for r in sel if r.get("lpips") is not None]
        lp, slp = _mean_std(lp_values) if len(lp_values) == len(sel) else (None, None)
        counts = sorted({r["params"] for r in sel})  # (grey and colour images: fewer outputs, fewer parameters)
        params = f"{counts[0]:,}" + (f"–{counts[-1]:,}" if len(counts) > 1 else "")
        out.append((name, p, sp, s, ss, lp, slp, params, statistics.mean(r["seconds_per_step"] for r in sel),
                    len(sel)))
    return sorted(out, key=lambda t: -t[1])


def _per_run(rows: list[dict], model: str, width) -> dict:
    """PSNR per run, ``(image, seed) -> psnr``, of ``model`` at ``width``: methods are compared on the runs both
    have finished, as `bench compare` does (per image with its seeds averaged, a method with more seeds
    finished than another was set against it)."""
    return {(r["image"], r.get("seed", 0)): r["psnr"] for r in rows if r["model"] == model and r["width"] == width}


def width_table(rows: list[dict], models: list[str], widths, protocol: dict) -> str:
    """Mean PSNR per width and method; with FINER in the grid, its lead over the best other method,
    each difference taken over the runs (image and seed) both have finished (so a grid in progress compares
    fairly)."""
    lead = "finer" in models and len(models) > 1
    head = "| width | " + " | ".join(models) + (" | FINER lead (dB) | FINER ahead on |" if lead else "")
    seeds = len(protocol.get("seeds") or [0])
    runs = "images" if seeds == 1 else "runs (image and seed)"
    lines = [_protocol_line({**protocol, "width": "varied"}, spread=False), "",
             f"Mean PSNR (dB) over the {runs} each method has finished (their count in brackets when not all):",
             "", head, "|---|" + "---|" * (len(models) + 2 * lead)]
    planned = (protocol.get("images") or 0) * seeds
    for w in widths:
        per = {m: _per_run(rows, m, w) for m in models}
        diverged = {m for m in models if any(r["model"] == m and r["width"] == w and r.get("status") == "diverged"
                                              for r in rows)}
        cells = [(f"{mean(per[m].values()):.2f}" + ("" if len(per[m]) == planned else f" ({len(per[m])})")
                  + (" †" if m in diverged else "")) if per[m] else "-" for m in models]
        if lead:
            gaps, ahead, pairs = [], 0, 0
            for m in models:
                common = set(per["finer"]) & set(per[m]) if m != "finer" else set()
                if common:
                    diffs = [psnr_difference(per["finer"][i], per[m][i]) for i in common]
                    gaps.append(mean(diffs))
                    ahead += sum(d > 0 for d in diffs)
                    pairs += len(diffs)
            cells += [f"{min(gaps):+.2f}", f"{ahead}/{pairs}"] if gaps else ["-", "-"]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    if lead:
        pair = "(image, method) pairs" if seeds == 1 else "(image, seed, method) triples"
        lines += ["", f"FINER lead: FINER's mean PSNR minus that of the best other method, each over the {runs} both "
                      f"finished; FINER ahead on: {pair} where FINER's PSNR is higher."]
    return "\n".join(lines) + "\n" + _diverged_note(rows, curves=False)


def width_plot(rows: list[dict], models: list[str], widths, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    cells = {(m, w): per for m in models for w in widths if (per := _per_run(rows, m, w))}
    full = max((len(per) for per in cells.values()), default=0)
    partial = False
    for m in models:
        pts = [(w, mean(cells[m, w].values()), len(cells[m, w])) for w in widths if (m, w) in cells]
        if not pts:
            continue
        (line,) = ax.plot([w for w, _, _ in pts], [p for _, p, _ in pts], "o-", label=m)
        for w, p, n in pts:
            if n < full:  # a mean over fewer runs than the others: hollow, with its count
                partial = True
                ax.plot([w], [p], "o", markerfacecolor="white", markeredgecolor=line.get_color(), zorder=3)
                ax.annotate(f"{n} of {full}", (w, p), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=line.get_color())
    if partial:
        ax.set_title("hollow: mean over fewer runs (grid not finished)", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden width (2 hidden layers)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
