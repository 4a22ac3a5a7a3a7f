"""SDF runs: ``finer fit sdf MESH`` and ``finer eval sdf CHECKPOINT --mesh MESH``.

A run folder holds ``config.json``, ``checkpoint.pt`` (with the normalisation, so outputs can be
put back in the mesh's units), ``curve.csv``, ``mesh.ply`` (the extracted surface in the mesh's
own units), ``render.png`` (ground truth above, fit below) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from finer import io
from finer.errors import ConfigError, FinerError, FinerWarning, InterruptedRun
from finer.models import build_model, count_parameters, make_config, network_shape, plain_numbers
from finer.nn.fused import apply_fused
from finer.render3d import render_meshes
from finer.runs import _prepare_out, finished, resolve_device
from finer.tasks import sdf as S
from finer.tasks.image import memory_budget
from finer.train import FitState, TrainConfig, curve_columns, fit, fit_record

RUN_FILES = ("config.json", "checkpoint.pt", "curve.csv", "metrics.json", "mesh.ply", "render.png")
"""The files an SDF run writes; ``--overwrite`` deletes these (and only these) before the new run starts."""

SDF_DEFAULTS = {"hidden_layers": 2, "lr": 1e-4}
"""The official SDF scripts' network and learning rate (2 x 256, constant 1e-4); FINER also k = 1."""


@dataclass
class SDFRunConfig:
    """Everything that defines an SDF fit; saved as ``config.json`` in the run folder."""

    mesh: str
    """Path of the mesh (OBJ, PLY, STL, OFF, ...)."""
    model: str = "finer"
    """A registry name."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of the SDF defaults (hidden_layers 2, lr 1e-4, FINER first_bias_scale 1)."""
    steps: int = 2000
    """Optimisation steps (the paper: 200,000)."""
    batch_size: int = 10_000
    """Points per step, half coarse and half fine."""
    pool_size: int = 1_000_000
    """Training points precomputed with their signed distances (sampled from each step)."""
    surface_samples: int = 500_000
    """Dense surface samples that define the ground-truth distance."""
    resolution: int = 256
    """Marching-cubes grid (the paper: 512)."""
    iou_resolution: int = 128
    """Occupancy grid of the IoU."""
    chamfer_samples: int = 300_000
    """Surface samples per mesh for the Chamfer distance."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    seed: int = 0
    """Seed of sampling and initialisation."""
    eval_every: int = 500
    """Steps between near-surface error evaluations."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    device: str = "auto"
    """auto, cpu or cuda."""
    fused: str = "auto"
    """Activations: compile, eager, off, or auto (compile for 500+ steps); see finer.nn.fused."""

    def __post_init__(self):
        plain_numbers(self)  # (NumPy scalars)

    def validate(self) -> None:
        check_sizes(**{name: getattr(self, name) for name in ("steps", "batch_size", "pool_size", "surface_samples",
                                                              "chamfer_samples", "resolution", "iou_resolution")})
        if self.pool_size < max(self.batch_size, 2):
            raise ConfigError(f"pool-size must be at least batch-size and 2 (half coarse points, half fine), "
                              f"got {self.pool_size}")


GRIDS = ("resolution", "iou_resolution")


def _surface_index(unit, samples: int, seed: int, mesh_path) -> S.SurfaceIndex:
    """The ground truth's :class:`~finer.tasks.sdf.SurfaceIndex`; a refusal names the mesh (a benchmark fits many)."""
    try:
        return S.SurfaceIndex(unit, samples, seed)
    except FinerError as exc:
        raise FinerError(f"{mesh_path}: {exc}") from None


def check_sizes(**sizes: Any) -> None:
    """Counts must be positive integers, and grids (``resolution``, ``iou_resolution``) at least 8 a side."""
    for name, value in sizes.items():
        least = 8 if name in GRIDS else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            what = "an integer >= 8" if least == 8 else "a positive integer"
            raise ConfigError(f"{name.replace('_', '-')} must be {what}, got {value!r}")


