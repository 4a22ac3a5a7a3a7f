"""`finer fit sdf` and `finer eval sdf` end to end at a tiny size."""

import json

import pytest
import trimesh

from finer.cli import main
from finer.errors import FinerWarning
from tests.conftest import SHARED

TINY = ["--steps", "20", "--batch-size", "1000", "--pool-size", "5000", "--surface-samples", "5000",
        "--resolution", "24", "--iou-resolution", "16", "--chamfer-samples", "2000", "--width", "32", "--quiet"]


def test_fit_and_eval_sdf(tmp_path, capsys, monkeypatch):
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    mesh.apply_translation([10, 0, 0])  # the output must come back in these units
    mesh.export(tmp_path / "ball.off")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "sdf", "ball.off", "--out", str(out), *TINY[:-1]]) == 0  # a relative path, recorded absolute
    printed = capsys.readouterr()
    summary = json.loads(printed.out)  # stdout holds the result alone; the progress lines go to stderr
    assert "ball.off: 320 faces, watertight: True" in printed.err
    assert summary["status"] == "complete" and 0 <= summary["iou"] <= 1 and summary["out"] == str(out)
    for name in ("config.json", "metrics.json", "curve.csv", "checkpoint.pt", "render.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "sdf" and metrics["watertight"] is True and metrics["params"] > 0
    assert (metrics["width"], metrics["hidden_layers"], metrics["lr"], metrics["seed"]) == (32, 2, 1e-4, 0)
    if metrics["chamfer"] is not None:  # a surface was found: it lies in the mesh's own frame
        extracted = trimesh.load(out / "mesh.ply")
        assert extracted.bounds[0][0] > 5
    assert main(["eval", "sdf", str(out), "--mesh", str(tmp_path / "ball.off"), "--resolution", "24",
                 "--iou-resolution", "16", "--chamfer-samples", "2000", "--surface-samples", "5000"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["iou"] == pytest.approx(metrics["iou"], abs=1e-6)
    assert (out / "eval" / "eval.json").is_file() and "warning" not in result and "warning" not in captured.err
    assert result["fit_status"] == "complete" and result["steps"] == 20 and result["model"] == "finer"
    before = (out / "eval" / "eval.json").read_bytes()
    assert main(["eval", "sdf", str(out)]) == 2  # an earlier evaluation is not replaced unasked
    assert "holds an earlier evaluation (eval.json, mesh.ply, render.png)" in capsys.readouterr().err
    assert (out / "eval" / "eval.json").read_bytes() == before
    import finer.tasks.sdf

    def failing_iou(*args, **kwargs):
        raise ValueError("simulated failure while measuring")

    kept = {p.name: p.read_bytes() for p in (out / "eval").iterdir()}
    with monkeypatch.context() as m:  # a failure while measuring, even with --overwrite: the earlier one stays whole
        m.setattr(finer.tasks.sdf, "grid_iou", failing_iou)
        assert main(["eval", "sdf", str(out), "--overwrite"]) == 1
    assert "simulated failure" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "eval").iterdir()} == kept
    monkeypatch.chdir(tmp_path / "run")  # the run recorded its mesh's absolute path: found from any folder
    assert main(["eval", "sdf", str(out), "--overwrite"]) == 0  # no settings: the run's own mesh, grids, samples
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert (again["iou"], again["chamfer"]) == (metrics["iou"], metrics["chamfer"])
    assert again["surface_samples"] == 5000 and again["resolution"] == 24 and "warning" not in captured.err
    config = (out / "config.json").read_text()
    (out / "config.json").write_text("{ damaged")  # its settings unknown: the defaults, said so
    assert main(["eval", "sdf", str(out), "--overwrite", "--resolution", "16", "--iou-resolution", "16",
                 "--surface-samples", "5000"]) == 0
    assert "records no chamfer_samples, seed (missing or unreadable): this evaluation uses the defaults " \
           "(chamfer_samples 300000, seed 0)" in capsys.readouterr().err
    (out / "config.json").write_text(config)
    run_mesh = (out / "mesh.ply").read_bytes()
    assert main(["eval", "sdf", str(out), "--out", str(out), "--overwrite"]) == 2  # the run's own mesh.ply
    assert "holds a run (config.json, metrics.json, checkpoint.pt)" in capsys.readouterr().err
    assert (out / "mesh.ply").read_bytes() == run_mesh
    other = trimesh.creation.box(extents=[6, 6, 6])
    other.apply_translation([10, 0, 0])
    other.export(tmp_path / "box.off")
    assert main(["eval", "sdf", str(out), "--mesh", str(tmp_path / "box.off"), "--resolution", "24",
                 "--iou-resolution", "16", "--chamfer-samples", "2000", "--surface-samples", "5000",
                 "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "box.off is not the mesh this run was fitted to" in captured.err
    assert "not the mesh" in json.loads(captured.out)["warning"]
    assert main(["render", str(out)]) == 2  # an SDF run: its surface is in its folder already
    assert "an SDF run's folder holds its surface already (mesh.ply, render.png" in capsys.readouterr().err
    (out / "config.json").unlink()  # the checkpoint records the mesh too
    assert main(["eval", "sdf", str(out / "checkpoint.pt"), "--resolution", "24", "--iou-resolution", "16",
                 "--chamfer-samples", "2000", "--surface-samples", "5000", "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads(capsys.readouterr().out)["mesh"] == str(tmp_path / "ball.off")


def test_bad_meshes_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "x.obj").write_text("")
    assert main(["fit", "sdf", str(tmp_path / "x.obj"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a mesh" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 nan 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    assert main(["fit", "sdf", str(tmp_path / "nan.obj"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has 1 vertices of its faces with non-finite coordinates (NaN or infinite)" in err
    assert "Warning" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "far.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1e300 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    assert main(["fit", "sdf", str(tmp_path / "far.obj"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has vertex coordinates up to 1e+300, too large to compute with" in err and "Warning" not in err


def test_non_watertight_mesh_trains_and_says_how_inside_was_decided(tmp_path):
    dragon = SHARED / "meshes" / "dragon.obj"
    if not dragon.exists():
        pytest.skip(f"mesh data not present ({dragon})")
    out = tmp_path / "dragon"
    assert main(["fit", "sdf", str(dragon), "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["watertight"] is False and "not watertight" in metrics["inside_outside"]


def test_an_evaluation_without_a_surface_leaves_no_mesh_of_an_earlier_one(tmp_path, capsys):
    import torch

    from finer.io import load_checkpoint, save_checkpoint

    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.export(tmp_path / "ball.off")
    out = tmp_path / "run"
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(out), *TINY]) == 0
    model, payload = load_checkpoint(out)
    with torch.no_grad():
        model.layers[-1].linear.bias.fill_(100.0)  # outside everywhere: no surface to extract
    save_checkpoint(out / "flat.pt", model=model, extra={**payload, "model": model.state_dict()})
    ev = tmp_path / "ev"
    assert main(["eval", "sdf", str(out / "flat.pt"), "--mesh", str(tmp_path / "ball.off"), "--resolution", "16",
                 "--iou-resolution", "16", "--chamfer-samples", "2000", "--surface-samples", "5000",
                 "--out", str(ev)]) == 0
    result = json.loads((ev / "eval.json").read_text())
    assert result["vertices"] == 0 and not (ev / "mesh.ply").exists() and "no surface" in result["surface_note"]
    assert "warning: the network's SDF does not cross zero on the 16^3 grid" in capsys.readouterr().err
    # the measurement itself (which a fit's own evaluation also runs) leaves no earlier surface behind
    from finer.sdf_run import evaluate_sdf
    from finer.tasks import sdf as S

    (ev / "mesh.ply").write_text("an earlier evaluation's surface")
    unit, norm = S.normalize(trimesh.load(tmp_path / "ball.off"))
    with pytest.warns(FinerWarning, match="does not cross zero on the 16\\^3 grid"):
        again = evaluate_sdf(model, S.SurfaceIndex(unit, 5000, 0), unit, norm, resolution=16, iou_resolution=16,
                             chamfer_samples=2000, device=torch.device("cpu"), out=ev)
    assert again["vertices"] == 0 and not (ev / "mesh.ply").exists()


def test_eval_checks_its_grids_before_reading_anything(tmp_path, capsys):
    for option, value in (("--iou-resolution", "1"), ("--resolution", "2")):
        assert main(["eval", "sdf", str(tmp_path / "none"), "--mesh", str(tmp_path / "none.obj"), option, value,
                     "--out", str(tmp_path / "ev")]) == 2
        assert f"{option[2:]} must be" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_grids_too_large_to_measure_are_refused_before_training(tmp_path, capsys):
    trimesh.creation.icosphere(subdivisions=2, radius=3.0).export(tmp_path / "ball.off")
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(tmp_path / "run"), *TINY,
                 "--resolution", "100000"]) == 2
    err = capsys.readouterr().err
    assert "resolution 100000" in err and "GiB" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(tmp_path / "run"), *TINY,
                 "--surface-samples", "300000000000"]) == 2  # (a count that once ran a machine out of memory)
    err = capsys.readouterr().err
    assert "the sample counts (surface-samples 300000000000, pool-size 5000, chamfer-samples 2000) need" in err
    assert not (tmp_path / "run").exists()


def test_a_surface_too_large_to_hold_is_not_measured_and_the_run_says_why(tmp_path, capsys, monkeypatch):
    """A fit that is far from smooth can have a surface of about one vertex a grid cell, many times what
    the check before training allows for: its extraction stops before it runs out of memory, and the run is a
    result without a Chamfer distance (its IoU stands), which a bench grid records and goes on from."""
    from finer.bench.sdf import run_sdf_bench
    from finer.tasks import sdf as S

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(subdivisions=2, radius=3.0).export(meshes / "ball.off")
    extract = S.extract_surface
    monkeypatch.setattr(S, "extract_surface", lambda *a, **k: extract(*a, **{**k, "max_bytes": 1}))  # too large
    out = tmp_path / "run"
    assert main(["fit", "sdf", str(meshes / "ball.off"), "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["chamfer"] is None and 0 <= metrics["iou"] <= 1
    assert metrics["vertices"] is None and "too large to extract on the 24^3 grid" in metrics["surface_note"]
    assert "`finer eval sdf RUN --resolution N`" in metrics["surface_note"]
    assert not (out / "mesh.ply").exists() and (out / "render.png").exists()
    settings = dict(steps=3, batch_size=200, pool_size=1000, surface_samples=1000, resolution=12, iou_resolution=10,
                    chamfer_samples=300)
    with pytest.warns(FinerWarning, match="too large to extract on the 12\\^3 grid"):
        rows = run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=settings,
                             progress=False)
    assert [r["chamfer"] for r in rows] == [None, None] and "surface too large to hold" in capsys.readouterr().out
    assert "no surface was measured" in (tmp_path / "b" / "summary.md").read_text()
    monkeypatch.undo()
    assert main(["eval", "sdf", str(out), "--resolution", "12", "--quiet"]) == 0  # the kept network measures
    assert json.loads((out / "eval" / "eval.json").read_text())["chamfer"] is not None


def test_a_mesh_that_is_the_runs_own_mesh_ply_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(out / "mesh.ply")
    before = (out / "mesh.ply").read_bytes()
    assert main(["fit", "sdf", str(out / "mesh.ply"), "--out", str(out), "--overwrite", *TINY]) == 2
    assert "is the mesh.ply this run writes" in capsys.readouterr().err
    assert (out / "mesh.ply").read_bytes() == before


def test_an_sdf_run_says_running_while_it_trains(tmp_path, monkeypatch):
    import finer.sdf_run

    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.off")
    seen, real_fit = [], finer.sdf_run.fit

    def spy(*args, **kwargs):
        seen.append(json.loads((tmp_path / "run" / "metrics.json").read_text()))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(finer.sdf_run, "fit", spy)
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert seen[0]["status"] == "running" and seen[0]["steps_planned"] > 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "complete"


def test_an_sdf_run_that_fails_says_so(tmp_path, monkeypatch, capsys):
    import finer.sdf_run

    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.off")

    def failing_evaluation(*args, **kwargs):
        raise ValueError("no surface level (simulated)")

    monkeypatch.setattr(finer.sdf_run, "evaluate_sdf", failing_evaluation)
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(tmp_path / "run"), *TINY]) == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "simulated" in metrics["message"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()  # the trained network is kept


def test_sigterm_outside_the_training_loop_records_an_interrupted_run(tmp_path, monkeypatch, capsys):
    import os
    import signal
    import time

    import finer.sdf_run

    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.off")

    def terminated_evaluation(*args, **kwargs):  # `kill PID` while the surface is being measured
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(finer.sdf_run, "evaluate_sdf", terminated_evaluation)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(tmp_path / "run"), *TINY]) == 130
    err = capsys.readouterr().err
    assert "interrupted while measuring the surface" in err and "keeps the network of step 20" in err
    assert f"`finer eval sdf {tmp_path / 'run'}` measures" in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("interrupted", 20) and "stage" not in metrics
    assert "measuring the surface" in metrics["message"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is not left behind


def test_sigterm_while_training_stops_after_the_step_and_says_what_is_kept(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from finer.tasks.sdf import SDFTask

    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.off")
    real_batch = SDFTask.batch

    def batch(self, step):
        if step == 5:  # a scheduler's stop, mid-run
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(self, step)

    monkeypatch.setattr(SDFTask, "batch", batch)
    out = tmp_path / "run"
    assert main(["fit", "sdf", str(tmp_path / "ball.off"), "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 5 <= metrics["steps"] < 20
    assert f"keeps the network of step {metrics['steps']}" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").is_file()


def test_a_mesh_whose_inside_is_not_found_is_named_in_the_refusal(tmp_path, capsys, monkeypatch):
    import finer.tasks.sdf

    monkeypatch.setattr(finer.tasks.sdf.SurfaceIndex, "_cover", lambda self, mesh, seed: 0.0)  # no wider shell
    trimesh.creation.icosphere(subdivisions=4, radius=1.0).export(tmp_path / "ball.obj")
    out = tmp_path / "run"
    assert main(["fit", "sdf", str(tmp_path / "ball.obj"), "--out", str(out), *TINY, "--surface-samples", "3000"]) == 2
    assert f"error: {tmp_path / 'ball.obj'}: the inside of this closed mesh was not found" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
