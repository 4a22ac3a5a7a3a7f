"""``finer analyze``: write the NTK, activation and neuron studies as figures, tables and JSON."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone
import numpy as np
import torch
from PIL import Image

from finer import io
from finer.analysis import ntk as N
from finer.analysis.activations import layer_statistics
from finer.analysis.neurons import first_layer_outputs, neuron_grid, radial_spectrum
from finer.analysis.signal1d import fit_curve, sum_of_sines
from finer.errors import FinerError
from finer.models import MODELS, build_model, make_config
from finer.tasks.image import coordinate_grid, memory_budget


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


NTK_FILES = ("ntk.json", "ntk_setting.json", "ntk_kernels.png", "ntk_eigenvalues.png", "ntk_fit_loss.png", "ntk.md")
ACTIVATION_FILES = ("activations.png", "activations.json", "activations.md")


def _label(model: str, k) -> str:
    return model if k is None else f"{model} k={k:g}"


def _cases(models: list[str], ks: list[float]) -> list[tuple[str, float | None]]:
    cases = []
    for m in models:
        if m not in MODELS:
            raise FinerError(f"unknown model {m!r}; choose from: {', '.join(MODELS)}")
        has_k = "first_bias_scale" in make_config(m).__dataclass_fields__
        cases += [(m, k) for k in ks] if has_k else [(m, None)]
    return cases


MAX_MC_SAMPLES = 10**9
"""The most Monte-Carlo draws of Eq. (5) that ``analyze ntk`` takes (0.6 microseconds a draw on 2 cores)."""


def analyze_ntk(out, *, models=("siren", "finer"), ks=(1.0, 5.0, 10.0, 20.0), width=256, points=1024,
                params="all", threshold=1.0, steps=1000, lr=1e-3, seed=0, mc_samples=200_000,
                overwrite=False, log=io.quiet) -> list[dict]:
    """Kernels, spectra, the dominance table, Eq. (5) check and 1-D convergence; returns the rows.
    ``out`` may hold other files; one with an earlier NTK analysis is refused unless ``overwrite``."""
    out = Path(out)
    models = [models] if isinstance(models, str) else list(models)  # one name, or several
    ks = [ks] if isinstance(ks, (int, float)) else list(ks)
    if not models:
        raise FinerError("no models given")
    for name, value in (("width", width), ("steps", steps), ("mc_samples", mc_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FinerError(f"{name} must be a positive integer, got {value!r}")
    if params not in ("all", "first"):
        raise FinerError(f"params is 'all' or 'first', got {params!r}")
    if not all(math.isfinite(k) and k >= 0 for k in ks):
        raise FinerError(f"bias ranges k must be finite and >= 0, got {', '.join(f'{k:g}' for k in ks)}")
    if points < 2:
        raise FinerError(f"points must be at least 2 (a kernel's off-diagonal needs two), got {points}")
    if mc_samples > MAX_MC_SAMPLES:
        raise FinerError(f"mc_samples {mc_samples}: at most {MAX_MC_SAMPLES:.0e} (about 10 minutes a bias range on "
                         "2 CPU cores; the Monte-Carlo error falls only as one over the square root of the samples, "
                         "and at the default 200000 it is already below the empirical kernel's own)")
    cases = _cases(list(models), list(ks))  # unknown names, before any work
    labels = [_label(m, k) for m, k in cases]
    alike = sorted({label for label in labels if labels.count(label) > 1})
    if alike:
        raise FinerError(f"bias ranges that print alike would share one row and one picture ({', '.join(alike)}); "
                         "give ranges that differ in their first six digits")
    # float64: the kernel, its symmetric copy and the eigen-solver's workspace; the Jacobian of all parameters
    # (complex ones twice) of the largest network of the analysis, linear in the width with one hidden layer:
    # counted on networks of width 8 and 16, not built at full width before a refusal
    def count(m, k, w):
        return sum(p.numel() * (2 if p.is_complex() else 1) for p in N.shallow_network(m, k, width=w).parameters())

    largest = 0.0
    for m, k in cases:
        small = count(m, k, 8)
        largest = max(largest, small + (count(m, k, 16) - small) * (width - 8) / 8)
    need = 8 * (4 * points**2 + points * largest * 2)
    budget = memory_budget(torch.device("cpu"))
    if need > budget:
        raise FinerError(f"an NTK of {points} points needs about {need / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB "
                         "available); use fewer --points or a smaller --width")
    io.check_claim(out, NTK_FILES, overwrite, "NTK analysis")  # (claimed once the results are in hand)
    x = N.ntk_grid(points)
    y = sum_of_sines(x)
    rows, kernels, spectra, curves = [], {}, {}, {}
    early = min(100, steps)  # the step of the "early" loss column
    for model, k in cases:
        net = N.shallow_network(model, k, width=width, seed=seed)
        K = N.empirical_ntk(net, x, params=params)
        label = _label(model, k)
        if not torch.isfinite(K).all():
            raise FinerError(f"the NTK of {label} overflows (entries beyond float range): its bias range is too "
                             "large for the network's arithmetic; give a smaller --k")
        eigs = N.eigenvalues(K)
        kernels[label], spectra[label] = K.numpy(), N.resolved(eigs).numpy()
        curves[label] = fit_curve(N.shallow_network(model, k, width=width, seed=seed), x, y, steps=steps, lr=lr)
        if not all(math.isfinite(v) for v in curves[label]):
            raise FinerError(f"the 1-D fit of {label} overflows (its float32 network's values beyond float range): "
                             "its bias range is too large for the network's arithmetic; give a smaller --k")
        rows.append({"model": model, "k": k, "network": dataclasses.asdict(net.config), "params": params,
                     "threshold": threshold, "diag_dominance": N.diag_dominance(K),
                     "n_large_eigenvalues": N.count_large(eigs, threshold), "largest_eigenvalue": float(eigs[0]),
                     "trace": float(K.trace()), "final_loss": curves[label][-1],
                     f"loss_at_step_{early}": curves[label][early]})
        log(f"{label:16s} diag/off {rows[-1]['diag_dominance']:.3f}  eigenvalues > {threshold:g}: "
            f"{rows[-1]['n_large_eigenvalues']}  fit loss {curves[label][-1]:.2e}")
    # Eq. (5) is FINER's first-layer kernel: checked when FINER is among the models
    checks = _eq5_checks([k for m, k in _cases(["finer"], list(ks))], seed, mc_samples) if "finer" in models else []
    setting = {"points": points, "grid": "linspace(0, 1, points + 1)[:-1]", "width": width, "hidden_layers": 0,
               "first_omega": 1.0, "final_init_omega": 30.0, "params": params, "threshold": threshold,
               "first_bias": "U(-k, k) for the FINER family; 0 for SIREN and PE-MLP (the notebook's haiku default); "
                             "the other methods' own initialisation",
               "kernel_dtype": "float64",
               "finer_scale_grad": N.shallow_network("finer", 1.0, width=1).config.scale_grad,
               "finer_scale_grad_note": "False: the official code's kernel, the scale |z| + 1 detached; the Eq. (5) "
                                        "check uses the true derivative, 2|z| + 1 (scale_grad True)",
               "fit": {"signal": "mean of sin(2 pi f x), f = 1, 3, 6, 10", "optimizer": "Adam", "lr": lr,
                       "steps": steps}, "seed": seed}
    io.claim_outputs(out, NTK_FILES, overwrite, "NTK analysis")
    io.write_json(out / "ntk.json", rows)
    io.write_json(out / "ntk_setting.json", {"setting": setting, "eq5_check": checks})
    _plot_kernels(kernels, out / "ntk_kernels.png")
    _plot_lines(spectra, out / "ntk_eigenvalues.png", "eigenvalue index", "eigenvalue", logy=True, logx=True,
                first=1, title="NTK eigenvalues above the float64 rounding (N eps x the largest)")
    _plot_lines({k: np.asarray(v) for k, v in curves.items()}, out / "ntk_fit_loss.png", "step (updates made)",
                "MSE", logy=True, first=0)
    (out / "ntk.md").write_text(_ntk_markdown(rows, setting, checks))
    return rows


def _eq5_checks(ks, seed, samples, width=4096, points=48, seeds=4) -> list[dict]:
    """Averaged empirical first-layer kernel vs the Monte-Carlo Eq. (5), per k."""
    x = torch.linspace(0, 1, points + 1)[:-1, None]
    checks = []
    for k in ks:
        emp = torch.stack([N.empirical_ntk(N.first_layer_kernel_net(k, width, seed + s), x, params="first")
                           for s in range(seeds)]).mean(0).double()
        mc, se = N.eq5_monte_carlo(x[:, 0], k=k, samples=samples, generator=torch.Generator().manual_seed(seed))
        checks.append({"k": k, "relative_error": float((emp - mc).norm() / mc.norm()),
                       "mc_relative_standard_error": float(se.norm() / mc.norm()),
                       "empirical_neurons": width * seeds, "mc_samples": samples, "points": points})
    return checks


def _plot_kernels(kernels: dict, path: Path) -> None:
    """The kernels side by side on one colour scale (shared by all panels, so their entries compare)."""
    n = len(kernels)
    fig = Figure(figsize=(3 * n + 0.8, 3.2), dpi=110)
    axes = fig.subplots(1, n, squeeze=False)
    low = min(float(K.min()) for K in kernels.values())
    high = max(float(K.max()) for K in kernels.values())
    for ax, (label, K) in zip(axes[0], kernels.items()):
        shown = ax.imshow(K, cmap="inferno", vmin=low, vmax=high)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.colorbar(shown, ax=list(axes[0]), shrink=0.8, label="K(x_i, x_j)")
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _plot_lines(series: dict, path: Path, xlabel: str, ylabel: str, logy=False, logx=False, first=1,
                title: str = "") -> None:
    """Each series against its index, counted from ``first``."""
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    if title:
        ax.set_title(title, fontsize=9)
    for label, values in series.items():
        ax.plot(np.arange(first, len(values) + first), values, label=label, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _ntk_markdown(rows, setting, checks) -> str:
    early = min(100, setting["fit"]["steps"])
    lines = [
        f"Setting: 1-D input, {setting['points']} points on [0, 1), one activated layer of width "
        f"{setting['width']} (SIREN and FINER: first omega 1, final-layer init omega 30; other methods "
        f"keep their own defaults, in ntk.json's network; first-layer bias U(-k, k) for the FINER family, 0 "
        f"for SIREN and PE-MLP, as in the official notebook), NTK over {setting['params']} parameters, computed in "
        f"float64; FINER's derivative "
        + ("with |z|+1 detached, as the official code trains it" if not setting["finer_scale_grad"] else
           "the true one") + f"; eigenvalues counted above {setting['threshold']:g}. "
        f"Fit: {setting['fit']['signal']}, Adam lr {setting['fit']['lr']}, {setting['fit']['steps']} full-batch "
        "steps; the loss at step t is that after t updates.",
        "",
        f"| model | k | diag/off-diag | eigenvalues > threshold | largest eigenvalue | fit loss at step {early} "
        "| final fit loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = ("- (bias 0)" if r["model"] in N.ZERO_BIAS else "- (default)") if r["k"] is None else f"{r['k']:g}"
        lines.append(f"| {r['model']} | {k} | {r['diag_dominance']:.3f} | {r['n_large_eigenvalues']} | "
                     f"{r['largest_eigenvalue']:.3g} | {r[f'loss_at_step_{early}']:.2e} | {r['final_loss']:.2e} |")
    if checks:
        lines += ["", "Eq. (5) by Monte Carlo vs the averaged empirical first-layer kernel (true derivative):", "",
                  "| k | relative error | MC standard error | neurons | MC samples |", "|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['k']:g} | {c['relative_error']:.4f} | {c['mc_relative_standard_error']:.4f} | "
                     f"{c['empirical_neurons']} | {c['mc_samples']} |")
    return "\n".join(lines) + "\n"


STATISTICS = {"z": "pre-activation z", "y": "activation y", "freq_z": "ω(2|z|+1)", "freq_x": "local frequency in x"}
"""The distributions ``analyze activations`` draws, by their keys in :func:`layer_statistics`."""
ACTIVATION_BYTES = 140
"""Bytes ``analyze activations`` takes per grid point, unit and layer (measured 129 on the CPU between 64x64
and 128x128, width 256, 2 layers): a layer's z, its derivatives along x and y, the four statistics, and
NumPy's float64 copies for the histograms."""