def sdf_model_options(model: str, overrides: dict[str, Any]) -> dict[str, Any]:
    options = dict(SDF_DEFAULTS)
    fields = make_config(model).__dataclass_fields__
    if "first_bias_scale" in fields:
        options["first_bias_scale"] = 1.0
    return {**options, **overrides}


SAMPLE_BYTES = {"surface_samples": 200, "pool_size": 120, "chamfer_samples": 150}
"""Host memory per point, about: a ground-truth surface sample (coordinates, normal, KD-tree, sampling's
temporaries), a training point (its coordinates and distance, on the host and the device), a Chamfer sample
(on both surfaces, with their trees)."""


def check_measuring_memory(resolution: int, iou_resolution: int, area: float, **samples: int) -> None:
    """Refuse grids whose measurement, or sample counts (``surface_samples``, ``pool_size``,
    ``chamfer_samples``: :data:`SAMPLE_BYTES`) whose arrays, would not fit in memory, before any training
    or evaluation."""
    budget = memory_budget(torch.device("cpu"))
    held = sum(SAMPLE_BYTES[name] * count for name, count in samples.items())
    if held > budget:
        counts = ", ".join(f"{name.replace('_', '-')} {count}" for name, count in samples.items())
        raise ConfigError(f"the sample counts ({counts}) need about {held / 2**30:.1f} GiB of memory, more than the "
                          f"{budget / 2**30:.1f} GiB a run may use (half the available memory); lower them")
    need = S.measuring_memory(resolution, iou_resolution, area)
    if need > budget:
        raise ConfigError(f"measuring the fit at resolution {resolution} (marching cubes) and iou-resolution "
                          f"{iou_resolution} needs about {need / 2**30:.1f} GiB of memory, more than the "
                          f"{budget / 2**30:.1f} GiB a run may use (half the available memory); lower them "
                          "(the paper's marching-cubes grid is 512)")


