"""Files: atomic writes, JSON and CSV outputs, and self-describing checkpoints."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from finer.errors import FinerError, FinerWarning, InterruptedRun
from finer.models import MODELS, build_from_config, make_config

CHECKPOINT_FORMAT = "finer-inr checkpoint"
NERF_CHECKPOINT_FORMAT = "finer-nerf"
BENCH_PARTIAL_FORMAT = "finer-inr bench partial run"
_KINDS = {CHECKPOINT_FORMAT: "an image or SDF model's checkpoint",
          NERF_CHECKPOINT_FORMAT: "a NeRF checkpoint (for `finer render nerf`)",
          BENCH_PARTIAL_FORMAT: "the saved state of a benchmark run still in progress"}
_TASKS = {"image": "an image model's checkpoint", "sdf": "an SDF model's checkpoint"}
CHECKPOINT_VERSION = 1


def quiet(*_: Any) -> None:
    """A ``log`` that drops its messages: the library functions' default (the ``finer`` command passes
    one that prints them)."""


def palette_png(fig, colors: int = 256) -> bytes:
    """A matplotlib figure as palette PNG bytes (``colors`` colours): renders and plots keep their look
    at a fraction of the RGBA size."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    out = _io.BytesIO()
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors).save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_figure(fig, path: str | os.PathLike, colors: int = 256) -> None:
    """A matplotlib figure written as a palette PNG (:func:`palette_png`)."""
    data = palette_png(fig, colors)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename into place, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # (the name's start only: a name near the file system's limit still gets a temporary name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_outputs(folder: str | os.PathLike, names: Iterable[str | os.PathLike]) -> None:
    """Delete the files (or folders) ``names`` of ``folder`` where they exist: the outputs of an earlier run
    in a folder that a new run overwrites, so none of them stands beside the new run's as if it were its own."""
    import shutil

    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_out(path: str | os.PathLike, *, folder: bool, option: str = "--out") -> Path:
    """Fail at once, before any work, when ``path`` cannot be written as a folder (``folder``) or a file:
    it exists as the other kind, or a file stands where one of its parent folders should be."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise FinerError(f"{option} {path} exists and is "
                         + ("not a folder" if folder else "a folder; give a file name"))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FinerError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def check_claim(out: str | os.PathLike, files: Iterable[str], overwrite: bool, what: str) -> list[str]:
    """What :func:`claim_outputs` refuses, without touching anything: a command that computes before it
    writes checks this first, and claims the folder once its results are in hand (so that a failure on the
    way loses no earlier result, even with ``overwrite``). Returns the ``files`` present in ``out``."""
    out = check_out(out, folder=True)
    present = [name for name in files if (out / name).exists()]
    if present and not overwrite:
        raise FinerError(f"{out} holds an earlier {what} ({', '.join(present)}); choose another --out "
                         "or pass --overwrite (overwrite=True from Python) to replace it")
    return present


def claim_outputs(out: str | os.PathLike, files: Iterable[str], overwrite: bool, what: str) -> Path:
    """Make the folder ``out`` ready for a command writing ``files`` into it: refused when it holds one of
    them already (an earlier result, which would be replaced) unless ``overwrite``, which removes them first,
    so that none stands beside a new result that stops early. Other files of the folder are left alone."""
    out = Path(out)
    remove_outputs(out, check_claim(out, files, overwrite, what))
    out.mkdir(parents=True, exist_ok=True)
    return out


DERIVED_OUTPUTS = ("render_x*.png", "neurons", "eval", "turntable")
"""What other commands write into a run folder from its network (``render``, ``analyze neurons``, ``eval sdf``,
``render nerf``), left alone by a run that overwrites or resumes in that folder."""


def warn_stale_outputs(folder: str | os.PathLike, made_from: str) -> list[str]:
    """Warn (:class:`~finer.errors.FinerWarning`) about the :data:`DERIVED_OUTPUTS` in ``folder``, which a
    run about to train there leaves alone but makes stale: they show ``made_from``. Returns their names."""
    import warnings

    names = sorted({p.name for pattern in DERIVED_OUTPUTS for p in Path(folder).glob(pattern)})
    if names:
        warnings.warn(f"{', '.join(names)} in {folder} {'was' if len(names) == 1 else 'were'} made from {made_from}, "
                      "not from the network this run trains; make them again when it is done", FinerWarning,
                      stacklevel=2)
    return names


def check_not_an_output(source: str | os.PathLike | None, out: str | os.PathLike, names: Iterable[str],
                        what: str = "input") -> None:
    """Refuse an input that is one of the files a run writes in ``out`` (``names``): the run would delete or
    overwrite its own input (refitting a run's ``reconstruction.png`` or ``mesh.ply`` into the same folder)."""
    if source is None:
        return
    source = Path(source).resolve()
    for name in names:
        if (Path(out) / name).resolve() == source:
            raise FinerError(f"the {what} {source} is the {name} this run writes in {out}; "
                             "copy it elsewhere or choose another --out")


def check_unique_stems(paths: Iterable[Path], what: str) -> None:
    """Refuse inputs whose names differ only by extension or case (``a.png``, ``a.jpg``, ``A.png``): runs
    and records are named by the stem, so one would overwrite the other (on macOS and Windows, whose file
    systems ignore case, also ``A`` and ``a``)."""
    by_stem: dict[str, list[str]] = {}
    for path in paths:
        by_stem.setdefault(Path(path).stem.casefold(), []).append(Path(path).name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        listing = "; ".join(" and ".join(names) for names in clashes)
        raise FinerError(f"{listing}: {what} whose names differ only by extension or case, and their runs are named "
                         "by the rest, in folders that may ignore case; rename or move one of each")


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` with what strict JSON cannot hold replaced: NaN by null, infinities by "inf"/"-inf",
    tuples by lists, paths by strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stored_number(value: Any) -> Any:
    """A number as :func:`jsonable` stored it, back as a float: null is NaN, "inf"/"-inf" infinities
    (anything else is returned as it is)."""
    if value is None:
        return math.nan
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (non-finite floats become null or "inf")."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FinerError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FinerError(f"{path} is not valid JSON: {exc}") from None


def read_record(path: str | os.PathLike) -> dict:
    """A run file's JSON object (config.json, metrics.json), or an empty dict where there is none: the file
    missing, unreadable or not an object. For the checks that only look at what a folder holds."""
    try:
        data = read_json(path)
    except FinerError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def failure_recorded(metrics_path: str | os.PathLike) -> Iterator[None]:
    """Around a run's training and evaluation: if they raise, a ``metrics.json`` that still says
    ``running`` is made to say ``failed`` (``interrupted`` for Ctrl-C) with the error, so that no run
    folder keeps claiming to train after its process is gone. The error is raised again."""
    try:
        yield
    except BaseException as exc:
        metrics = read_record(metrics_path)
        if metrics.get("status") == "running":
            interrupted = isinstance(exc, (KeyboardInterrupt, InterruptedRun))
            stage = metrics.pop("stage", None)
            message = (str(exc) or "interrupted") if interrupted else f"{type(exc).__name__}: {exc}"
            metrics.update(status="interrupted" if interrupted else "failed",
                           message=message + (f" (while {stage} after step {metrics.get('steps')})" if stage else ""))
            write_json(metrics_path, metrics)
        raise


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Iterable[str] = ()) -> None:
    """Write dict rows as CSV; the header is ``columns`` then the other keys in first-seen order (so a
    file without rows still names its columns)."""
    rows = list(rows)
    keys: list[str] = list(columns)
    for row in rows:
        keys += [k for k in row if k not in keys]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Save a network built by :func:`finer.build_model` with everything needed to rebuild it without other
    files: its method, config and weights (``model.state_dict()``, unless ``extra`` gives ``"model"``, such
    as a run's last good snapshot), and ``extra`` (a run's ``fit`` state, its ``task``, ...)."""
    import dataclasses

    if not hasattr(model, "method") or not hasattr(model, "config"):
        raise FinerError(f"save_checkpoint saves networks built by finer.build_model; got a {type(model).__name__}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": model.method,
        "model_config": dataclasses.asdict(model.config),
        "in_features": model.in_features,
        "out_features": model.out_features,
        "model": model.state_dict(),
        **(extra or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_payload(path: str | os.PathLike, fmt: str = CHECKPOINT_FORMAT,
                 want: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The dict saved in ``path`` (a ``checkpoint.pt`` or its run folder), checked to be of format ``fmt``;
    ``want`` says what the caller needs, for the error about a file of another kind."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FinerError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a PyTorch file holding more than tensors and plain data
            raise FinerError(f"{path} is not a finer-inr checkpoint (it holds Python objects, not only "
                             "tensors)") from None
        raise FinerError(f"cannot read checkpoint {path}: not a file saved by PyTorch") from None
    except Exception as exc:  # torch raises many kinds for a bad file
        raise FinerError(f"cannot read checkpoint {path}: not a file saved by PyTorch "
                         f"({type(exc).__name__}: {exc})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != fmt:
        if found in _KINDS:
            kind = payload.get("task", {}).get("kind") if isinstance(payload.get("task"), dict) else None
            raise FinerError(f"{path} is {_TASKS.get(kind, _KINDS[found])}, not {want or _KINDS.get(fmt, fmt)}")
        raise FinerError(f"{path} is not a finer-inr checkpoint")
    return path, payload


def load_checkpoint(path: str | os.PathLike, task: str | None = None,
                    reader: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns ``(model, payload)``. ``task`` (``"image"`` or
    ``"sdf"``): the kind of model required, and ``reader`` the command that needs it, for the message
    that refuses another kind."""
    if task not in (None, *_TASKS):
        raise FinerError(f"task {task!r}: load_checkpoint rebuilds {' or '.join(map(repr, _TASKS))} networks "
                         "(a NeRF run: finer.nerf_run.load_renderer)")
    want = _TASKS.get(task, "an image or SDF model's checkpoint") + (f", which `{reader}` reads" if reader else "")
    if reader == "finer render":
        want += " (`finer render nerf` reads NeRF runs)"
    path, payload = read_payload(path, want=want)
    found = payload.get("task", {}).get("kind") if isinstance(payload.get("task"), dict) else None
    if task is not None and found != task:
        surface = ("; an SDF run's folder holds its surface already (mesh.ply, render.png), which `finer eval sdf` "
                   "remakes at another --resolution") if found == "sdf" else ""
        raise FinerError(f"{path} is {_TASKS.get(found, f'a checkpoint of task {found!r}')}, not {want}{surface}")
    missing = [key for key in ("method", "model_config", "in_features", "out_features", "model") if key not in payload]
    if missing:
        raise FinerError(f"{path} is an incomplete finer-inr checkpoint (no {', '.join(missing)})")
    if payload["method"] not in MODELS:
        raise FinerError(f"{path} holds unknown model {payload['method']!r}")
    cfg = make_config(payload["method"], **payload["model_config"])
    model = build_from_config(payload["method"], cfg, payload["in_features"], payload["out_features"])
    model.load_state_dict(payload["model"])
    return model, payload
