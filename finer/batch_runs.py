"""``finer fit image DIR --batch-signals K``: fit a folder of same-sized images, K networks at once.

Without ``--batch-signals`` (K = 1) a folder is fitted image by image, each a single ``finer fit image`` run
(any sizes, ``--batch-size`` and every method allowed; each run resumable alone).

Every image gets its own network, built with the run's seed exactly as a single ``finer fit image``
would build it, and the K networks of a group are trained together as one
:class:`~finer.nn.stacked.StackedMLP` (full batch). Each image then gets its own folder under
``OUT`` (``reconstruction.png``, ``error_map.png``, ``metrics.json``, ``checkpoint.pt`` that
``finer render`` reads) and ``OUT/summary.json`` lists them all with the throughput.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from finer import io, plots
from finer.errors import ConfigError, DivergedError, FinerError, FinerWarning, InterruptedRun
from finer.metrics import psnr, psnr_from_mse, ssim
from finer.models import build_model, count_parameters, network_shape
from finer.nn.fused import apply_fused
from finer.nn.stacked import StackedMLP
from finer.runs import RUN_FILES, ImageRunConfig, _prepare_out, precision_note, resolve_device
from finer.tasks import image as img
from finer.train import TrainConfig, fit, graph_problem


@dataclass
class StackedImageTask:
    """K images of one shape, full batch: the loss is the sum of the per-image mean squared errors."""

    images: np.ndarray  # (K, H, W, C) in [0, 1]
    target_range: tuple[float, float]
    device: torch.device
    aspect: str = "stretch"
    keep_signal_losses: bool = False
    """Keep every step's per-image losses (on the device; :meth:`signal_psnrs` reads them at the end)."""

    def __post_init__(self):
        k, h, w, c = self.images.shape
        self.count, self.height, self.width, self.channels = k, h, w, c
        self.coords = img.coordinate_grid(h, w, self.aspect).to(self.device)
        pixels = torch.from_numpy(self.images.reshape(k, h * w, c))
        self.targets = img.to_range(pixels, *self.target_range).to(self.device)
        self.signal_losses: list[Tensor] = []

    @property
    def replayable(self) -> bool:
        """The same tensors every step, and a loss that keeps nothing unless asked to."""
        return not self.keep_signal_losses

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self.coords, self.targets

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        per_signal = ((pred - target) ** 2).mean(dim=(1, 2))
        if self.keep_signal_losses:
            self.signal_losses.append(per_signal.detach())
        return per_signal.sum()

    def signal_psnrs(self) -> np.ndarray:
        """``(steps, K)``: each image's training PSNR at every step (as a single fit's ``train_psnr``)."""
        low, high = self.target_range
        losses = torch.stack(self.signal_losses).cpu().double().numpy() / (high - low) ** 2
        return np.array([[psnr_from_mse(v) for v in row] for row in losses])

    def step_metrics(self, loss: float) -> dict[str, float]:
        low, high = self.target_range
        return {"train_psnr": psnr_from_mse(loss / self.count / (high - low) ** 2)}  # of the mean MSE


def fit_stacked(models: list, images: np.ndarray, train_cfg: TrainConfig, device, *, aspect: str = "stretch",
                keep_signal_losses: bool = False, progress: bool = True, desc: str | None = None):
    """Train ``models`` (one network per image of ``images``, all of one method and shape) together as one
    :class:`~finer.nn.stacked.StackedMLP`, full batch. Returns the training state, the task (which holds
    the per-image losses when ``keep_signal_losses``) and the K trained networks, unstacked."""
    stacked = StackedMLP(models)  # (refuses networks of other activations)
    for key in ("lr", "target_range"):  # one optimiser and one task for all
        if len({tuple(np.atleast_1d(getattr(m.config, key))) for m in models}) > 1:
            raise FinerError(f"the networks to fit as one stack differ in their {key}")
    task = StackedImageTask(images, tuple(models[0].config.target_range), device, aspect, keep_signal_losses)
    state = fit(stacked, task, train_cfg, progress=progress, desc=desc)
    return state, task, stacked.unstack()


def list_images(directory) -> list[Path]:
    from finer.bench.images import list_images as _list

    return _list(directory)