def evaluate_sdf(model, index: S.SurfaceIndex, true_mesh_unit, norm: S.Normalization, *, resolution: int,
                 iou_resolution: int, chamfer_samples: int, device, out: Path, seed: int = 0,
                 progress: bool = False, before_writing: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Extract the surface, measure Chamfer and IoU, then write the surface (mesh units) and a render.
    ``before_writing``: called once the measurements are in hand, before the first file is written (an
    evaluation claims its folder there, so that a failure on the way loses no earlier evaluation)."""
    model = model.to(device).eval()
    # evaluate the network once when the grids match and the whole grid is small (S.shares_grid)
    shared = S.evaluate_grid(model, resolution, device) if S.shares_grid(resolution, iou_resolution) else None
    iou = S.grid_iou(model, index, iou_resolution, device, values=shared, progress=progress)
    result: dict[str, Any] = {"iou": round(iou, 5), "chamfer": None, "vertices": 0, "faces": 0}
    try:
        surface = S.extract_surface(model, resolution, device, values=shared, progress=progress,
                                    max_bytes=memory_budget(torch.device("cpu")))
        no_surface = (f"the network's SDF does not cross zero on the {resolution}^3 grid: no surface, so no "
                      "mesh.ply and no Chamfer distance (train longer, or check the fit)")
    except S.SurfaceTooLarge as exc:  # a result all the same: the IoU stands, the surface is not measured
        surface, result["vertices"], result["faces"] = None, None, None
        no_surface = (f"{exc}: no mesh.ply and no Chamfer distance; `finer eval sdf RUN --resolution N` measures "
                      "the saved network on a coarser grid")
    if surface is not None:
        result["chamfer"] = S.chamfer_distance(surface, true_mesh_unit, chamfer_samples, seed)
        result.update(vertices=len(surface.vertices), faces=len(surface.faces))
    if before_writing is not None:
        before_writing()
    if surface is not None:
        export = surface.copy()
        export.vertices = norm.to_mesh(surface.vertices)
        io.atomic_write(out / "mesh.ply", lambda tmp: export.export(tmp, file_type="ply"))
    else:  # no surface: an earlier evaluation's mesh must not stay beside this result
        (out / "mesh.ply").unlink(missing_ok=True)
        result["surface_note"] = no_surface
        warnings.warn(no_surface, FinerWarning, stacklevel=2)  # (also in metrics.json / eval.json)
    render_meshes({"ground truth": true_mesh_unit, "fit": surface}, out / "render.png")
    return result


def fit_sdf(cfg: SDFRunConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False,
            log=io.quiet) -> dict[str, Any]:
    """Fit a mesh's SDF; returns the metrics (also in ``out/metrics.json``) and the run folder (``out``).
    The run records the mesh by its absolute path, which ``finer eval sdf`` finds from any folder."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, mesh=str(Path(cfg.mesh).resolve()))
    out = Path(out)
    _prepare_out(out, overwrite, create=False, kind="sdf")
    io.check_not_an_output(cfg.mesh, out, RUN_FILES, "mesh")
    device = resolve_device(cfg.device)
    mesh = S.load_mesh(cfg.mesh)
    model = build_model(cfg.model, 3, 1, seed=cfg.seed, **sdf_model_options(cfg.model, cfg.model_options)).to(device)
    fused = apply_fused(model, cfg.fused, cfg.steps)
    unit, norm = S.normalize(mesh)
    check_measuring_memory(cfg.resolution, cfg.iou_resolution, unit.area, surface_samples=cfg.surface_samples,
                           pool_size=cfg.pool_size, chamfer_samples=cfg.chamfer_samples)
    t0 = time.perf_counter()
    index = _surface_index(unit, cfg.surface_samples, cfg.seed, cfg.mesh)
    points, sdf = S.training_pool(unit, index, cfg.pool_size, cfg.seed)
    prep = time.perf_counter() - t0
    log(f"{Path(cfg.mesh).name}: {len(mesh.faces)} faces, watertight: {mesh.is_watertight}; "
        f"{cfg.pool_size} training points precomputed in {prep:.1f} s")
    task = S.SDFTask(points, sdf, device, batch_size=cfg.batch_size, seed=cfg.seed)
    train = TrainConfig(steps=cfg.steps, lr=model.config.lr, lr_final_factor=1.0, grad_clip=cfg.grad_clip,
                        amsgrad=True, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, log_every=50)
    out.mkdir(parents=True, exist_ok=True)
    io.warn_stale_outputs(out, "the network of the run this one overwrites")
    io.remove_outputs(out, RUN_FILES)  # an overwritten run's files: none may pass for this run's
    io.write_json(out / "config.json", {"task": "sdf", "run": dataclasses.asdict(cfg),
                                        "model": {"name": cfg.model, **dataclasses.asdict(model.config)},
                                        "train": dataclasses.asdict(train), "normalization": dataclasses.asdict(norm),
                                        "sign_method": S.SIGN_METHOD, "device": str(device),
                                        "mesh_sha256": io.file_digest(cfg.mesh)})
    running = {"task": "sdf", "model": cfg.model, "status": "running", "steps": 0, "steps_planned": cfg.steps,
               "mesh": str(cfg.mesh)}
    io.write_json(out / "metrics.json", running)

    def save(state: FitState, snapshot: dict) -> None:
        io.save_checkpoint(out / "checkpoint.pt", model=model, extra={
            "model": snapshot["model"], "optimizer": snapshot["optimizer"],
            "fit": fit_record(state),
            "task": {"kind": "sdf", "mesh": str(cfg.mesh), "normalization": dataclasses.asdict(norm)}})
        io.write_csv(out / "curve.csv", state.history, curve_columns(task))

    with io.failure_recorded(out / "metrics.json"):  # not left saying "running" after an error
        state = fit(model, task, train, on_checkpoint=save, progress=progress, desc=f"{cfg.model} sdf")
        io.write_json(out / "metrics.json", {**running, "steps": state.step, "stage": "measuring the surface"})
        try:
            metrics = _evaluate_and_record(cfg, model, state, mesh, index, unit, norm, prep, fused, device, out,
                                           progress)
        except KeyboardInterrupt:
            raise InterruptedRun(f"interrupted while measuring the surface; {out} keeps the network of step "
                                 f"{state.step} (checkpoint.pt), which `finer eval sdf {out}` measures") from None
    return finished(state, out, metrics)


def _evaluate_and_record(cfg: SDFRunConfig, model, state: FitState, mesh, index, unit, norm, prep: float, fused: dict,
                         device, out: Path, progress: bool = False) -> dict[str, Any]:
    """Extract and measure the fitted surface, write ``metrics.json``; returns the metrics."""
    metrics: dict[str, Any] = {
        "task": "sdf", "model": cfg.model, "status": state.status, "params": count_parameters(model),
        **network_shape(model.config), "lr": model.config.lr, "seed": cfg.seed,
        "steps": state.step, "steps_planned": cfg.steps, "seconds": round(state.train_seconds, 3),
        "seconds_per_step": round(state.train_seconds / max(state.step, 1), 5), "precompute_seconds": round(prep, 2),
        "device": str(device), "fused": fused["fused"], "mesh": str(cfg.mesh), "mesh_faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight), "inside_outside": S.SIGN_METHOD + (
            "" if mesh.is_watertight else "; the mesh is not watertight: holes wider than the shell leak"),
        "resolution": cfg.resolution, "iou_resolution": cfg.iou_resolution, "chamfer_samples": cfg.chamfer_samples,
        "surface_samples": cfg.surface_samples,
        "units": "chamfer in the normalised frame (longest side 0.9)",
    }
    metrics.update(evaluate_sdf(model, index, unit, norm, resolution=cfg.resolution, iou_resolution=cfg.iou_resolution,
                                chamfer_samples=cfg.chamfer_samples, device=device, out=out, seed=cfg.seed,
                                progress=progress))
    if state.message:
        metrics["message"] = state.message
    io.write_json(out / "metrics.json", metrics)
    return metrics


