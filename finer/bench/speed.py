"""``finer bench speed``: the cost of a training step against the cost of its matrix multiplications.

Measured in one process, on the same shapes (an image of ``size x size`` pixels, full batch, a
``2 -> width -> ... -> 3`` network with ``hidden_layers`` hidden-to-hidden layers):

- ``floor``: the bare matrix multiplications of one step: each layer's forward product (``mm``,
  no bias) and both backward products (input gradient, except for the first layer, and weight
  gradient). Nothing can train this network faster on this machine with these kernels. Methods whose
  network has other products (WIRE's complex layers, PE-MLP's encoded input) are also measured against
  their own products, timed the same way.
- ``official-finer``: an eager re-implementation of the official code (:mod:`finer.bench.reference`)
  with its optimiser (plain ``torch.optim.Adam``), step by step.
- each method of the library, through the library's own training loop (:func:`finer.train.fit`)
  with the fused activations (:mod:`finer.nn.fused`), compiled or eager; with ``cuda_graph``, each
  method also a second time, its steps replayed as a CUDA graph recorded during the warm-up
  (:class:`finer.train.TrainStep`), in the same rounds.

Every number is the median over ``repeats`` timed blocks of ``steps`` steps, after warm-up steps;
the blocks are interleaved (each round times the floor, the reference and every method once), so a
busy or drifting machine slows them all alike. Compilation time is reported separately (the first
step of a fresh model, minus a step). The
identity check trains the library's FINER and the reference from the same initial weights and
compares their loss curves and final PSNR.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from finer import io
from finer.bench.reference import OfficialFiner
from finer.errors import FinerError
from finer.launch import huge_pages_requested
from finer.metrics import psnr
from finer.models import MODELS, build_model, check_buildable
from finer.nn.fused import fuse
from finer.tasks.image import ImageTask, load_image, predict_image
from finer.train import GRAPH_WARMUP, TrainConfig, TrainStep, fit, graph_problem

DEFAULT_METHODS = ("finer", "siren", "gauss", "wire", "pemlp", "gauss-finer", "wire-finer")


@dataclass
class SpeedConfig:
    size: int = 256
    """Image side in pixels (full batch: size^2 points per step)."""
    width: int = 256
    hidden_layers: int = 3
    steps: int = 10
    """Steps per timed block."""
    repeats: int = 3
    """Timed blocks; the median is reported."""
    warmup: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    compile: bool = True
    identity_steps: int = 100
    """Steps of the identity check (0: skip)."""
    device: str = "cpu"
    image: str | None = None
    """Image to fit (default: scikit-image's astronaut)."""
    signals: int = 16
    """Many-signals check: this many images fitted one by one and all at once (0: skip)."""
    signal_size: int = 128
    signal_width: int = 128
    signal_steps: int = 20
    signals_dir: str | None = None
    """Folder of the many-signals images (default: tiles of scikit-image samples)."""
    threads: int = field(default_factory=torch.get_num_threads)
    profile: bool = False
    """After timing, run each block once more under PyTorch's profiler (``result["profiles"]``)."""
    cuda_graph: bool = False
    """Each method also with its steps replayed as a CUDA graph (a row of its own); the identity and
    many-signals checks then use recorded steps."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run_block, device):
    """``run_block`` as a block that returns its own seconds (device synchronised)."""

    def block() -> float:
        _sync(device)
        t0 = time.perf_counter()
        run_block()
        _sync(device)
        return time.perf_counter() - t0

    return block


def interleaved_medians(blocks: dict, repeats: int) -> dict[str, float]:
    """The median seconds of each block over ``repeats`` rounds, every round timing each block once.

    Interleaving spreads whatever else the machine does (another process, a frequency change) over
    all the measurements alike, so the ratios between them stay fair on a busy machine.
    """
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name, block in blocks.items():
            times[name].append(block())
    return {name: statistics.median(t) for name, t in times.items()}


def products_block(n: int, layers: list[tuple[int, int, torch.dtype]], cfg: SpeedConfig, device):
    """A block of ``cfg.steps`` steps of the bare matrix products of a network of ``layers``
    (``(in, out, dtype)`` each, on ``n`` points): each layer's forward product (``mm``, no bias) and
    both backward products (weight gradient, and input gradient except for the first layer)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, dtype):
        real = torch.randn(*shape, 2, generator=g) if dtype.is_complex else torch.randn(*shape, generator=g)
        return (torch.view_as_complex(real) if dtype.is_complex else real).to(dtype).to(device)

    tensors = [(rand(n, i, dtype=d), rand(o, i, dtype=d), rand(n, o, dtype=d)) for i, o, d in layers]

    def step():
        for k, (x, w, grad_out) in enumerate(tensors):
            torch.mm(x, w.t())  # forward
            torch.mm(grad_out.t(), x)  # weight gradient
            if k > 0:
                torch.mm(grad_out, w)  # input gradient

    def run():
        for _ in range(cfg.steps):
            step()

    run()  # warm-up
    return _timed(run, device)