def fit_image_folder(cfg: ImageRunConfig, directory, out, *, batch_signals: int, progress: bool = True,
                     overwrite: bool = False, log=io.quiet) -> dict[str, Any]:
    """Fit every image of ``directory``, ``batch_signals`` at a time; returns the summary."""
    from finer.bench.images import stackable

    cfg.validate()
    if batch_signals < 1:
        raise FinerError(f"batch-signals must be >= 1, got {batch_signals}")
    if not stackable(cfg.model) and batch_signals > 1:
        raise FinerError(f"method {cfg.model!r} has learnable activations or encodings, so its networks cannot be "
                         "stacked; drop --batch-signals to fit the images one by one")
    if cfg.batch_size is not None and batch_signals > 1:
        raise FinerError("stacked networks (--batch-signals) train on full batches; drop --batch-size, or "
                         "--batch-signals to fit the images one by one")
    paths = list_images(directory)
    written = ["summary.json", *RUN_FILES, *(str(Path(p.stem) / name) for p in paths for name in RUN_FILES)]
    for path in paths:  # an --overwrite would delete it
        io.check_not_an_output(path, out, written, "image")
    # before anything is written (an --overwrite deletes the earlier fit): every image readable and within
    # memory (read one at a time: a folder can be larger than the memory), the options, the device
    device = resolve_device(cfg.device)
    budget = img.memory_budget(device)
    decoded, shapes, kept_bytes, keep = {}, [], 0, img.memory_budget(torch.device("cpu")) // 16
    for i, path in enumerate(paths):
        image = img.load_image(path, crop=cfg.crop, size=cfg.size, alpha=cfg.alpha, max_bytes=budget)
        shapes.append(image.shape)
        if kept_bytes + image.nbytes <= keep:  # kept for the fit (not decoded again): 1/32 of the available memory
            decoded[i], kept_bytes = image, kept_bytes + image.nbytes
        del image
    probe = build_model(cfg.model, 2, shapes[0][-1], seed=cfg.seed, **cfg.model_options)
    problem = cfg.cuda_graph and graph_problem(device)  # (the stacked tasks are full-batch; single runs check theirs)
    if problem:
        raise ConfigError(problem)
    if len(set(shapes)) > 1 and batch_signals > 1:
        listing = ", ".join(f"{p.name} {h}x{w}x{c}" for p, (h, w, c) in zip(paths, shapes))
        channels = "" if len({c for *_, c in shapes}) == 1 else (
            "; their channels differ too (grey, RGB, RGBA): convert them or leave some out")
        raise FinerError("stacked networks (--batch-signals) need images of one shape; these differ (height x "
                         f"width x channels: {listing}): "
                         "--crop HxW makes them equal (--size only scales the longer side, keeping each aspect "
                         f"ratio){channels}; or drop --batch-signals to fit them one by one")
    if batch_signals == 1:  # nothing to stack: each image a full, resumable single run
        decoded.clear()
        return _fit_one_by_one(cfg, directory, paths, Path(out), progress=progress, overwrite=overwrite, log=log)
    _check_stack_memory(probe.config, shapes[0], min(batch_signals, len(paths)), budget)
    del probe
    note = precision_note(cfg.precision, device)
    if note:  # done otherwise than asked: a warning, as a single fit gives
        warnings.warn(note, FinerWarning, stacklevel=2)
    out = Path(out)
    _prepare_out(out, overwrite, kind="image folder")
    for folder in (out, *(out / p.stem for p in paths)):
        io.warn_stale_outputs(folder, "the network of the run this one overwrites")
    # an earlier run's files, of a folder fit or a single one: none may pass for this run's
    _remove_earlier_images(out, paths)
    io.remove_outputs(out, ["summary.json", *RUN_FILES, *(Path(p.stem) / name for p in paths for name in RUN_FILES)])
    rows, total_seconds = [], 0.0
    for start in range(0, len(paths), batch_signals):
        group = list(range(start, min(start + batch_signals, len(paths))))
        images = {i: decoded.pop(i) if i in decoded else
                  img.load_image(paths[i], crop=cfg.crop, size=cfg.size, alpha=cfg.alpha, max_bytes=budget)
                  for i in group}
        models = [build_model(cfg.model, 2, shapes[0][-1], seed=cfg.seed, **cfg.model_options).to(device)
                  for _ in group]
        fused = [apply_fused(m, cfg.fused, cfg.steps) for m in models][0]
        train_cfg = TrainConfig(steps=cfg.steps, lr=models[0].config.lr, eval_every=0, checkpoint_every=0,
                                log_every=cfg.log_every, precision=cfg.precision, cuda_graph=cfg.cuda_graph)
        state, _, trained = fit_stacked(models, np.stack([images[i] for i in group]), train_cfg, device,
                                        aspect=cfg.aspect, progress=progress,
                                        desc=f"images {group[0] + 1}-{group[-1] + 1}/{len(paths)}")
        names = ", ".join(paths[i].name for i in group)
        if state.status == "interrupted":
            raise InterruptedRun(f"{state.message} while fitting {names}; {_kept(rows, out)} (a folder fit does "
                                 "not resume: fit it again with --overwrite)")
        total_seconds += state.train_seconds
        for model, i in zip(trained, group):  # a diverged group: each network at its last good step
            rows.append(_write_one(out / paths[i].stem, model, paths[i], images[i], cfg, state, len(group), fused,
                                   device))
            log(_said(rows[-1]))
    return _write_summary(out, directory, cfg, batch_signals, rows, total_seconds, str(device))


