"""What each ``finer`` command does with its parsed arguments: one function per command, calling the library.

Every function takes the ``argparse.Namespace`` of its command and returns the exit status. The
library is imported inside them, so that ``finer --help`` and a usage error stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from finer.errors import ConfigError, FinerError, InterruptedRun

EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


# -- helpers ----------------------------------------------------------------------------------------
def dumps(value, **kwargs) -> str:
    """Strict JSON (an infinite PSNR of identical images as "inf", as in the files written)."""
    from finer.io import jsonable

    return json.dumps(jsonable(value), **kwargs)


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def options(items) -> dict:
    """``--option KEY=VALUE`` pairs: values parsed as JSON where they are (``1e-3``, ``true``, ``[0, 1]``),
    a comma-separated list as a list of them (``target_range=0,1``), anything else as text."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FinerError(f"--option expects KEY=VALUE, got {item!r}")
        key = key.replace("-", "_")
        if key in parsed:
            raise FinerError(f"--option {key} is given twice")
        value = _json_or_text(value)
        if isinstance(value, str) and "," in value:
            value = [_json_or_text(part.strip()) for part in value.split(",")]
        parsed[key] = value
    return parsed


def model_options(args: argparse.Namespace) -> dict:
    """The model flags of a `finer fit` command that were given, and its ``--option`` pairs (one setting
    may not be given both ways)."""
    given = {name: getattr(args, name) for name in
             ("width", "hidden_layers", "lr", "first_bias_scale", "first_omega", "hidden_omega")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.scale_grad:
        given["scale_grad"] = True
    extra = options(args.option)
    both = sorted(set(given) & set(extra))
    if both:
        raise FinerError(f"{', '.join(both)} given both as a flag and as --option; give it once")
    return {**given, **extra}


def _log(args: argparse.Namespace):
    """Messages to stderr, or nowhere with ``--quiet``."""
    return (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))