def network_layers(width: int, hidden_layers: int, out: int) -> list[tuple[int, int, torch.dtype]]:
    """The ``(in, out, dtype)`` of a real ``2 -> width^hidden -> out`` network (the GEMM floor's)."""
    dims = [2] + [width] * (hidden_layers + 1) + [out]
    return [(dims[i], dims[i + 1], torch.float32) for i in range(len(dims) - 1)]


def model_layers(model) -> list[tuple[int, int, torch.dtype]]:
    """The ``(in, out, dtype)`` of a coordinate MLP's layers: its own products (WIRE's are complex and
    181 wide, PE-MLP's first layer takes the encoding)."""
    return [(layer.linear.in_features, layer.linear.out_features, layer.linear.weight.dtype)
            for layer in model.layers]


def reference_block(task: ImageTask, cfg: SpeedConfig, device):
    """A block of ``cfg.steps`` training steps of the eager re-implementation of the official code."""
    torch.manual_seed(0)
    model = OfficialFiner(2, task.image.shape[-1], width=cfg.width, hidden_layers=cfg.hidden_layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)
    x, y = task.batch(0)

    def run(steps=cfg.steps):
        for _ in range(steps):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    run(cfg.warmup)
    return _timed(run, device)


def library_block(name: str, task_for, cfg: SpeedConfig, device, cuda_graph: bool = False):
    """(a block of ``cfg.steps`` steps through fit(), seconds of the first step, fused layers, the
    model's :func:`model_layers`); with ``cuda_graph``, steps replayed from one recording."""
    model = build_model(name, 2, 3, seed=0, width=cfg.width, hidden_layers=cfg.hidden_layers).to(device)
    layers = model_layers(model)
    fused = fuse(model, compile=cfg.compile)
    task = task_for(tuple(model.config.target_range))
    trainer = TrainStep(model, task, _train_config(1, model.config.lr, cuda_graph))  # kept: recorded once

    def train(steps):
        return _fit(model, task, _train_config(steps, model.config.lr, cuda_graph), progress=False,
                   trainer=trainer).train_seconds

    first = train(1)  # compilation happens here
    train(max(cfg.warmup, GRAPH_WARMUP) if cuda_graph else cfg.warmup)  # a CUDA graph is recorded by now
    return (lambda: train(cfg.steps)), first, fused, layers


def _fit(*args, **kwargs):
    """:func:`fit`, whose stop on Ctrl-C (or SIGTERM, from the command line) stops the benchmark: a block
    cut short is no timing."""
    state = fit(*args, **kwargs)
    if state.status == "interrupted":
        raise KeyboardInterrupt
    return state


def _train_config(steps: int, lr: float, cuda_graph: bool) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, eval_every=0, checkpoint_every=0, log_every=max(steps, 1),
                       cuda_graph=cuda_graph)


def identity_check(image, cfg: SpeedConfig, device) -> dict:
    """Library FINER (fused) and the eager reference from the same weights: loss curves and PSNR."""
    steps = cfg.identity_steps
    lib = build_model("finer", 2, image.shape[-1], seed=0, width=cfg.width, hidden_layers=cfg.hidden_layers)
    ref = OfficialFiner(2, image.shape[-1], width=cfg.width, hidden_layers=cfg.hidden_layers)
    with torch.no_grad():
        for p_ref, p_lib in zip(ref.parameters(), lib.parameters(), strict=True):
            p_ref.copy_(p_lib)
    lib, ref = lib.to(device), ref.to(device)
    fuse(lib, compile=cfg.compile)
    losses, psnrs = {}, {}
    for name, model in (("library", lib), ("reference", ref)):
        task = ImageTask(image, (-1.0, 1.0), device, seed=0)
        state = _fit(model, task, TrainConfig(steps=steps, lr=5e-4, eval_every=0, checkpoint_every=0, log_every=10,
                                              cuda_graph=cfg.cuda_graph and name == "library"), progress=False)
        losses[name] = [h["loss"] for h in state.history]
        psnrs[name] = psnr(task.predict(model), image)
    rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["library"], losses["reference"]))
    return {"steps": steps, "max_relative_loss_difference": rel, "psnr_library": psnrs["library"],
            "psnr_reference": psnrs["reference"], "psnr_difference": psnrs["library"] - psnrs["reference"]}