EVAL_FILES = ("eval.json", "mesh.ply", "render.png")
EVAL_DEFAULTS = {"resolution": 256, "iou_resolution": 128, "chamfer_samples": 300_000, "surface_samples": 500_000,
                 "seed": 0}
"""What ``eval_sdf`` uses for a setting neither given nor recorded by the run."""


def eval_sdf(checkpoint: str | Path, mesh_path: str | Path | None = None, *, out: str | Path | None = None,
             resolution: int | None = None, iou_resolution: int | None = None, chamfer_samples: int | None = None,
             surface_samples: int | None = None, device: str = "auto", overwrite: bool = False,
             progress: bool = False) -> dict[str, Any]:
    """Measure a saved SDF model against a mesh (normalised with the checkpoint's transform); writes
    :data:`EVAL_FILES` to ``out`` (default: the run folder's ``eval``), which must not hold an earlier
    evaluation unless ``overwrite``, nor be a run folder (whose mesh.ply and render.png are the run's own).

    What is not given (the mesh, the grids, the sample counts) is what the run recorded in its
    config.json, so that by default the evaluation repeats the fit's own (:data:`EVAL_DEFAULTS` where the
    run recorded nothing); the result lists the settings it used and ``fit_status``, the training state
    the checkpoint was saved in (``running``: a periodic checkpoint of a fit that did not finish)."""
    ckpt = Path(checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    recorded = _recorded_settings(folder)
    given = {"resolution": resolution, "iou_resolution": iou_resolution, "chamfer_samples": chamfer_samples,
             "surface_samples": surface_samples}
    missing = [name for name in EVAL_DEFAULTS if name not in recorded and given.get(name) is None]
    settings = {name: given.get(name) if given.get(name) is not None else recorded.get(name, default)
                for name, default in EVAL_DEFAULTS.items()}
    check_sizes(**{k: v for k, v in settings.items() if k != "seed"})
    out = io.check_out(out if out else folder / "eval", folder=True)
    run_files = [name for name in ("config.json", "metrics.json", "checkpoint.pt") if (out / name).exists()]
    if run_files:
        raise FinerError(f"output folder {out} holds a run ({', '.join(run_files)}), whose mesh.ply and render.png an "
                         "evaluation would replace; choose another folder (the default is the run's eval/)")
    model, payload = io.load_checkpoint(checkpoint, "sdf", "finer eval sdf")
    task = payload["task"]
    if missing and (folder / "checkpoint.pt").is_file():  # an SDF run folder whose config.json is gone or damaged
        warnings.warn(f"{folder / 'config.json'} records no {', '.join(missing)} (missing or unreadable): this "
                      f"evaluation uses the defaults ({', '.join(f'{k} {EVAL_DEFAULTS[k]}' for k in missing)}), "
                      "not necessarily the fit's", FinerWarning, stacklevel=2)
    if mesh_path is None:
        mesh_path = recorded.get("mesh") or task.get("mesh")  # (the checkpoint records it too)
        if not mesh_path:
            raise FinerError(f"{checkpoint}: no mesh recorded with this run; give one (--mesh)")
    norm = S.Normalization(**task["normalization"])
    mesh = S.load_mesh(mesh_path)
    unit = mesh.copy()
    unit.vertices = norm.to_unit(mesh.vertices)
    check_measuring_memory(settings["resolution"], settings["iou_resolution"], unit.area,
                           surface_samples=settings["surface_samples"], chamfer_samples=settings["chamfer_samples"])
    warning = _other_mesh(folder, mesh_path, task.get("mesh"))
    io.check_not_an_output(mesh_path, out, EVAL_FILES, "mesh")
    io.check_claim(out, EVAL_FILES, overwrite, "evaluation")  # (claimed once the measurements are in hand)
    index = _surface_index(unit, settings["surface_samples"], settings["seed"], mesh_path)
    result = {"checkpoint": str(checkpoint), "mesh": str(mesh_path), "model": payload["method"],
              "steps": payload["fit"]["step"], "fit_status": payload["fit"].get("status"), **settings,
              "inside_outside": S.SIGN_METHOD,
              **evaluate_sdf(model, index, unit, norm, resolution=settings["resolution"],
                             iou_resolution=settings["iou_resolution"], chamfer_samples=settings["chamfer_samples"],
                             device=resolve_device(device), out=out, seed=settings["seed"], progress=progress,
                             before_writing=lambda: io.claim_outputs(out, EVAL_FILES, overwrite, "evaluation"))}
    if warning:
        result["warning"] = warning
    io.write_json(out / "eval.json", result)
    return result


def _recorded_settings(run_dir: Path) -> dict[str, Any]:
    """The ``run`` settings the SDF run in ``run_dir`` recorded in its config.json (empty if none)."""
    config = io.read_record(run_dir / "config.json")
    run = config.get("run") if config.get("task") == "sdf" else None
    return run if isinstance(run, dict) else {}


def _other_mesh(run_dir: Path, mesh_path, fitted) -> str:
    """A warning if ``mesh_path`` is not the file the run recorded fitting (by SHA-256, recorded in its
    config.json since 2026-11-28); empty if it is, or if the run recorded none."""
    recorded = io.read_record(run_dir / "config.json").get("mesh_sha256")
    if not recorded or io.file_digest(mesh_path) == recorded:
        return ""
    return (f"{mesh_path} is not the mesh this run was fitted to ({fitted or 'recorded in its config.json'}; "
            "SHA-256 differs): the scores measure the network against another surface, in the fitted mesh's frame")