def _distinct(values: list, what: str, text: str) -> list:
    """``values``, refused if one repeats (a grid would run it twice and tabulate it twice)."""
    repeated = sorted({"default" if v is None else str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise FinerError(f"{what} lists {', '.join(repeated)} more than once: {text!r}")
    return values


def _names(text: str, what: str = "--models") -> list[str]:
    return _distinct([m.strip() for m in text.split(",") if m.strip()], what, text)


def _floats(text: str, allow_default: bool = False) -> list:
    """Comma-separated bias ranges ``>= 0``; ``default`` (where allowed) stands for PyTorch's, as None."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if allow_default and item == "default":
            values.append(None)
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise FinerError(f"expected a comma-separated list of numbers, got {text!r}") from None
        if not values[-1] >= 0:
            raise FinerError(f"bias ranges must be >= 0, got {item!r}")
    return _distinct(values, "--k", text)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FinerError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise FinerError(f"{what} must list at least one value")
    return _distinct(values, what, text)


def _finished(metrics: dict, keys: tuple[str, ...]) -> int:
    """Print the run's headline metrics as JSON (an interrupted run raises :class:`InterruptedRun`, which
    ``main`` prints with how to go on, exit 130)."""
    print(dumps({k: metrics[k] for k in keys}))
    return 0


IMAGE_KEYS = ("model", "status", "psnr", "ssim", "steps", "seconds_per_step", "out")


# -- commands ---------------------------------------------------------------------------------------
def _other_defaults() -> list[str]:
    """What ``finer models`` says below its table: the other tasks' defaults and the reference."""
    from finer.bench import REFERENCE
    from finer.nerf_run import NeRFRunConfig
    from finer.sdf_run import SDF_DEFAULTS

    nerf = NeRFRunConfig(scene="")
    sdf = ", ".join(f"{k}={v}" for k, v in SDF_DEFAULTS.items())
    return ["These are the image fit's defaults (finer fit image; --width, --lr, --option KEY=VALUE change them).",
            f"finer fit sdf uses {sdf} (constant), first_bias_scale=1.0 for the FINER family.",
            f"finer fit nerf uses width={nerf.width}, lr={nerf.lr} in its radiance field (whose depths are fixed).",
            f"{REFERENCE}: the official FINER code, re-implemented eagerly; a reference for `bench images "
            "--models`, and always timed by `bench speed`; not a library model."]


def list_models(args: argparse.Namespace) -> int:
    from finer.models import models

    table = models()
    if args.json:
        print(dumps(table, indent=2))
    else:
        for name, defaults in table.items():
            print(f"{name:12s} " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
        print("\n" + "\n".join(_other_defaults()))
    return 0


def fit_image(args: argparse.Namespace) -> int:
    from finer import runs

    cfg = runs.ImageRunConfig(
        image=args.path, model=args.model, model_options=model_options(args), steps=args.steps,
        seed=args.seed, crop=args.crop, size=args.size, alpha=args.alpha, aspect=args.aspect,
        batch_size=args.batch_size, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        device=args.device, fused=args.fused, precision=args.precision, cuda_graph=args.cuda_graph,
    )
    if args.path is not None and Path(args.path).is_dir():
        return _fit_image_folder(args, cfg)
    if args.batch_signals is not None:
        raise FinerError("--batch-signals needs a folder of images as the path")
    metrics = runs.fit_image(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite)
    return _finished(metrics, IMAGE_KEYS)


def _fit_image_folder(args: argparse.Namespace, cfg) -> int:
    from finer.batch_runs import fit_image_folder

    if not args.out:
        raise FinerError("fitting a folder needs --out")
    cfg.image = None
    summary = fit_image_folder(cfg, args.path, args.out, batch_signals=args.batch_signals or 1,
                               progress=not args.quiet, overwrite=args.overwrite, log=_log(args))
    print(dumps({**{k: summary[k] for k in ("images", "batch_signals", "mean_psnr", "images_per_second",
                                            "diverged")}, "out": str(args.out)}))
    if not summary["diverged"]:
        return 0
    count, total = len(summary["diverged"]), summary["images"]
    stacked = (" (a stacked group is judged as one: fit without --batch-signals to see which images diverge)"
               if summary["batch_signals"] > 1 else "")
    print(f"error: the loss diverged on {count} of {total} images ({', '.join(summary['diverged'])}; try a lower "
          f"--lr){stacked}; each is kept at its last good step" + (", the others finished" if count < total else "")
          + f"; {args.out}/summary.json lists them all", file=sys.stderr)
    return EXIT_DIVERGED


def fit_nerf(args: argparse.Namespace) -> int:
    from finer import nerf_run

    cfg = nerf_run.NeRFRunConfig(scene=args.scene, model=args.model, model_options=options(args.option),
                                 views=args.views, downscale=args.downscale, steps=args.steps, rays=args.rays,
                                 samples=args.samples, fine=args.fine, lr=args.lr, width=args.width,
                                 test_views=args.test_views, seed=args.seed, device=args.device, fused=args.fused)
    metrics = nerf_run.fit_nerf(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite, log=_log(args))
    return _finished(metrics, ("model", "status", "steps", "test_psnr", "test_ssim", "test_lpips",
                               "seconds_per_step", "out"))


def fit_sdf(args: argparse.Namespace) -> int:
    from finer import sdf_run

    cfg = sdf_run.SDFRunConfig(mesh=args.mesh, model=args.model, model_options=model_options(args), steps=args.steps,
                               batch_size=args.batch_size, pool_size=args.pool_size, resolution=args.resolution,
                               chamfer_samples=args.chamfer_samples, iou_resolution=args.iou_resolution,
                               surface_samples=args.surface_samples, seed=args.seed, device=args.device,
                               fused=args.fused)
    metrics = sdf_run.fit_sdf(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite, log=_log(args))
    return _finished(metrics, ("model", "status", "chamfer", "iou", "steps", "seconds_per_step", "out"))


def eval_image(args: argparse.Namespace) -> int:
    import torch

    from finer.lpips import available
    from finer.metrics import LPIPS_MIN_SIDE, image_metrics, lpips_left_out, metrics_bytes
    from finer.tasks.image import load_image, memory_budget

    budget = memory_budget(torch.device("cpu"))
    a = load_image(args.a, alpha=args.alpha, max_bytes=budget)  # (a huge image: refused before decoding)
    with_lpips = not args.no_lpips and min(a.shape[:2]) >= LPIPS_MIN_SIDE and available()  # (what image_metrics runs)
    need = metrics_bytes(a.shape[0], a.shape[1], with_lpips)
    if need > budget:
        raise FinerError(f"measuring {args.a} ({a.shape[1]}x{a.shape[0]}) needs about {need / 2**30:.1f} GiB of "
                         f"memory, more than the {budget / 2**30:.1f} GiB available (half of it); crop or downscale "
                         "both images first")
    b = load_image(args.b, alpha=args.alpha, max_bytes=budget)
    if a.shape != b.shape:
        raise FinerError(f"{args.a} is {a.shape[1]}x{a.shape[0]}x{a.shape[2]} but {args.b} is "
                         f"{b.shape[1]}x{b.shape[0]}x{b.shape[2]} (width x height x channels); they must match")
    result = image_metrics(a, b, with_lpips=not args.no_lpips)
    if "lpips" in result and result["lpips"] is None:
        result["lpips_note"] = lpips_left_out(a.shape, True)
    print(dumps(result))
    return 0


def eval_sdf(args: argparse.Namespace) -> int:
    from finer.sdf_run import eval_sdf as evaluate

    result = evaluate(args.checkpoint, args.mesh, out=args.out, resolution=args.resolution,
                      chamfer_samples=args.chamfer_samples, iou_resolution=args.iou_resolution,
                      surface_samples=args.surface_samples, device=args.device, overwrite=args.overwrite,
                      progress=not args.quiet)
    if result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    print(dumps(result))
    return 0


def resume(args: argparse.Namespace) -> int:
    from finer.runs import resume_image

    metrics = resume_image(args.run_dir, steps=args.steps, progress=not args.quiet, device=args.device)
    return _finished(metrics, IMAGE_KEYS + (("summary",) if "summary" in metrics else ()))  # a folder fit's, updated


def render(args: argparse.Namespace) -> int:
    kind, target = (args.target[0], args.target[1:]) if args.target[0] in ("nerf", "image") else ("image", args.target)
    if len(target) != 1:
        raise FinerError("usage: finer render [nerf] CHECKPOINT (one checkpoint; "
                         f"got {len(target)} paths: {' '.join(target)})")
    nerf_only = [f"--{name}" for name in ("path", "frames", "elevation") if getattr(args, name) is not None]
    if kind == "image" and nerf_only:
        raise FinerError(f"{', '.join(nerf_only)}: for NeRF turntables only (finer render nerf CHECKPOINT); "
                         "an image render takes --scale and --out")
    if kind == "nerf":
        from finer.nerf_run import render_nerf

        out = render_nerf(target[0], frames=args.frames or 60, out=args.out, device=args.device,
                          scale=args.scale or 1.0, elevation=30.0 if args.elevation is None else args.elevation,
                          progress=not args.quiet, overwrite=args.overwrite)
        print(out)
        out = out.with_name("turntable_depth.gif")
    else:
        from finer.runs import render_checkpoint

        out = render_checkpoint(target[0], scale=args.scale or 2.0, out=args.out, device=args.device,
                                overwrite=args.overwrite)
    print(out)
    return 0


def _check_out_folder(args: argparse.Namespace) -> None:
    """A given ``--out`` must be usable as a folder, checked before any work."""
    from finer import io

    if args.out:
        io.check_out(args.out, folder=True)


def _findings(args: argparse.Namespace):
    """Where an analysis prints its findings as it goes (its only console output): stdout, or nowhere with
    --quiet. (The commands that print a JSON result log to stderr: :func:`_log`.)"""
    from finer import io

    return io.quiet if args.quiet else print


def analyze_ntk(args: argparse.Namespace) -> int:
    from finer.analysis import run

    _check_out_folder(args)
    run.analyze_ntk(args.out, models=_names(args.models), ks=_floats(args.k), width=args.width, points=args.points,
                    params=args.params, threshold=args.threshold, steps=args.steps, mc_samples=args.mc_samples,
                    seed=args.seed, overwrite=args.overwrite, log=_findings(args))
    return 0


def analyze_activations(args: argparse.Namespace) -> int:
    from finer.analysis import run

    _check_out_folder(args)
    run.analyze_activations(args.out, ks=_floats(args.k, allow_default=True), layers=args.layers,
                            resolution=args.resolution, seed=args.seed, width=args.width,
                            hidden_layers=args.hidden_layers, overwrite=args.overwrite,
                            log=_findings(args))
    return 0


def analyze_neurons(args: argparse.Namespace) -> int:
    from finer.analysis import run

    _check_out_folder(args)
    print(dumps(run.analyze_neurons(args.checkpoint, args.out, count=args.count, overwrite=args.overwrite)))
    return 0


def bench_grid(args: argparse.Namespace) -> int:
    """`finer bench images` and `finer bench width`: the grid of methods x images (x widths)."""
    from finer.bench import images as bench

    _check_out_folder(args)
    if args.bench == "width" and (args.width is not None or args.hidden_layers is not None):
        raise FinerError("`finer bench width` takes its widths from --widths and uses two hidden layers "
                         "(supplement Fig. 2); --width and --hidden-layers do not apply")
    if args.address and args.executor != "ray":
        raise FinerError("--address is the Ray cluster's address: use it with --executor ray")
    protocol = bench.resolve_protocol(args.preset, steps=args.steps, hidden_layers=args.hidden_layers,
                                      width=args.width, crop=args.crop, size=args.size)
    seeds = _ints(args.seeds, "--seeds")
    if not all(0 <= s < 2**32 for s in seeds):
        raise FinerError(f"--seeds must be seeds from 0 to 2^32 - 1, got {args.seeds!r}")
    common = dict(models=_names(args.models), protocol=protocol, seeds=seeds,
                  limit=args.limit, out=args.out, device=args.device, progress=not args.quiet, fused=args.fused,
                  report_only=args.report_only,
                  # (a report trains nothing, on no device, with no workers: the runs' own conditions are reported)
                  execution=bench.Execution() if args.report_only else bench.Execution(
                      executor=args.executor, workers=args.workers, address=args.address,
                      batch_signals=args.batch_signals, checkpoint_every=args.checkpoint_every))
    cut = ("fits the runs it cut again" if not args.checkpoint_every
           else "continues the runs it cut from their last saved state" + (
               "; stacked runs (--batch-signals) start again" if (args.batch_signals or 1) > 1 else ""))
    if args.bench == "images":
        with _bench_interrupts(args.out, cut):
            bench.run_image_bench(args.directory, **common)
        return 0
    widths = _ints(args.widths, "--widths")
    if min(widths) <= 0:
        raise FinerError("--widths must be positive")
    with _bench_interrupts(args.out, cut):
        bench.run_width_bench(args.directory, widths=widths, **common)
    return 0


@contextlib.contextmanager
def _bench_interrupts(out, cut: str):
    """Ctrl-C or SIGTERM in a benchmark: one line saying what is kept and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise InterruptedRun(f"interrupted; the finished runs are kept in {out}/runs, and the same command "
                             f"run again skips them and {cut}") from None


def bench_compare(args: argparse.Namespace) -> int:
    from finer.bench import compare

    if not args.pairs and not args.lead:
        raise FinerError("name at least one pair A:B or --lead A")
    table = compare.psnr_table(args.results)
    results = []
    for text in args.pairs:
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            raise FinerError(f"a pair is written A:B (e.g. finer:siren), got {text!r}")
        if a == b:
            raise FinerError(f"{text}: a method compared with itself; name two methods")
        results.append(compare.pair(table, a, b))
    if args.lead:
        results.append(compare.lead(table, args.lead))
    for stats in results:
        print(dumps(stats) if args.json else compare.describe(stats))
    return 0


def bench_speed(args: argparse.Namespace) -> int:
    from finer import io
    from finer.bench.speed import SpeedConfig, run_speed

    cfg = SpeedConfig(size=args.size, width=args.width, hidden_layers=args.hidden_layers, steps=args.steps,
                      repeats=args.repeats, warmup=args.warmup, methods=tuple(_names(args.models)),
                      compile=not args.no_compile, identity_steps=args.identity_steps, device=args.device,
                      image=args.image, signals=args.signals, signal_size=args.signal_size,
                      signal_width=args.signal_width, signal_steps=args.signal_steps, signals_dir=args.signals_dir,
                      cuda_graph=args.cuda_graph, profile=args.profile)
    if args.profile and not args.out:
        raise ConfigError("--profile writes its tables beside the report: give --out")
    if args.out:  # before the timings, which take minutes
        if Path(args.out).suffix.lower() == ".json":
            raise FinerError(f"--out {args.out}: the report's data are written beside the report as NAME.json, which "
                             "would overwrite the report itself; give the report another name (NAME.md)")
        if Path(args.out).suffix.lower() != ".md":
            raise FinerError(f"--out {args.out}: the report is Markdown; give it a name ending in .md (its data go "
                             "beside it as NAME.json)")
        written = [Path(args.out), Path(args.out).with_suffix(".json"), Path(args.out).with_suffix(".profile.txt")]
        for path in written[:2]:
            io.check_out(path, folder=False)
        present = [str(path) for path in written if path.exists()]
        if present and not args.overwrite:
            raise FinerError(f"{', '.join(present)}: an earlier report; choose another --out or pass --overwrite "
                             "to replace it")
        data = io.read_record(written[1]) if written[1].is_file() else None
        if present and (data is None or "gemm_floor_seconds_per_step" not in data):  # --overwrite: only a report
            raise FinerError(f"{', '.join(present)}: not an earlier speed report (no {written[1].name} of one beside "
                             "it); --overwrite replaces only that: choose another --out")
    if args.signals and args.signals_dir:
        from finer.bench.images import list_images

        list_images(args.signals_dir)
    result = run_speed(cfg, log=lambda msg: print(msg, flush=True))
    if args.out:
        _write_speed_report(Path(args.out), result, "finer " + " ".join(args.argv))
    return 0


def _write_speed_report(out: Path, result: dict, command: str) -> None:
    """The Markdown report at ``out``, its data beside it (.json) and the profiles (.profile.txt) if any."""
    from finer import io
    from finer.bench.speed import speed_markdown

    profiles = result.pop("profiles")
    if profiles:
        io.atomic_write(out.with_suffix(".profile.txt"), lambda tmp: Path(tmp).write_text(profiles))
    else:  # an earlier report's (--overwrite) is not this one's
        out.with_suffix(".profile.txt").unlink(missing_ok=True)
    io.write_json(out.with_suffix(".json"), result)
    text = speed_markdown(result, command)
    io.atomic_write(out, lambda tmp: Path(tmp).write_text(text))


def bench_sdf(args: argparse.Namespace) -> int:
    from finer.bench.sdf import run_sdf_bench

    _check_out_folder(args)
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "pool_size", "surface_samples", "resolution",
                                               "iou_resolution", "chamfer_samples") if getattr(args, k) is not None}
    with _bench_interrupts(args.out, "fits the run it cut again"):
        run_sdf_bench(args.directory, models=_names(args.models), out=args.out, settings=settings,
                      device=args.device, progress=not args.quiet)
    return 0
