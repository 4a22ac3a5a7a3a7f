"""``finer bench sdf``: fit every mesh of a folder with several models; Chamfer/IoU table and renders.

Each (mesh, model) run keeps its folder under ``OUT/runs/MESH-MODEL/`` (metrics, render, extracted
mesh); a rerun skips finished runs. ``summary.md`` tabulates Chamfer and IoU per shape and method.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch

from finer import io
from finer.bench import check_models, check_record, check_run_names
from finer.errors import DivergedError, FinerError, InterruptedRun
from finer.models import MODELS
from finer.runs import check_bench_out
from finer.sdf_run import SDFRunConfig, check_measuring_memory, fit_sdf
from finer.tasks.sdf import load_mesh, normalize

MESH_SUFFIXES = {".obj", ".ply", ".stl", ".off", ".glb", ".gltf"}

QUICK = dict(steps=1000, batch_size=5_000, pool_size=500_000, surface_samples=500_000, resolution=128,
             iou_resolution=128, chamfer_samples=100_000)
"""The CPU-sized protocol: 1000 steps of 5,000 points, marching cubes at 128^3, 100k Chamfer samples."""

FINISHED = ("complete", "diverged")
"""Run states a rerun keeps: a diverged run is the method's result (it would diverge again), scored at
its last good step and marked in the tables."""


def run_sdf_bench(directory, *, models, out, settings=None, device="auto", progress=True) -> list[dict]:
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FinerError(f"not a folder of meshes: {directory}")
    meshes = sorted(p for p in directory.iterdir() if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
    if not meshes:
        raise FinerError(f"no meshes in {directory}")
    io.check_unique_stems(meshes, "meshes")
    check_models(models, list(MODELS))
    settings = {**QUICK, **(settings or {})}
    SDFRunConfig(mesh=str(meshes[0]), **settings).validate()  # bad settings: refused before any run
    for path in meshes:  # so are unreadable meshes, and grids too large to measure on one of them
        area = normalize(load_mesh(path, orient=False))[0].area
        check_measuring_memory(settings["resolution"], settings["iou_resolution"], area,
                               **{k: settings[k] for k in ("surface_samples", "pool_size", "chamfer_samples")})
    check_run_names([(_run_name(path, name), path, name) for name in models for path in meshes], "mesh")
    check_bench_out(out, "sdf")
    plan = [(name, path) for name in models for path in meshes]  # method-major: the first methods cover all shapes
    results: dict[tuple, dict] = {}  # the finished runs' records, read before any table is rewritten or run trained
    for name, path in plan:
        run_dir = out / "runs" / _run_name(path, name)
        done = run_dir / "metrics.json"
        recorded = io.read_json(done) if done.exists() else {}
        if isinstance(recorded, dict) and recorded.get("status") in FINISHED:
            check_record(recorded, str(done), numbers=("chamfer", "iou", "seconds_per_step"), texts=("model", "status"))
            mismatch = _protocol_mismatch(run_dir, SDFRunConfig(mesh=str(path), model=name, device=device, **settings))
            if mismatch:
                raise FinerError(f"{run_dir} is a run of another protocol or mesh ({mismatch}); write this grid "
                                 "to another --out, or delete that folder's runs")
            results[name, path] = {"shape": path.stem, **recorded}
    skipped = len(results)

    def tabulated() -> list[dict]:  # every finished run, in the plan's order
        return [results[key] for key in plan if key in results]

    for name, path in plan:
        if (name, path) not in results:
            run_dir = out / "runs" / _run_name(path, name)
            cfg = SDFRunConfig(mesh=str(path), model=name, device=device, **settings)
            try:
                metrics = fit_sdf(cfg, run_dir, progress=progress, overwrite=True, log=lambda *_: None)
            except DivergedError as exc:  # a result of the method: recorded (scored at its last good step), not fatal
                metrics = exc.metrics
            except InterruptedRun:  # not a result: a rerun fits it again
                raise KeyboardInterrupt from None
            results[name, path] = {"shape": path.stem, **{k: v for k, v in metrics.items() if k != "out"}}
            chamfer = (f"{metrics['chamfer']:.3e}" if metrics["chamfer"] is not None else
                       "none (surface too large to hold)" if metrics.get("vertices") is None else "none (no surface)")
            print(f"{path.stem:10s} {name:8s} chamfer {chamfer} IoU {metrics['iou']:.4f} "
                  f"{metrics['seconds_per_step']:.3f} s/step"
                  + (f" (diverged: {metrics.get('message', '')})" if metrics["status"] == "diverged" else ""),
                  flush=True)
            _write(out, tabulated(), models, meshes, settings)
    rows = tabulated()
    _write(out, rows, models, meshes, settings, trained=skipped < len(rows))
    if skipped:
        print(f"{skipped} of {len(models) * len(meshes)} runs were already finished in {out / 'runs'}: skipped",
              flush=True)
    print(f"{len(rows)} runs: " + ", ".join(str(out / name) for name in ("summary.md", "results.json", "results.csv")),
          flush=True)
    return rows


def _run_name(mesh: Path, model: str) -> str:
    return f"{mesh.stem}-{model}"


def _protocol_mismatch(run_dir: Path, cfg: SDFRunConfig) -> str:
    """How the finished run in ``run_dir`` differs from ``cfg`` in what it recorded (its config.json's
    settings and its mesh's SHA-256); empty if it does not. Runs are named by mesh and method only, so a
    rerun with other settings must not take old runs as its own."""
    config = io.read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    recorded = config.get("run", {}) if isinstance(config, dict) else {}
    wanted = {k: v for k, v in dataclasses.asdict(cfg).items() if k in QUICK or k in ("model", "seed", "grad_clip")}
    if config.get("mesh_sha256"):  # recorded since 2026-11-28; older runs are compared on their settings
        wanted["mesh_sha256"] = io.file_digest(cfg.mesh)
        recorded = {**recorded, "mesh_sha256": config["mesh_sha256"]}
    return ", ".join(f"{k} {recorded.get(k)} where this grid has {v}"
                     for k, v in wanted.items() if recorded.get(k) != v)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3e}"


def _write(out: Path, rows, models, meshes, settings, trained: bool = True) -> None:
    """The grid's tables; ``trained``: this command trained a run (else the run conditions stay the earlier
    tables', which describe the machine the runs were trained on)."""
    planned = len(models) * len(meshes)
    conditions = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d")}
    if not trained:
        earlier = io.read_record(out / "results.json").get("protocol")
        if isinstance(earlier, dict) and all(isinstance(earlier.get(k), str) for k in conditions):
            conditions = {k: earlier[k] for k in conditions}
    protocol = {**settings, "hidden_layers": 2, "width": 256, "lr": 1e-4, "optimizer": "Adam (AMSGrad), constant lr",
                "grad_clip": 1.0, "finer_k": 1.0, **conditions, "runs_done": len(rows), "runs_planned": planned}
    io.write_json(out / "results.json", {"protocol": protocol, "runs": rows})
    io.write_csv(out / "results.csv", rows)
    shapes = [m.stem for m in meshes]
    lines = [
        f"Protocol: {settings['steps']} steps of {settings['batch_size']} points (half coarse, weight 1e-2), pool of "
        f"{settings['pool_size']} precomputed points, 2 x 256 networks, Adam (AMSGrad) lr 1e-4 constant, gradient "
        f"clip 1, FINER k = 1; marching cubes at {settings['resolution']}^3; Chamfer with "
        f"{settings['chamfer_samples']} samples per surface (normalised frame, longest side 0.9); IoU on a "
        f"{settings['iou_resolution']}^3 grid. {protocol['machine']}, torch {protocol['torch']}, {protocol['date']}; "
        f"{len(rows)} runs" + (f" of {planned} planned" if len(rows) < planned else "") + ".", "",
        "Chamfer distance (lower is better):", "",
        "| shape | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    cell = {(r["shape"], r["model"]): r for r in rows}
    for key, fmt in (("chamfer", _fmt), ("iou", lambda v: "-" if v is None else f"{v:.4f}")):
        if key == "iou":
            lines += ["", "IoU (higher is better):", "", "| shape | " + " | ".join(models) + " |",
                      "|---|" + "---|" * len(models)]
        for s in shapes:
            lines.append(f"| {s} | " + " | ".join(_cell(cell.get((s, m)), key, fmt) for m in models) + " |")
        means = []
        for m in models:
            vals = [cell[(s, m)][key] for s in shapes if (s, m) in cell and cell[(s, m)][key] is not None]
            count = "" if len(vals) == len(shapes) else f" ({len(vals)} of {len(shapes)})"
            means.append(fmt(statistics.mean(vals)) + count if vals else "-")
        lines.append("| **mean** | " + " | ".join(means) + " |")
    if any(r["status"] == "diverged" for r in rows):
        lines += ["", "† the loss diverged; scored at the last good step, whose checkpoint the run keeps."]
    if len(rows) < planned:
        lines += ["", "not run: the grid has not trained this run yet (rerun the command to finish it); a mean over "
                      "fewer shapes than the grid's gives their count."]
    if any(r.get("chamfer") is None for r in rows):
        lines += ["", "A Chamfer distance of - in a finished run: no surface was measured (none crossed zero, or it "
                      "was too large to hold; the run's `surface_note` says which); the means leave it out."]
    text = "\n".join(lines) + "\n"
    io.atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))


def _cell(row, key: str, fmt) -> str:
    if row is None:
        return "not run"
    return fmt(row[key]) + (" †" if row["status"] == "diverged" else "")