def _check_stack_memory(mcfg, shape: tuple, count: int, budget: int) -> None:
    """Refuse a stack of ``count`` full-batch fits of ``shape`` images that would not fit in ``budget``
    bytes (a single fit would train on random batches instead; a stack cannot)."""
    h, w, _ = shape
    one = img.full_batch_bytes(h * w, mcfg.width, mcfg.hidden_layers + 1, mcfg.complex_weights)
    if count * one > budget:
        fits = budget // one
        hint = (f"--batch-signals {fits} fits" if fits >= 2 else
                "not even two fit: drop --batch-signals to fit the images one by one (on random batches if need be)")
        raise FinerError(f"{count} stacked full-batch fits of {h}x{w} images need about {count * one / 2**30:.1f} GiB, "
                         f"more than the {budget / 2**30:.1f} GiB a run may use; {hint}")


def _write_summary(out: Path, directory, cfg: ImageRunConfig, batch_signals: int, rows: list[dict],
                   total_seconds: float, device: str) -> dict[str, Any]:
    """``OUT/summary.json``; ``diverged`` lists the images whose loss diverged (kept at their last good
    step, and counted in the means as such)."""
    summary = {"directory": str(directory), "images": len(rows), "batch_signals": min(batch_signals, len(rows)),
               "model": cfg.model, "steps": cfg.steps, "seed": cfg.seed, "device": device,
               "train_seconds": total_seconds, "images_per_second": len(rows) / max(total_seconds, 1e-12),
               "mean_psnr": float(np.mean([r["psnr"] for r in rows])),
               "diverged": [r["image"] for r in rows if r["status"] == "diverged"], "runs": rows,
               "run": dataclasses.asdict(cfg), "date": time.strftime("%Y-%m-%d")}
    io.write_json(out / "summary.json", summary)
    return summary


def _row(name: str, metrics: dict) -> dict[str, Any]:
    return {"image": name, **{k: metrics[k] for k in ("status", "steps", "psnr", "ssim", "seconds", "params")}}


def _said(row: dict) -> str:
    return (f"{row['image']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}"
            + (f" (diverged; kept at step {row['steps']})" if row["status"] == "diverged" else ""))


def refresh_summary(run_dir: Path, metrics: dict) -> Path | None:
    """After ``finer resume OUT/IMAGE`` of an image of a folder fit: its row of ``OUT/summary.json`` and the
    totals, from the resumed run's ``metrics``, so the summary does not keep the earlier numbers. The row
    records its steps (the summary's ``steps`` stay the folder's). Returns the summary's path, or ``None``
    where ``run_dir`` is not an image of a folder fit."""
    run_dir = Path(run_dir).resolve()  # (given as "." or through a link: its real parent holds the summary)
    path = run_dir.parent / "summary.json"
    summary = io.read_record(path)
    rows = summary.get("runs") if isinstance(summary.get("runs"), list) else []
    name = Path(str(metrics.get("image", ""))).name
    hits = [i for i, r in enumerate(rows) if isinstance(r, dict) and r.get("image") == name
            and Path(name).stem == run_dir.name]
    if not hits or summary.get("batch_signals") != 1:  # stacked folders are not resumable
        return None
    rows[hits[0]] = {**_row(name, metrics), "resumed": time.strftime("%Y-%m-%d")}
    summary["diverged"] = [r["image"] for r in rows if r.get("status") == "diverged"]
    summary["train_seconds"] = sum(io.stored_number(r["seconds"]) for r in rows)
    summary["images_per_second"] = len(rows) / max(summary["train_seconds"], 1e-12)
    summary["mean_psnr"] = float(np.mean([io.stored_number(r["psnr"]) for r in rows]))  # ("inf": a constant image)
    io.write_json(path, summary)
    return path


def _kept(rows: list[dict], out: Path) -> str:
    if not rows:
        return "no image was finished"
    return f"{len(rows)} image{'s' if len(rows) > 1 else ''} finished before that, in {out}"


