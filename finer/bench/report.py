"""The self-contained HTML report of an image benchmark: the summary table, the training-PSNR curves
of all methods on one plot, and for each image side-by-side crops of every method's reconstruction
and error map. Figures are embedded as base64 PNGs, so ``report.html`` can be mailed or committed
alone."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone
import numpy as np

from finer import io
from finer.tasks.image import load_image

CROP = 64  # side of the crop shown per image, in pixels of the fitted image


def _png(fig) -> str:
    """The figure as an embeddable palette PNG (256 colours keep plots and crops readable)."""
    return "data:image/png;base64," + base64.b64encode(io.palette_png(fig)).decode("ascii")


def mean_curves(rows: list[dict], models: list[str]) -> dict[str, tuple[list, np.ndarray, int]]:
    """Per method with curves: the steps, the mean training PSNR at them and the number of runs averaged,
    over its runs that did not diverge (a diverged run's curve stops early: it is left out, not allowed to cut
    the others short)."""
    means = {}
    for name in models:
        curves = [r["curve"] for r in rows if r["model"] == name and r.get("curve") and r.get("status") != "diverged"]
        if curves:
            length = min(len(c) for c in curves)
            means[name] = ([c[0] for c in curves[0][:length]],
                           np.mean([[p[1] for p in c[:length]] for c in curves], axis=0), len(curves))
    return means


def curves_figure(rows: list[dict], models: list[str]) -> str | None:
    """Mean training PSNR (unclipped, full batch) against step per method (:func:`mean_curves`)."""
    means = mean_curves(rows, models)
    if not means:
        return None
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    for name, (steps, mean, count) in means.items():
        ax.plot(steps, mean, lw=1.4, label=f"{name} ({count})")
    ax.set_xlabel("step")
    ax.set_ylabel("training PSNR (dB), mean over runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _png(fig)


def crops_figure(target: np.ndarray, recons: dict[str, np.ndarray]) -> str:
    """Row 1: the reference and each reconstruction, row 2: absolute error (shared scale), all on
    the same centre crop, nearest-neighbour enlarged."""
    h, w = target.shape[:2]
    side = min(CROP, h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2

    def crop(a):
        a = a[y0:y0 + side, x0:x0 + side]
        return a[..., 0] if a.shape[-1] == 1 else a[..., :3]

    errors = {m: np.abs(r.astype(np.float64) - target).mean(axis=-1) for m, r in recons.items()}
    vmax = max([float(np.percentile(crop(e[..., None]), 99.5)) for e in errors.values()] + [1e-6])
    cols = len(recons) + 1
    fig = Figure(figsize=(1.7 * cols, 3.7), dpi=100)
    axes = fig.subplots(2, cols, squeeze=False)
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if target.shape[-1] == 1 else {}
    axes[0, 0].imshow(crop(target), interpolation="nearest", **grey)
    axes[0, 0].set_title("reference", fontsize=8)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, f"|error|\n0 to {vmax:.3f}", ha="center", va="center", fontsize=8)
    for i, (name, rec) in enumerate(recons.items(), start=1):
        axes[0, i].imshow(crop(np.clip(rec, 0, 1)), interpolation="nearest", **grey)
        axes[0, i].set_title(name, fontsize=8)
        axes[1, i].imshow(crop(errors[name][..., None]), cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)


def _table_html(rows: list[dict], models: list[str]) -> str:
    from finer.bench.images import BEST_NOTE, _diverged_note, _pm, best_counts, summary_rows

    head = "<tr><th>rank</th><th>model</th><th>PSNR (dB)</th><th>SSIM</th><th>LPIPS</th><th>params</th>" \
           "<th>s/step</th><th>runs</th><th>best on</th></tr>"
    best = best_counts(rows, models)
    body = []
    for rank, (name, p, sp, s, ss, lp, slp, params, sps, n) in enumerate(summary_rows(rows, models), start=1):
        lp_cell = f"{lp:.2e}{_pm(slp, '.1e')}" if lp is not None else "–"
        diverged = sum(r["model"] == name and r.get("status") == "diverged" for r in rows)
        body.append(f"<tr><td>{rank}</td><td>{html.escape(name)}</td><td>{p:.2f}{_pm(sp, '.2f')}</td>"
                    f"<td>{s:.4f}{_pm(ss, '.4f')}</td><td>{lp_cell}</td><td>{params}</td><td>{sps:.3f}</td>"
                    f"<td>{n}{f' ({diverged} †)' if diverged else ''}</td><td>{best[name]}</td></tr>")
    note = html.escape(BEST_NOTE.strip()).replace("*best on*", "<em>best on</em>")
    footnote = _diverged_note(rows).strip()
    extra = f"<p>{html.escape(footnote)}</p>" if footnote else ""
    return f"<table>{head}{''.join(body)}</table><p>{note}</p>{extra}"


def write_report(out: Path, rows: list[dict], models: list[str], protocol: dict, images: list[Path]) -> Path:
    """Write ``out/report.html`` from the records in ``rows`` and the PNGs beside them."""
    from finer.bench.images import _protocol_line

    out = Path(out)
    parts = [f"<h1>Image benchmark</h1><p>{html.escape(_protocol_line(protocol))}</p>",
             "<p>Ranked by mean PSNR. ± is the standard deviation over runs (images × seeds).</p>",
             _table_html(rows, models)]
    curves = curves_figure(rows, models)
    if curves:
        parts.append(f"<h2>Training PSNR against step</h2><img src='{curves}' alt='PSNR curves'>")
    parts.append(f"<h2>Reconstructions and error maps</h2><p>Centre {CROP}×{CROP} crop of each fitted image "
                 "(first seed), enlarged; error maps share one colour scale per image.</p>")
    for path in images:
        recons = {}
        for name in models:
            done = sorted((r for r in rows if r["model"] == name and r["image"] == path.name and "curve" in r),
                          key=lambda r: r["seed"])
            png = out / "runs" / f"{path.stem}-{name}-s{done[0]['seed']}.png" if done else None
            if png is not None and png.is_file():
                recons[name] = load_image(png, alpha="drop")
        if not recons:
            continue
        target = load_image(path, crop=protocol.get("crop"), size=protocol.get("size"))
        if target.shape[-1] == 1:
            recons = {m: r[..., :1] for m, r in recons.items()}
        parts.append(f"<h3>{html.escape(path.name)}</h3><img src='{crops_figure(target, recons)}' "
                     f"alt='crops of {html.escape(path.name)}'>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "img{max-width:100%}")
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>finer bench images</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    target_path = out / "report.html"
    io.atomic_write(target_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return target_path
