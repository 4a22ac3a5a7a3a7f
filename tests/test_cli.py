"""The command line end to end: outputs present and well-formed, bad input, interrupt and resume."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finer.cli import main
from finer.errors import FinerError

ROOT = Path(__file__).resolve().parents[1]


def test_fit_image_writes_a_complete_run_folder(png_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", "image", str(png_path), "--model", "finer", "--steps", "20", "--width", "32",
                 "--hidden-layers", "1", "--eval-every", "10", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["out"] == str(out)  # where to look
    for name in ("config.json", "metrics.json", "curve.csv", "reconstruction.png", "error_map.png",
                 "psnr_curve.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("task", "model", "params", "steps", "psnr", "ssim", "seconds", "seconds_per_step", "device"):
        assert key in metrics, key
    assert metrics["steps"] == 20 and metrics["status"] == "complete" and metrics["psnr"] > 10
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert len(rows) == 20 and float(rows[-1]["eval_psnr"]) == pytest.approx(metrics["psnr"], abs=1e-3)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["width"] == 32 and config["model"]["name"] == "finer"
    assert Image.open(out / "reconstruction.png").size == (24, 24)
    # render from the checkpoint alone, at twice the resolution
    assert main(["render", str(out / "checkpoint.pt"), "--scale", "2", "--out", str(tmp_path / "x2.png")]) == 0
    assert Image.open(tmp_path / "x2.png").size == (48, 48)


def test_default_image_and_models_listing(tmp_path, capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "finer" in listing and "wire-finer" in listing
    # the other tasks' defaults, read from where those tasks take them
    from finer.nerf_run import NeRFRunConfig
    from finer.sdf_run import SDF_DEFAULTS

    assert f"finer fit sdf uses hidden_layers={SDF_DEFAULTS['hidden_layers']}, lr={SDF_DEFAULTS['lr']}" in listing
    assert f"finer fit nerf uses width={NeRFRunConfig(scene='').width}" in listing
    assert "official-finer: the official FINER code" in listing
    assert main(["fit", "image", "--size", "16", "--steps", "2", "--width", "8", "--out", str(tmp_path / "d"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["image"] == "skimage:astronaut"


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "image", "/no/such/file.png"], "image file not found"),
        (["fit", "image", "--model", "nope"], "unknown model 'nope'; choose one of"),
        (["fit", "image", "--model", "gauss", "--first-omega", "3"], "has no option first_omega"),
        (["render", "/no/such/checkpoint.pt"], "checkpoint not found"),
        (["fit", "image", "--device", "cpu", "--cuda-graph"], "a CUDA graph needs a CUDA device"),
        (["bench", "speed", "--device", "cpu", "--cuda-graph"], "a CUDA graph needs a CUDA device"),
        (["bench", "images", ".", "--seeds", "0,0", "--out", "o"], "--seeds lists 0 more than once"),
        (["bench", "images", ".", "--models", "finer,siren,finer", "--out", "o"], "--models lists finer more than"),
        (["bench", "width", ".", "--widths", "8,16,8", "--out", "o"], "--widths lists 8 more than once"),
        (["bench", "sdf", ".", "--models", "wire,wire", "--out", "o"], "--models lists wire more than once"),
        (["bench", "speed", "--models", "finer,finer"], "--models lists finer more than once"),
        (["analyze", "ntk", "--k", "1,1", "--out", "o"], "--k lists 1.0 more than once"),
        (["analyze", "activations", "--k", "default,default", "--out", "o"], "--k lists default more than once"),
        (["bench", "images", ".", "--seeds", "-1", "--out", "o"], "from 0 to 2^32 - 1"),
        (["fit", "nerf", "scene", "--samples", "2"], "takes samples >= 3; got samples 2 with fine 64"),
        (["fit", "nerf", "scene", "--option", "seed=1"], "--option seed=... does not apply to a radiance field"),
        (["fit", "nerf", "scene", "--option", "target_range=0,255"], "--option target_range=... does not apply to a "
                                                                     "radiance field (no option: the colour network"),
        (["fit", "nerf", "scene", "--option", "in_features=5"], "in_features=... does not apply"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, tmp_path, capsys):
    code = main([*args, "--out", str(tmp_path / "o")] if args[0] == "fit" else args)
    err = capsys.readouterr().err
    assert code != 0 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("size", ["0", "abc"])
def test_a_grid_size_says_it_takes_none_too(size, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "images", ".", "--size", size, "--out", "o"])
    assert exc.value.code == 2 and f"expected a positive integer or none, got '{size}'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["fit", "image"], ["fit", "sdf", "m.obj"], ["fit", "nerf", "scene"],
                                     ["analyze", "ntk"], ["analyze", "activations"]])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_a_seed_out_of_range_is_a_usage_error(command, seed, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--seed", seed])
    assert exc.value.code == 2 and "expected a seed from 0 to 2^32 - 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["fit", "image", ""], "path"), (["fit", "image", "--out", ""], "--out"), (["eval", "sdf", ""], "checkpoint"),
    (["bench", "images", "d", "--out", ""], "--out")])
def test_an_empty_path_is_a_usage_error(argv, named, capsys):
    """An unset shell variable ("$IMAGE") would otherwise mean the current folder."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and f"error: {named}: an empty path" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--width", "0"), ("--steps", "0"), ("--steps", "-3"), ("--lr", "nan")])
