"""``finer bench images``: fit every image of a folder with several models and tabulate the results.

Each (image, model) run writes ``runs/IMAGE-MODEL.json``; a rerun skips runs already written, so
an interrupted grid resumes where it stopped. ``official-finer`` is the eager reference of the
official code (:mod:`finer.bench.reference`), trained by the same loop on the same data.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from pathlib import Path

import torch

from finer import io
from finer.bench.reference import OfficialFiner
from finer.errors import FinerError
from finer.metrics import psnr, ssim
from finer.models import MODELS, build_model, count_parameters
from finer.runs import resolve_device
from finer.tasks.image import ImageTask, load_image
from finer.train import TrainConfig, fit

REFERENCE = "official-finer"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _build(name: str, channels: int, width: int, hidden_layers: int, seed: int):
    if name == REFERENCE:
        torch.manual_seed(seed)
        model = OfficialFiner(2, channels, width=width, hidden_layers=hidden_layers)
        return model, model.lr, model.target_range
    model = build_model(name, 2, channels, seed=seed, width=width, hidden_layers=hidden_layers)
    return model, model.config.lr, tuple(model.config.target_range)


def run_one(path: Path, name: str, *, steps: int, width: int, hidden_layers: int, crop, size, seed: int,
            device: torch.device, progress: bool) -> dict:
    """One fit at the method's defaults; returns its metrics row."""
    image = load_image(path, crop=crop, size=size)
    model, lr, target_range = _build(name, image.shape[-1], width, hidden_layers, seed)
    model = model.to(device)
    task = ImageTask(image, target_range, device, seed=seed)
    cfg = TrainConfig(steps=steps, lr=lr, eval_every=0, checkpoint_every=0, log_every=50)
    state = fit(model, task, cfg, progress=progress, desc=f"{path.stem}/{name}")
    pred = task.predict(model)
    return {
        "image": path.name, "model": name, "status": state.status, "steps": state.step,
        "psnr": psnr(pred, image), "ssim": ssim(pred, image), "params": count_parameters(model),
        "seconds": state.train_seconds, "seconds_per_step": state.train_seconds / max(state.step, 1),
        "lr": lr, "width": width, "hidden_layers": hidden_layers, "crop": crop, "size": size, "seed": seed,
        "height": image.shape[0], "image_width": image.shape[1], "device": str(device),
    }


def run_image_bench(directory, *, models, steps, hidden_layers, width, crop, size, limit, seed, out, device, progress):
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FinerError(f"not a folder of images: {directory}")
    unknown = [m for m in models if m not in MODELS and m != REFERENCE]
    if unknown:
        raise FinerError(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join([*MODELS, REFERENCE])}")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not images:
        raise FinerError(f"no images in {directory}")
    dev = resolve_device(device)
    protocol = {"directory": str(directory), "images": len(images), "steps": steps, "hidden_layers": hidden_layers,
                "width": width, "crop": crop, "size": size, "seed": seed, "device": str(dev), "full_batch": True,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    rows = []
    for path in images:
        for name in models:
            record = out / "runs" / f"{path.stem}-{name}.json"
            if record.exists():
                rows.append(io.read_json(record))
                continue
            row = run_one(path, name, steps=steps, width=width, hidden_layers=hidden_layers, crop=crop, size=size,
                          seed=seed, device=dev, progress=progress)
            io.write_json(record, row)
            rows.append(row)
            print(f"{path.name} {name:14s} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
                  f"{row['seconds_per_step']:.3f} s/step", flush=True)
            _write_results(out, rows, models, protocol)  # partial results stay readable
    _write_results(out, rows, models, protocol)
    return rows


def _write_results(out: Path, rows: list[dict], models: list[str], protocol: dict) -> None:
    protocol = {**protocol, "runs_done": len(rows)}
    io.write_csv(out / "results.csv", rows)
    io.write_json(out / "results.json", {"protocol": protocol, "runs": rows})
    text = summary_table(rows, models, protocol)
    io.atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))


def summary_table(rows: list[dict], models: list[str], protocol: dict) -> str:
    """Markdown table of mean ± std PSNR/SSIM and speed per model."""
    lines = [
        f"Protocol: {protocol['images']} images from `{protocol['directory']}`, centre crop {protocol['crop']}"
        f"{', resized to ' + str(protocol['size']) if protocol['size'] else ''}, "
        f"{protocol['hidden_layers']}x{protocol['width']} network (hidden layers x width), {protocol['steps']} full-batch steps, "
        f"each method's default learning rate, seed {protocol['seed']}, {protocol['device']} "
        f"({protocol['machine']}), torch {protocol['torch']}, {protocol['date']}; "
        f"{protocol['runs_done']} runs. PSNR/SSIM of the clipped prediction on [0, 1].",
        "",
        "| model | PSNR (dB) | SSIM | params | s/step |",
        "|---|---|---|---|---|",
    ]
    for name in models:
        sel = [r for r in rows if r["model"] == name]
        if not sel:
            continue
        p = [r["psnr"] for r in sel]
        s = [r["ssim"] for r in sel]
        sd = statistics.stdev(p) if len(p) > 1 else math.nan
        ss = statistics.stdev(s) if len(s) > 1 else math.nan
        lines.append(f"| {name} | {statistics.mean(p):.2f} ± {sd:.2f} | {statistics.mean(s):.4f} ± {ss:.4f} "
                     f"| {sel[0]['params']:,} | {statistics.mean(r['seconds_per_step'] for r in sel):.3f} |")
    return "\n".join(lines) + "\n"