def sample_signals(count: int, size: int, directory: str | None = None) -> np.ndarray:
    """``count`` RGB images of ``size x size``: the folder's first ones (centre crops, resized), or
    tiles of scikit-image's astronaut, chelsea and coffee samples."""
    if directory:
        from finer.bench.images import list_images

        out = []
        for path in list_images(directory, limit=count):
            full = load_image(path)
            out.append(load_image(path, crop=min(full.shape[:2]), size=size))
    else:
        out = []
        for name in ("astronaut", "chelsea", "coffee"):
            full = load_image(f"skimage:{name}")
            for y in range(0, full.shape[0] - size + 1, size):
                for x in range(0, full.shape[1] - size + 1, size):
                    out.append(full[y:y + size, x:x + size])
    out = [im[..., :3] if im.shape[-1] >= 3 else np.repeat(im, 3, axis=-1) for im in out][:count]
    if len(out) < count:
        raise FinerError(f"only {len(out)} images of {size}x{size} available, {count} asked for")
    return np.stack(out)


def batch_signals_check(images: np.ndarray, *, method: str, width: int, hidden_layers: int, steps: int,
                        batch: int, compile: bool, device, repeats: int = 1, cuda_graph: bool = False) -> dict:
    """Images per second fitting ``images`` one by one vs ``batch`` at a time, same seed, same steps
    (the median of ``repeats`` interleaved rounds)."""
    from finer.batch_runs import fit_stacked

    def run(k: int) -> tuple[float, list[float]]:
        seconds, psnrs = 0.0, []
        for start in range(0, len(images), k):
            group = images[start:start + k]
            models = [build_model(method, 2, 3, seed=0, width=width, hidden_layers=hidden_layers).to(device)
                      for _ in group]
            for m in models:
                fuse(m, compile=compile)
            state, _, trained = fit_stacked(models, group, _train_config(steps, models[0].config.lr, cuda_graph),
                                            device, progress=False)
            if state.status == "interrupted":  # as _fit: a block cut short is no timing
                raise KeyboardInterrupt
            seconds += state.train_seconds
            for m, im in zip(trained, group):
                pred = predict_image(m.eval(), im.shape[0], im.shape[1], target_range=m.config.target_range,
                                     device=device)
                psnrs.append(psnr(pred, im))
        return seconds, psnrs

    run(min(batch, len(images)))  # warm-up (compilation) for both shapes
    run(1)
    one, many = [], []
    for _ in range(repeats):  # interleaved, as the step times
        one.append(run(1))
        many.append(run(batch))
    one_s, many_s = statistics.median(s for s, _ in one), statistics.median(s for s, _ in many)
    one_p, many_p = one[0][1], many[0][1]
    return {"images": len(images), "size": images.shape[1], "method": method, "width": width,
            "hidden_layers": hidden_layers, "steps": steps, "batch_signals": batch,
            "one_by_one_images_per_second": len(images) / one_s, "batched_images_per_second": len(images) / many_s,
            "speedup": one_s / many_s, "max_psnr_difference": max(abs(a - b) for a, b in zip(one_p, many_p))}


def profile_orders(device: torch.device) -> list[tuple[str, str]]:
    """The tables :func:`profile_blocks` writes per block, ``(title, sort key)``: on a GPU, operators by
    their own device time (the card's work) and by their own CPU time (the host's: launches, Python,
    waits, which bound a step of small kernels); on a CPU, by their own CPU time."""
    if device.type == "cuda":
        return [("by device time", "self_device_time_total"), ("by host time", "self_cpu_time_total")]
    return [("by CPU time", "self_cpu_time_total")]