def analyze_activations(out, *, ks=(None, 1.0, 5.0, 10.0, 20.0), layers=2, resolution=128, seed=0, width=None,
                        hidden_layers=None, overwrite=False, log=io.quiet) -> list[dict]:
    """Fig. 5: distributions of z, y and local frequencies of the first layers of the image FINER
    (3 x 256, omega 30; ``width`` and ``hidden_layers`` change its size). ``out`` may hold other files;
    one with an earlier activation analysis is refused unless ``overwrite``."""
    size = {key: value for key, value in (("width", width), ("hidden_layers", hidden_layers)) if value is not None}
    config = make_config("finer", **size)
    activated = config.hidden_layers + 1  # the FINER layers (the last is linear)
    if not 1 <= layers <= activated:
        raise FinerError(f"layers {layers}: this FINER ({config.hidden_layers} x {config.width}) has {activated} "
                         f"activated layers; give 1 to {activated}")
    out = Path(out)
    io.check_claim(out, ACTIVATION_FILES, overwrite, "activation analysis")  # (claimed once the results are in hand)
    need, budget = resolution**2 * config.width * layers * ACTIVATION_BYTES, memory_budget(torch.device("cpu"))
    if need > budget:
        raise FinerError(f"the statistics of {layers} layers of width {config.width} on a {resolution}x{resolution} "
                         f"grid need about {need / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB available); use a "
                         "smaller --resolution")
    coords = coordinate_grid(resolution, resolution)
    rows, histograms = [], {}  # (the distributions as histograms: one k's tensors are held at a time)
    for k in ks:
        net = build_model("finer", 2, 3, seed=seed, **size, **({} if k is None else {"first_bias_scale": k}))
        stats = layer_statistics(net, coords, layers)
        name = "k=default" if k is None else f"k={k:g}"
        if not all(torch.isfinite(s[key]).all() for s in stats for key in s):
            raise FinerError(f"the activation statistics of FINER {name} overflow (values beyond float range): its "
                             "bias range is too large for the network's arithmetic; give a smaller --k")
        histograms[k] = [{key: np.histogram(s[key].numpy(), bins=200, density=True) for key in STATISTICS}
                         for s in stats]
        for i, s in enumerate(stats):
            rows.append({"k": k, "layer": i + 1, "width": config.width, "hidden_layers": config.hidden_layers,
                         "seed": seed, "resolution": resolution,
                         "z_abs_max": float(s["z"].abs().max()),
                         "max_freq_z": float(s["freq_z"].max()), "max_freq_x": float(s["freq_x"].max()),
                         "mean_freq_x": float(s["freq_x"].mean()),
                         "p99_freq_x": float(torch.quantile(s["freq_x"][:: max(1, s["freq_x"].numel() // 1_000_000)],
                                                            0.99))})
            log(f"{name} layer {i + 1}: max omega(2|z|+1) {rows[-1]['max_freq_z']:.1f}, "
                f"max frequency in x {rows[-1]['max_freq_x']:.1f}")
    io.claim_outputs(out, ACTIVATION_FILES, overwrite, "activation analysis")
    fig = Figure(figsize=(16, 3.2 * layers), dpi=100)
    axes = fig.subplots(layers, 4, squeeze=False)
    for k, layer_histograms in histograms.items():
        label = "default" if k is None else f"k={k:g}"
        for i, h in enumerate(layer_histograms):
            for j, (key, name) in enumerate(STATISTICS.items()):
                density, edges = h[key]
                axes[i][j].stairs(density, edges, label=label)
                axes[i][j].set_title(f"layer {i + 1}: {name}", fontsize=9)
                axes[i][j].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    _save(fig, out / "activations.png")
    io.write_json(out / "activations.json", rows)
    lines = [f"FINER image network ({config.hidden_layers} x {config.width}, omega {config.first_omega:g}) at "
             f"initialisation, seed {seed}, on a "
             f"{resolution}x{resolution} grid of [-1, 1]^2. ω(2\\|z\\|+1): the activation's frequency in "
             "radians per unit of z; frequencies in x: radians per unit of input, ω(2\\|z\\|+1)·‖∇ₓz‖.", "",
             "| k | layer | max \\|z\\| | max ω(2\\|z\\|+1) | max frequency in x | 99th pct frequency in x "
             "| mean frequency in x |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        k = "default" if r["k"] is None else f"{r['k']:g}"
        lines.append(f"| {k} | {r['layer']} | {r['z_abs_max']:.2f} | {r['max_freq_z']:.1f} | {r['max_freq_x']:.1f} "
                     f"| {r['p99_freq_x']:.1f} | {r['mean_freq_x']:.1f} |")
    (out / "activations.md").write_text("\n".join(lines) + "\n")
    return rows


NEURON_FILES = ("neurons.png", "neuron_spectrum.png", "neurons.json")


NEURON_BYTES = 16
"""Bytes :func:`analyze_neurons` holds a neuron and pixel (measured 12.4 at 256x256, width 256): its float32
output, the layer's output before the transpose that gives it, and the spectra of a few units at a time."""


def analyze_neurons(checkpoint, out=None, *, count=64, overwrite=False) -> dict:
    """Pictures of the first-layer neurons of an image checkpoint and their mean radial spectrum, in ``out``
    (default: the run's ``neurons/``); one with an earlier such analysis is refused unless ``overwrite``."""
    model, payload = io.load_checkpoint(checkpoint, "image", "finer analyze neurons")
    task = payload["task"]
    ckpt = Path(checkpoint)
    out = Path(out) if out else (ckpt if ckpt.is_dir() else ckpt.parent) / "neurons"
    io.check_claim(out, NEURON_FILES, overwrite, "neuron analysis")  # (claimed once the results are in hand)
    units, pixels = model.layers[0].linear.out_features, task["height"] * task["width"]
    need, budget = units * pixels * NEURON_BYTES, memory_budget(torch.device("cpu"))
    if need > budget:
        raise FinerError(f"the {units} first-layer neurons of this run on its {task['width']}x{task['height']} "
                         f"training grid need about {need / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB available); "
                         "analyze a run fitted to a smaller image")
    outputs = first_layer_outputs(model.eval(), task["height"], task["width"], task["aspect"])
    grid = neuron_grid(outputs, count)
    freq, power = radial_spectrum(outputs)
    io.claim_outputs(out, NEURON_FILES, overwrite, "neuron analysis")
    io.atomic_write(out / "neurons.png", lambda tmp: Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(
        tmp, format="PNG", optimize=True))  # 8-bit grey
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    ax.semilogy(freq[1:], power[1:])
    ax.set_xlabel("radial frequency (cycles per image side)")
    ax.set_ylabel("mean power of first-layer neurons")
    ax.grid(alpha=0.3)
    _save(fig, out / "neuron_spectrum.png")
    centroid = float((freq * power).sum() / power.sum())
    summary = {"checkpoint": str(checkpoint), "model": payload["method"], "units": int(outputs.shape[0]),
               "spectral_centroid": centroid, "spectral_centroid_unit": "cycles per image side"}
    io.write_json(out / "neurons.json", {**summary, "frequency": freq.tolist(), "power": power.tolist()})
    return {**summary, "out": str(out)}