def test_non_positive_values_are_rejected(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "image", flag, value])
    assert exc.value.code != 0 and "expected a positive" in capsys.readouterr().err


def test_unreadable_file_and_occupied_output(tmp_path, png_path, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00" * 100)
    assert main(["fit", "image", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    assert main(["fit", "image", str(png_path), "--out", str(busy)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "precious"


def test_image_too_large_for_memory(png_path, tmp_path, monkeypatch, capsys):
    import finer.tasks.image as img

    monkeypatch.setattr(img, "memory_budget", lambda device: 10_000)
    assert main(["fit", "image", str(png_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "GiB available" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [MemoryError, type("OutOfMemoryError", (RuntimeError,), {}),
                                   lambda text: RuntimeError("DefaultCPUAllocator: can't allocate memory: " + text)],
                         ids=["host", "cuda", "torch-cpu"])
def test_out_of_memory_names_the_options_of_the_command_that_ran(png_path, tmp_path, monkeypatch, capsys, error):
    import finer.runs
    import finer.sdf_run

    def exhausted(*args, **kwargs):
        raise error("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(finer.runs, "fit_image", exhausted)
    monkeypatch.setattr(finer.sdf_run, "fit_sdf", exhausted)
    for argv, hint in (([], "--batch-size N (random pixels per step)"),
                       (["--batch-size", "4096"], "a smaller --batch-size than 4096")):
        assert main(["fit", "image", str(png_path), "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert hint in err and len(err.strip().splitlines()) == 1
        cuda = getattr(error, "__name__", "") == "OutOfMemoryError"
        assert ("out of GPU memory" in err and "--device cpu" in err) == cuda
    assert main(["fit", "sdf", str(png_path), "--out", str(tmp_path / "s")]) == 2
    assert "--batch-size (now 10000), --pool-size or --resolution" in capsys.readouterr().err


@pytest.mark.parametrize("code, filename, expected", [
    (errno.EROFS, "o/.config.json.ab12cd34.json", "cannot write in {tmp}/o: {text}"),  # a temporary file's folder
    (errno.ENOSPC, None, "cannot write (the disk of the output folder?): {text}"),  # data written: no file name
    (errno.EACCES, "imgs", "no permission for {tmp}/imgs: {text}")])  # a folder that cannot be read: itself
def test_a_read_only_or_full_disk_or_a_permission_is_one_line(png_path, tmp_path, monkeypatch, capsys, code,
                                                              filename, expected):
    import finer.runs

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code), *([str(tmp_path / filename)] if filename else []))

    monkeypatch.setattr(finer.runs, "fit_image", refused)
    assert main(["fit", "image", str(png_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: " + expected.format(tmp=tmp_path, text=os.strerror(code)) + "\n"


@pytest.mark.parametrize("argv", [
    ["fit", "image", "x"], ["fit", "image", "DIR", "--batch-signals", "4"], ["fit", "sdf", "x", "--out", "o"],
    ["fit", "nerf", "x", "--out", "o"], ["eval", "image", "a", "b"], ["eval", "sdf", "x"], ["render", "x"],
    ["analyze", "ntk", "--out", "o"], ["analyze", "activations", "--out", "o"], ["analyze", "neurons", "x"],
    ["bench", "images", "x", "--out", "o"], ["bench", "width", "x", "--out", "o"], ["bench", "sdf", "x", "--out", "o"],
    ["bench", "speed"]], ids=lambda argv: " ".join(argv[:2]))
def test_the_memory_hint_names_options_the_command_has(argv):
    import re

    from finer.cli import _memory_hint, build_parser

    args = build_parser().parse_args(argv)
    hint = _memory_hint(args)
    has = {option for action in args.leaf._actions for option in action.option_strings}
    named = set(re.findall(r"--[a-z-]+", hint))
    assert named <= has, hint  # every option it names is the command's
    # and it names one, except where no option of the command changes the memory (the run's image does)
    assert named or argv[:2] == ["analyze", "neurons"] and "a smaller image" in hint, hint


def test_divergence_keeps_last_good_checkpoint(png_path, tmp_path, capsys):
    out = tmp_path / "div"
    code = main(["fit", "image", str(png_path), "--lr", "1e4", "--steps", "50", "--width", "16", "--out", str(out),
                 "--quiet"])
    assert code == 3
    assert "last good step" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "last good step" in metrics["message"]
    assert (out / "checkpoint.pt").is_file()
    import finer  # from Python: the error carries what the run recorded, as InterruptedRun does

    cfg = finer.ImageRunConfig(image=str(png_path), steps=50, model_options={"width": 16, "lr": 1e4})
    with pytest.raises(finer.DivergedError, match="try a lower learning rate") as caught:
        finer.fit_image(cfg, tmp_path / "py", progress=False)
    assert caught.value.metrics["status"] == "diverged" and caught.value.metrics["out"] == str(tmp_path / "py")
    assert caught.value.metrics["psnr"] == json.loads((tmp_path / "py" / "metrics.json").read_text())["psnr"]


def test_a_run_that_diverges_at_once_keeps_a_curve_that_names_its_columns(png_path, tmp_path, capsys):
    out = tmp_path / "div"
    assert main(["fit", "image", str(png_path), "--lr", "1e6", "--steps", "50", "--width", "16", "--out", str(out),
                 "--quiet"]) == 3
    assert "last good step 0" in capsys.readouterr().err
    assert (out / "curve.csv").read_text().splitlines() == ["step,loss,train_psnr,lr"]


def test_a_network_that_is_not_finite_before_training_is_named(png_path, tmp_path, capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning leaks out of writing a NaN picture
        assert main(["fit", "image", str(png_path), "--first-bias-scale", "1e30", "--steps", "3", "--width", "8",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "the untrained network's output is not finite" in err and "lower --lr" not in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_leaves_a_consistent_folder_that_resumes(png_path, tmp_path, signum):
    out = tmp_path / "int"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "finer.cli", "fit", "image", str(png_path), "--steps", "1000000", "--width", "16",
           "--hidden-layers", "1", "--eval-every", "0", "--checkpoint-every", "20", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:  # the loop is running
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "finer resume" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 0 < metrics["steps"] < 1_000_000
    done = metrics["steps"]
    assert len(list(csv.DictReader((out / "curve.csv").open()))) == done
    assert main(["resume", str(out), "--steps", str(done + 5), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["steps"] == done + 5
    assert len(list(csv.DictReader((out / "curve.csv").open()))) == done + 5


def test_make_test_is_what_ci_runs():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_grey_image_end_to_end(tmp_path):
    grey = (np.linspace(0, 1, 144).reshape(12, 12) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert main(["fit", "image", str(tmp_path / "g.png"), "--model", "pemlp", "--steps", "5", "--width", "8",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert Image.open(tmp_path / "o" / "reconstruction.png").mode == "L"


def test_eval_image_prints_metrics_as_json(tmp_path, capsys):
    from skimage import data

    from finer import lpips

    ref = data.astronaut()[:96, :128]
    noisy = np.clip(ref.astype(int) + np.random.default_rng(0).integers(-8, 9, ref.shape), 0, 255).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    flags = [] if lpips.available() else ["--no-lpips"]
    assert main(["eval", "image", str(tmp_path / "noisy.png"), str(tmp_path / "ref.png"), *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    mse = np.mean((noisy / 255.0 - ref / 255.0) ** 2)
    assert out["psnr"] == pytest.approx(-10 * np.log10(mse), abs=1e-6)
    assert 0.5 < out["ssim"] < 1.0
    if lpips.available():
        assert 0.0 < out["lpips"] < 0.3
        Image.fromarray(ref[:20, :20]).save(tmp_path / "tiny.png")  # too small for LPIPS: says why
        assert main(["eval", "image", str(tmp_path / "tiny.png"), str(tmp_path / "tiny.png")]) == 0
        tiny = json.loads(capsys.readouterr().out)
        assert tiny["lpips"] is None and "at least 32 pixels a side, these are 20x20" in tiny["lpips_note"]
    Image.fromarray(ref[:64]).save(tmp_path / "small.png")
    assert main(["eval", "image", str(tmp_path / "small.png"), str(tmp_path / "ref.png"), "--no-lpips"]) == 2
    assert "must match" in capsys.readouterr().err


def test_every_command_takes_quiet_and_debug(tmp_path, capsys):
    """A script passes --quiet (and --debug) to any command; none refuses them as unknown."""
    import argparse

    from finer.cli import build_parser

    leaves = []

    def walk(parser, where):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, f"{where} {name}")
        if not subs:
            leaves.append((where, {o for a in parser._actions for o in a.option_strings}))

    walk(build_parser(), "finer")
    assert len(leaves) > 15
    assert [where for where, options in leaves if not {"--quiet", "--debug"} <= options] == []
    out = tmp_path / "act"  # --quiet keeps the analysis's lines off stdout
    assert main(["analyze", "activations", "--k", "1", "--width", "8", "--hidden-layers", "1", "--resolution", "8",
                 "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == "" and any(out.iterdir())


def test_every_choice_list_of_the_parser_is_the_librarys():
    """The parser (torch-free, for a fast --help) restates the library's choice lists; they must not drift."""
    import argparse

    from finer.bench.executors import EXECUTORS
    from finer.bench.images import PRESETS
    from finer.cli import build_parser
    from finer.nn.fused import FUSED_MODES
    from finer.runs import DEVICE_CHOICES
    from finer.tasks.image import ALPHA_CHOICES, ASPECT_CHOICES
    from finer.train import PRECISIONS

    library = {"fused": FUSED_MODES, "device": DEVICE_CHOICES, "precision": PRECISIONS, "alpha": ALPHA_CHOICES,
               "aspect": ASPECT_CHOICES, "executor": EXECUTORS, "preset": PRESETS}
    seen = set()

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif action.choices is not None and action.dest in library:
                seen.add(action.dest)
                if where.endswith("eval image") and action.dest == "alpha":  # a reference has no alpha to keep
                    assert set(action.choices) < set(library["alpha"]), where
                else:
                    assert list(action.choices) == list(library[action.dest]), (where, action.dest)

    walk(build_parser(), "finer")
    assert seen == set(library)


def test_resume_names_what_it_cannot_continue(tmp_path, capsys):
    sdf = tmp_path / "bunny"
    sdf.mkdir()
    (sdf / "config.json").write_text(json.dumps({"task": "sdf", "run": {}}))
    (sdf / "checkpoint.pt").write_bytes(b"")
    assert main(["resume", str(sdf)]) == 2
    assert "is an SDF run; `finer resume` continues single image fits" in capsys.readouterr().err
    assert main(["resume", str(tmp_path)]) == 2
    assert "not the folder of a `finer fit image` run" in capsys.readouterr().err
    (sdf / "config.json").write_text("{")  # damaged: said so, not taken for a folder without a run
    assert main(["resume", str(sdf)]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    image = tmp_path / "photo"  # a single fit whose config.json was lost, and an image of a stacked folder fit
    image.mkdir()
    (image / "metrics.json").write_text(json.dumps({"task": "image", "status": "interrupted"}))
    assert main(["resume", str(image)]) == 2
    assert "(its config.json, which the run needs to continue, is missing)" in capsys.readouterr().err
    (image / "metrics.json").write_text(json.dumps({"task": "image", "status": "complete", "batch_signals": 4}))
    assert main(["resume", str(image)]) == 2
    assert "folder fitted with --batch-signals, which is not resumable" in capsys.readouterr().err


def test_a_used_folder_suggests_resume_only_for_a_resumable_run(png_path, tmp_path, capsys):
    from finer.runs import _prepare_out

    out = tmp_path / "sdf-run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"task": "sdf"}))
    (out / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FinerError) as err:
        _prepare_out(out, overwrite=False, resumable=True)
    assert "not empty" in str(err.value) and "resume" not in str(err.value)
    (out / "config.json").write_text(json.dumps({"task": "image"}))
    with pytest.raises(FinerError, match="continue its run with `finer resume"):
        _prepare_out(out, overwrite=False, resumable=True)
    (out / "metrics.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(FinerError, match=r"overwrite=True from Python\), or train its finished run longer with "
                                         r"`finer resume .* --steps N`"):
        _prepare_out(out, overwrite=False, resumable=True)


def test_metrics_json_says_running_from_the_first_step(png_path, tmp_path, monkeypatch):
    import finer.runs

    seen = []
    real_fit = finer.runs.fit

    def spy(*args, **kwargs):
        seen.append(json.loads((tmp_path / "r" / "metrics.json").read_text()))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(finer.runs, "fit", spy)
    assert main(["fit", "image", str(png_path), "--steps", "2", "--width", "8", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    assert seen[0]["status"] == "running" and seen[0]["steps"] == 0 and seen[0]["psnr"] is None
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "complete"


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "image", "--steps", "-5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected a positive integer, got '-5'" in err and "finer fit image --help" in err
    with pytest.raises(SystemExit) as stop:  # an unknown argument: the command's own usage, not the top one's
        main(["fit", "nerf", "scene", "--out", "o", "--bogus", "1"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err == ("finer fit nerf: error: unrecognized arguments: --bogus 1 "
                                            "(see `finer fit nerf --help`)")


def test_a_batch_of_at_least_every_pixel_is_recorded_as_the_full_batch(png_path, tmp_path):
    out = tmp_path / "big-batch"
    assert main(["fit", "image", str(png_path), "--batch-size", "100000000", "--steps", "2", "--width", "8",
                 "--out", str(out), "--quiet"]) == 0
    config, metrics = (json.loads((out / name).read_text()) for name in ("config.json", "metrics.json"))
    pixels = metrics["image_height"] * metrics["image_width"]
    assert config["train"]["full_batch"] is True and config["train"]["batch_size"] == pixels
    assert metrics["batch_size"] == pixels
    assert metrics["hidden_width"] == 8 and metrics["hidden_layers"] == 3  # the network's, beside the image's size
    assert "hidden_width_note" not in metrics
    wire = tmp_path / "wire"
    assert main(["fit", "image", str(png_path), "--model", "wire", "--steps", "1", "--width", "256",
                 "--hidden-layers", "1", "--out", str(wire), "--quiet"]) == 0
    metrics = json.loads((wire / "metrics.json").read_text())
    assert metrics["hidden_width"] == 181 and "181 complex units for width 256" in metrics["hidden_width_note"]


def test_eval_of_identical_images_prints_strict_json(png_path, capsys):
    assert main(["eval", "image", str(png_path), str(png_path), "--no-lpips"]) == 0

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    assert json.loads(capsys.readouterr().out, parse_constant=refuse) == {"psnr": "inf", "ssim": 1.0}


def test_overwrite_writes_the_new_run_and_deletes_nothing(png_path, tmp_path, capsys):
    out = tmp_path / "run"
    fit = ["fit", "image", str(png_path), "--steps", "2", "--width", "8", "--out", str(out), "--quiet"]
    assert main(fit) == 0
    assert main(["render", str(out), "--scale", "2"]) == 0
    (out / "notes.txt").write_text("keep me")
    (out / "photo.png").write_bytes(png_path.read_bytes())  # the input itself may live there
    assert main(["fit", "image", "--model", "siren", str(out / "photo.png"), *fit[3:], "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"] == "siren"
    assert (out / "notes.txt").read_text() == "keep me" and (out / "photo.png").exists()
    assert (out / "render_x2.png").exists()  # another command's output: left for the user, and said to be stale
    assert "warning: render_x2.png in" in capsys.readouterr().err
    bad = ["fit", "image", str(tmp_path / "missing.png"), "--steps", "2", "--out", str(out), "--quiet", "--overwrite"]
    assert main(bad) == 2 and (out / "checkpoint.pt").exists()  # bad input: the old run is not touched


def test_overwrite_deletes_the_old_runs_files_before_training(png_path, tmp_path, monkeypatch):
    import finer.runs

    out = tmp_path / "run"
    fit = ["fit", "image", str(png_path), "--steps", "2", "--width", "8", "--out", str(out), "--quiet"]
    assert main(fit) == 0
    (out / "notes.txt").write_text("keep me")
    seen, real_fit = [], finer.runs.fit

    def spying_fit(*args, **kwargs):  # what the folder holds while the new run trains
        seen.append(sorted(p.name for p in out.iterdir()))
        seen.append(json.loads((out / "metrics.json").read_text()))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(finer.runs, "fit", spying_fit)
    assert main(["fit", "image", "--model", "siren", *fit[2:], "--overwrite"]) == 0
    assert seen[0] == ["config.json", "metrics.json", "notes.txt"]
    assert seen[1]["model"] == "siren" and seen[1]["status"] == "running"  # not the old model's "complete"
    assert json.loads((out / "metrics.json").read_text())["model"] == "siren"


def test_resume_reads_the_recorded_image_from_any_folder(png_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(png_path.parent)
    out = tmp_path / "run"
    assert main(["fit", "image", png_path.name, "--steps", "3", "--width", "8", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image"]["path"] == str(png_path.resolve()) and len(config["image"]["sha256"]) == 64
    assert json.loads((out / "metrics.json").read_text())["image"] == str(png_path.resolve())  # not the relative name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (5, 7)).save(elsewhere / png_path.name)  # the same relative name, another image
    monkeypatch.chdir(elsewhere)
    assert main(["render", str(out), "--scale", "1"]) == 0
    assert main(["analyze", "neurons", str(out), "--count", "4"]) == 0
    capsys.readouterr()
    assert main(["resume", str(out), "--steps", "5", "--quiet"]) == 0
    err = capsys.readouterr().err  # what was made from the step-3 network is left, and said to be stale
    assert f"warning: neurons, render_x1.png in {out} were made from the network of step 3" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and (metrics["image_height"], metrics["image_width"]) == (24, 24)
    assert metrics["image"] == str(png_path.resolve()) and metrics["width"] == 8  # the network's width


def test_resume_refuses_a_changed_image_and_a_folder_that_mixes_two_runs(png_path, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    fit = ["fit", "image", str(png_path), "--steps", "3", "--width", "8", "--out", str(out), "--quiet"]
    assert main(fit) == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    Image.open(png_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(png_path)  # same size, other pixels
    assert main(["resume", str(out), "--steps", "5", "--quiet"]) == 2
    assert "has changed since" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3  # nothing was trained or written
    other = tmp_path / "other"
    assert main(["fit", "image", str(png_path), "--model", "siren", *fit[3:7], "--out", str(other), "--quiet"]) == 0
    (other / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())  # a finer checkpoint, a siren config
    assert payload["method"] == "finer"
    assert main(["resume", str(other), "--steps", "5", "--quiet"]) == 2
    assert "the folder mixes two runs" in capsys.readouterr().err


def test_tf32_on_the_cpu_says_it_is_float32(png_path, tmp_path, capsys):
    assert main(["fit", "image", str(png_path), "--precision", "tf32", "--device", "cpu", "--steps", "2",
                 "--width", "8", "--out", str(tmp_path / "t")]) == 0
    assert "on the CPU this run computes in float32" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())  # and its record says so
    assert metrics["precision"] == "tf32" and "computes in float32" in metrics["precision_note"]


def test_an_out_path_through_a_file_is_refused_before_any_work(png_path, tmp_path, capsys, monkeypatch):
    import finer.bench.speed

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    run = _fit_tiny(png_path, tmp_path / "run")
    commands = [
        ["fit", "image", str(png_path), "--steps", "2", "--out", str(afile / "sub")],
        ["render", str(run), "--out", str(afile / "x.png")],
        ["render", str(run), "--out", str(tmp_path)],  # an existing folder, not an image file
        ["analyze", "neurons", str(run), "--out", str(afile)],
        ["analyze", "ntk", "--out", str(afile / "ntk")],
        ["bench", "images", str(png_path.parent), "--out", str(afile)],
        ["bench", "speed", "--out", str(afile / "speed.md")],
        ["bench", "speed", "--out", str(tmp_path)],
        ["bench", "speed", "--out", str(tmp_path / "speed.json")],  # where its data would go: the report lost
        ["resume", str(afile)],
    ]
    monkeypatch.setattr(finer.bench.speed, "run_speed", lambda *a, **k: pytest.fail("timed before checking --out"))
    for command in commands:
        assert main([*command, "--quiet"] if command[0] in ("fit", "bench") and command[1] != "speed" else command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Error" not in err, (command, err)
        assert str(afile) in err or str(tmp_path) in err, (command, err)


def _fit_tiny(png_path, out):
    assert main(["fit", "image", str(png_path), "--steps", "2", "--width", "8", "--out", str(out), "--quiet"]) == 0
    return out


def test_report_only_without_runs_creates_nothing(png_path, tmp_path, capsys):
    out = tmp_path / "nothere"
    assert main(["bench", "images", str(png_path.parent), "--report-only", "--out", str(out), "--quiet"]) == 2
    assert "no finished runs" in capsys.readouterr().err and not out.exists()


def test_render_refuses_what_it_cannot_write_before_rendering(png_path, tmp_path, capsys):
    rgba = tmp_path / "rgba.png"
    Image.open(png_path).convert("RGBA").save(rgba)
    run = tmp_path / "run"
    assert main(["fit", "image", str(rgba), "--alpha", "keep", "--steps", "2", "--width", "8", "--out", str(run),
                 "--quiet"]) == 0
    assert main(["render", str(run), "--out", str(tmp_path / "r.jpg")]) == 2
    assert "cannot write this RGBA image" in capsys.readouterr().err and not (tmp_path / "r.jpg").exists()
    assert main(["render", str(run), "--scale", "100000"]) == 2
    assert "use a smaller scale (--scale)" in capsys.readouterr().err
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(300))
    assert main(["render", str(tmp_path / "noise.pt")]) == 2
    assert "not a file saved by PyTorch" in capsys.readouterr().err
    assert main(["render", str(run), "--frames", "30", "--elevation", "10"]) == 2  # NeRF options, not ignored
    assert "--frames, --elevation: for NeRF turntables only" in capsys.readouterr().err
    assert main(["render", str(run), str(run)]) == 2
    assert "one checkpoint; got 2 paths" in capsys.readouterr().err
    assert not list(run.glob("render_*"))
    # the run's own files and the image it was fitted to are not a render's to replace
    kept = {path: path.read_bytes() for path in (run / "error_map.png", run / "reconstruction.png", rgba)}
    for path, said in ((run / "error_map.png", "is the run's error_map.png"),
                       (rgba, "is the image this run was fitted")):
        assert main(["render", str(run), "--scale", "1", "--out", str(path)]) == 2
        assert said in capsys.readouterr().err
    assert {path: path.read_bytes() for path in kept} == kept
    # any other existing file is replaced only with --overwrite
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"not a render")
    assert main(["render", str(run), "--scale", "1", "--out", str(mine)]) == 2
    assert "exists; choose another file or pass --overwrite" in capsys.readouterr().err
    assert mine.read_bytes() == b"not a render"
    assert main(["render", str(run), "--scale", "1", "--out", str(mine), "--overwrite"]) == 0
    assert Image.open(mine).size == Image.open(rgba).size


def test_an_input_that_is_one_of_the_runs_own_files_is_refused(png_path, tmp_path, capsys):
    out = _fit_tiny(png_path, tmp_path / "run")
    before = (out / "reconstruction.png").read_bytes()
    assert main(["fit", "image", str(out / "reconstruction.png"), "--steps", "2", "--out", str(out), "--overwrite",
                 "--quiet"]) == 2
    assert "is the reconstruction.png this run writes" in capsys.readouterr().err
    assert (out / "reconstruction.png").read_bytes() == before and (out / "metrics.json").exists()


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from finer.cli import build_parser

    silent = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.help is None:
                silent.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["finer"])
    assert silent == []


def test_an_image_run_that_fails_mid_training_says_so(png_path, tmp_path, monkeypatch, capsys):
    import finer.runs

    def failing_fit(model, task, cfg, state=None, **kwargs):
        state.step = 3
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(finer.runs, "fit", failing_fit)
    out = tmp_path / "f"
    assert main(["fit", "image", str(png_path), "--steps", "10", "--width", "8", "--out", str(out), "--quiet"]) == 1
    assert "CUDA out of memory (simulated)" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "out of memory" in metrics["message"]


def test_resume_takes_a_device(png_path, tmp_path, capsys, monkeypatch):
    import torch

    out = tmp_path / "r"
    assert main(["fit", "image", str(png_path), "--steps", "2", "--width", "8", "--out", str(out), "--quiet"]) == 0
    if not torch.cuda.is_available():  # asked for, and missing: refused like everywhere else
        assert main(["resume", str(out), "--steps", "4", "--device", "cuda", "--quiet"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    assert main(["resume", str(out), "--steps", "4", "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["device"] == "cpu"


def test_option_values_and_conflicts(png_path, tmp_path, capsys):
    from finer.cli.commands import options

    assert options(["target-range=0,1", "lr=1e-3", "scale_grad=true", "note=abc"]) == {
        "target_range": [0, 1], "lr": 1e-3, "scale_grad": True, "note": "abc"}
    with pytest.raises(FinerError, match="given twice"):
        options(["lr=1", "lr=2"])
    common = ["fit", "image", str(png_path), "--steps", "2", "--quiet"]
    assert main([*common, "--width", "16", "--option", "width=8", "--out", str(tmp_path / "w")]) == 2
    assert "width given both as a flag and as --option" in capsys.readouterr().err
    assert main([*common, "--width", "8", "--option", "target_range=0,1", "--out", str(tmp_path / "t")]) == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["model"]["target_range"] == [0, 1]


def test_overwriting_a_run_of_another_kind_is_refused(png_path, tmp_path, capsys):
    """--overwrite removes the files of a run of its own kind; another kind's (an SDF run's render.png, a
    folder fit's image folders) would stay beside the new run and pass for its outputs."""
    sdf = tmp_path / "sdf"
    sdf.mkdir()
    (sdf / "config.json").write_text(json.dumps({"task": "sdf", "run": {}}))
    (sdf / "render.png").write_bytes(b"x")
    common = ["--steps", "2", "--width", "8", "--quiet", "--overwrite"]
    assert main(["fit", "image", str(png_path), "--out", str(sdf), *common]) == 2
    assert "holds an SDF run; overwriting replaces an image run only" in capsys.readouterr().err
    assert sorted(p.name for p in sdf.iterdir()) == ["config.json", "render.png"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"runs": []}))
    assert main(["fit", "image", str(png_path), "--out", str(folder), *common]) == 2
    assert "holds a folder fit of images (summary.json)" in capsys.readouterr().err
    image_run = tmp_path / "image-run"
    assert main(["fit", "image", str(png_path), "--out", str(image_run), "--steps", "2", "--width", "8",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["fit", "nerf", str(tmp_path), "--out", str(image_run), "--overwrite"]) == 2
    assert "holds an image run; overwriting replaces a NeRF run only" in capsys.readouterr().err
    # a damaged config.json: the run's metrics.json still says what it is
    (sdf / "config.json").write_text('{"task": "sd')
    (sdf / "metrics.json").write_text(json.dumps({"task": "sdf", "status": "complete"}))
    assert main(["fit", "image", str(png_path), "--out", str(sdf), *common]) == 2
    assert "holds an SDF run; overwriting replaces an image run only" in capsys.readouterr().err
    assert sorted(p.name for p in sdf.iterdir()) == ["config.json", "metrics.json", "render.png"]


def test_eval_image_refuses_images_too_large_to_measure_before_measuring(png_path, monkeypatch, capsys):
    """Two images whose SSIM (and LPIPS) would not fit in memory: a one-line error, not the kernel's kill."""
    import finer.metrics
    import finer.tasks.image

    w, h = Image.open(png_path).size
    monkeypatch.setattr(finer.tasks.image, "memory_budget", lambda device: w * h * 100)  # decodes, cannot measure
    monkeypatch.setattr(finer.metrics, "image_metrics", lambda *a, **k: pytest.fail("measured anyway"))
    assert main(["eval", "image", str(png_path), str(png_path), "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert f"measuring {png_path} ({w}x{h}) needs about" in err and "crop or downscale" in err
    monkeypatch.setattr(finer.tasks.image, "memory_budget", lambda device: w * h * 10)  # cannot even decode
    assert main(["eval", "image", str(png_path), str(png_path), "--no-lpips"]) == 2
    assert "crop or downscale it first" in capsys.readouterr().err