def profile_blocks(blocks: dict, device: torch.device, rows: int = 15) -> str:
    """Each block run once under PyTorch's profiler: tables of its operators by their own time
    (:func:`profile_orders`), to see where a step's time above its products goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    parts = []
    for name, block in blocks.items():
        with profile(activities=activities) as prof:
            block()
        averages = prof.key_averages()
        parts.append(f"== {name}")
        parts += [f"-- {title}\n{averages.table(sort_by=key, row_limit=rows)}" for title, key in profile_orders(device)]
    return "\n".join(parts)


def run_speed(cfg: SpeedConfig, log=io.quiet) -> dict:
    from finer.bench import REFERENCE, check_models

    if REFERENCE in cfg.methods:
        raise FinerError(f"{REFERENCE} is always timed, as the reference row: leave it out of the models")
    check_models(list(cfg.methods), list(MODELS))
    # a setting a method refuses (WIRE at width 1): now, not after the others compiled; FINER's network is also
    # the official code's and the identity check's
    for name in dict.fromkeys(["finer", *cfg.methods]):
        check_buildable(name, 2, 3, width=cfg.width, hidden_layers=cfg.hidden_layers)
    if cfg.signals:  # (the many-signals check fits FINER)
        check_buildable("finer", 2, 3, width=cfg.signal_width, hidden_layers=cfg.hidden_layers)
    from finer.runs import device_name, resolve_device

    device = resolve_device(cfg.device)
    problem = cfg.cuda_graph and graph_problem(device)
    if problem:
        raise FinerError(problem)
    full = load_image(cfg.image)
    image = load_image(cfg.image, crop=min(full.shape[:2]), size=cfg.size)  # square centre crop, resized
    image = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image, 3, axis=-1)
    # before the timings, which take minutes: too few images is an error now, not at the end
    signal_images = sample_signals(cfg.signals, cfg.signal_size, cfg.signals_dir) if cfg.signals else None
    n = image.shape[0] * image.shape[1]
    log(f"shapes: {n} points, 2 -> {cfg.width} x {cfg.hidden_layers + 1} -> 3, {device}, "
        f"{torch.get_num_threads()} threads, compile={'on' if cfg.compile else 'off'}"
        f"{', each method also with its steps replayed as CUDA graphs' if cfg.cuda_graph else ''}")
    floor_layers = network_layers(cfg.width, cfg.hidden_layers, 3)
    blocks = {"floor": products_block(n, floor_layers, cfg, device),
              "official": reference_block(ImageTask(image, (-1.0, 1.0), device, seed=0), cfg, device)}
    firsts, fused_layers, own = {}, {}, {}
    products = {tuple(floor_layers): "floor"}  # each distinct network's products, timed once
    variants = [(name, graph) for name in cfg.methods for graph in ((False, True) if cfg.cuda_graph else (False,))]
    labels = {variant: variant[0] + (" (CUDA graph)" if variant[1] else "") for variant in variants}
    for (name, graph), label in labels.items():
        log(f"preparing {label} (compiling)" if cfg.compile else f"preparing {label}")
        blocks[label], firsts[label], fused_layers[label], layers = library_block(
            name, lambda rng: ImageTask(image, rng, device, seed=0), cfg, device, cuda_graph=graph)
        if tuple(layers) not in products:
            products[tuple(layers)] = f"products of {name}"
            blocks[products[tuple(layers)]] = products_block(n, layers, cfg, device)
        own[label] = products[tuple(layers)]
    per_step = {k: v / cfg.steps for k, v in interleaved_medians(blocks, cfg.repeats).items()}
    profiles = profile_blocks(blocks, device) if cfg.profile else None
    floor, reference = per_step["floor"], per_step["official"]
    log(f"GEMM floor        {floor:.4f} s/step")
    log(f"official (eager)  {reference:.4f} s/step  = {reference / floor:.2f} x floor")
    rows = []
    for (name, graph), label in labels.items():
        step, fused = per_step[label], fused_layers[label]
        overhead = max(firsts[label] - step, 0.0)
        own_products = per_step[own[label]]
        rows.append({"method": name, "cuda_graph": graph, "label": label, "seconds_per_step": step,
                     "over_floor": step / floor,
                     "own_products_seconds_per_step": own_products, "over_own_products": step / own_products,
                     "reference_over_this": reference / step, "fused_layers": fused,
                     "first_step_overhead_seconds": overhead})
        log(f"{label:17s} {step:.4f} s/step  = {step / floor:.2f} x floor ({step / own_products:.2f} x its own "
            f"products), reference / this = {reference / step:.2f}  (fused layers {fused}, first-step overhead "
            f"{overhead:.1f} s)")
    identity = identity_check(image, cfg, device) if cfg.identity_steps else None
    if identity:
        log(f"identity over {identity['steps']} steps: max relative loss difference "
            f"{identity['max_relative_loss_difference']:.2e}, PSNR library {identity['psnr_library']:.3f} dB vs "
            f"reference {identity['psnr_reference']:.3f} dB")
    signals = None
    if cfg.signals:
        signals = batch_signals_check(signal_images, method="finer",
                                      width=cfg.signal_width, hidden_layers=cfg.hidden_layers,
                                      steps=cfg.signal_steps, batch=cfg.signals, compile=cfg.compile, device=device,
                                      repeats=cfg.repeats, cuda_graph=cfg.cuda_graph)
        log(f"{signals['images']} signals of {signals['size']}^2, 2 -> {signals['width']} x "
            f"{signals['hidden_layers'] + 1} -> 3, {signals['steps']} steps: one by one "
            f"{signals['one_by_one_images_per_second']:.3f} images/s, {signals['batch_signals']} at once "
            f"{signals['batched_images_per_second']:.3f} images/s = {signals['speedup']:.2f} x; largest PSNR "
            f"difference {signals['max_psnr_difference']:.2e} dB")
    return {"config": {**asdict(cfg), "methods": list(cfg.methods)}, "points": n, "device": str(device),
            "machine": f"{platform.machine()}, {device_name(device)}, {torch.get_num_threads()} threads, "
                       f"huge pages {'on' if huge_pages_requested() else 'off'} (THP_MEM_ALLOC_ENABLE)",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "gemm_floor_seconds_per_step": floor, "official_seconds_per_step": reference,
            "official_over_floor": reference / floor, "methods": rows, "identity": identity, "signals": signals,
            "profiles": profiles}


GRAPH_NOTE = ("; each method also with its steps replayed as a CUDA graph (`--cuda-graph`: a row of its own, "
              "and the identity and many-signals checks with recorded steps)")


def speed_markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    lines = [
        "# Training speed", "",
        f"Command: `{command}`", "",
        f"Machine: {result['machine']} ({result['device']}), torch {result['torch']}, {result['date']}.",
        f"Shapes: {result['points']} points per step (a {cfg['size']}x{cfg['size']} image, full batch), "
        f"`2 -> {cfg['width']}` then {cfg['hidden_layers']} x `{cfg['width']} -> {cfg['width']}` then "
        f"`{cfg['width']} -> 3`. Median of {cfg['repeats']} blocks of {cfg['steps']} steps after "
        f"{cfg['warmup']} warm-up steps, the blocks of all rows interleaved round by round; "
        f"torch.compile {'on' if cfg['compile'] else 'off'}{GRAPH_NOTE if cfg.get('cuda_graph') else ''}.", "",
        "GEMM floor (forward and both backward products, nothing else): "
        f"{result['gemm_floor_seconds_per_step']:.4f} s/step.",
        f"Official code, eager re-implementation: {result['official_seconds_per_step']:.4f} s/step = "
        f"{result['official_over_floor']:.2f} x floor.", "",
        "Own products: the same bare products for the method's own network, where it differs from the "
        "floor's (WIRE's layers are complex and width/sqrt(2) wide, PE-MLP's first layer takes the "
        "positional encoding); a step cannot be faster than its own products.", "",
        "| method | s/step | step / floor | own products (s/step) | step / own products | official / step "
        "| fused layers | first-step overhead (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"]:
        own = r.get("own_products_seconds_per_step")
        own_cells = f"{own:.4f} | {r['over_own_products']:.2f}" if own else "- | -"
        lines.append(f"| {r.get('label', r['method'])} | {r['seconds_per_step']:.4f} | {r['over_floor']:.2f} | "
                     f"{own_cells} | {r['reference_over_this']:.2f} | {r['fused_layers']} | "
                     f"{r['first_step_overhead_seconds']:.1f} |")
    ident = result.get("identity")
    if ident:
        lines += ["", f"Identity: library FINER and the reference trained {ident['steps']} steps from the same "
                      "weights: largest relative difference of their losses "
                      f"{ident['max_relative_loss_difference']:.2e}; "
                      f"PSNR {ident['psnr_library']:.3f} dB (library) vs {ident['psnr_reference']:.3f} dB (reference)."]
    sig = result.get("signals")
    if sig:
        lines += ["", f"Many signals (FINER, {sig['images']} images of {sig['size']}x{sig['size']}, "
                      f"`2 -> {sig['width']}` "
                      f"and {sig['hidden_layers']} x `{sig['width']} -> {sig['width']}`, {sig['steps']} steps each, "
                      "full batch, the same seed for every network):", "",
                  "| fitting | images/s |", "|---|---|",
                  f"| one by one | {sig['one_by_one_images_per_second']:.3f} |",
                  f"| {sig['batch_signals']} at once (`--batch-signals {sig['batch_signals']}`) | "
                  f"{sig['batched_images_per_second']:.3f} |", "",
                  f"Speed-up {sig['speedup']:.2f} x; largest per-image PSNR difference between the two "
                  f"{sig['max_psnr_difference']:.2e} dB."]
    return "\n".join(lines) + "\n"