def _fit_one_by_one(cfg: ImageRunConfig, directory, paths: list[Path], out: Path, *, progress: bool, overwrite: bool,
                    log) -> dict[str, Any]:
    """A folder of a method whose networks cannot be stacked: each image a single ``finer fit image`` run
    (of any size, in its own folder, resumable with ``finer resume OUT/IMAGE``)."""
    from finer.runs import fit_image

    _prepare_out(out, overwrite, kind="image folder")
    io.warn_stale_outputs(out, "the network of the run this one overwrites")  # (the images' folders: fit_image)
    _remove_earlier_images(out, paths)
    io.remove_outputs(out, ["summary.json", *RUN_FILES])  # an earlier run's (the images' folders: fit_image)
    rows, total_seconds, device = [], 0.0, ""
    for path in paths:
        try:
            metrics = fit_image(dataclasses.replace(cfg, image=str(path)), out / path.stem, progress=progress,
                                overwrite=True)
        except DivergedError:  # a result of the method on this image, kept at its last good step: go on
            metrics = io.read_json(out / path.stem / "metrics.json")
        except InterruptedRun as stopped:
            raise InterruptedRun(f"{stopped.metrics.get('message', 'interrupted')} while fitting {path.name}; "
                                 f"{_kept(rows, out)} "
                                 "(a folder fit does not resume: fit it again with --overwrite; `finer resume "
                                 f"{out / path.stem}` finishes {path.name} alone)", stopped.metrics) from None
        total_seconds += metrics["seconds"]
        device = metrics["device"]
        rows.append(_row(path.name, metrics))
        log(_said(rows[-1]))
    return _write_summary(out, directory, cfg, 1, rows, total_seconds, device)


def _remove_earlier_images(out: Path, paths: list[Path]) -> None:
    """The run files of the images an earlier folder fit in ``out`` listed (its summary.json) that this one
    does not fit, and their folders when nothing else is left in them: none may pass for this fit's. A link,
    or a folder holding this fit's own images (refitting an earlier run's pictures), is left alone."""
    rows = io.read_record(out / "summary.json").get("runs")
    stems = {p.stem for p in paths}
    inputs = [q for p in paths for q in (p.absolute(), p.resolve())]  # (a link among them: both places)
    for row in rows if isinstance(rows, list) else []:
        stem = Path(str(row.get("image", ""))).stem if isinstance(row, dict) else ""
        folder = out / stem
        if (not stem or stem in stems or folder.is_symlink() or not folder.is_dir()
                or folder.resolve().parent != out.resolve()
                or any(f in p.parents for f in (folder.absolute(), folder.resolve()) for p in inputs)):
            continue
        io.remove_outputs(folder, RUN_FILES)
        with contextlib.suppress(OSError):
            folder.rmdir()  # (only if empty)


def _write_one(folder: Path, model, path: Path, image: np.ndarray, cfg: ImageRunConfig, state, group_size: int,
               fused: dict, device) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    h, w, c = image.shape
    mcfg = model.config
    pred = img.predict_image(model.eval(), h, w, target_range=tuple(mcfg.target_range), aspect=cfg.aspect,
                             chunk=cfg.eval_chunk, device=device)
    img.save_image(pred, folder / "reconstruction.png")
    plots.error_map(pred, image, folder / "error_map.png")
    seconds = state.train_seconds / group_size
    metrics = {"task": "image", "model": cfg.model, "status": state.status, "params": count_parameters(model),
               **network_shape(mcfg),
               "steps": state.step, "steps_planned": cfg.steps, "psnr": round(psnr(pred, image), 4),
               "ssim": round(ssim(pred, image), 5),
               "seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(state.step, 1), 5),
               "device": str(device), "fused": fused["fused"], "precision": cfg.precision,
               **({"precision_note": note} if (note := precision_note(cfg.precision, device)) else {}),
               "image": str(path.resolve()),
               "image_height": h, "image_width": w, "image_channels": c, "lr": mcfg.lr, "seed": cfg.seed,
               "batch_signals": group_size,
               "note": "trained with the other images of its group as one stacked network; seconds are the "
                       "group's divided by its size"}
    io.save_checkpoint(folder / "checkpoint.pt", model=model, extra={
        "model": model.state_dict(), "fit": {"step": state.step, "status": state.status},
        "task": {"kind": "image", "height": h, "width": w, "channels": c,
                 "target_range": list(mcfg.target_range), "aspect": cfg.aspect}})
    io.write_json(folder / "metrics.json", metrics)  # last: a metrics.json says the folder is whole
    return _row(path.name, metrics)
