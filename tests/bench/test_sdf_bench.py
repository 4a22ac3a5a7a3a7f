import json

import numpy as np
import pytest
import torch
import trimesh

from finer.bench.sdf import run_sdf_bench
from finer.errors import FinerError
from finer.tasks.sdf import SDFTask

TINY = dict(steps=3, batch_size=200, pool_size=1000, surface_samples=1000, resolution=12, iou_resolution=12,
            chamfer_samples=300)


def test_sdf_grid_table_and_resume(tmp_path, capsys):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    trimesh.creation.box().export(meshes / "cube.stl")
    rows = run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    assert len(rows) == 4 and capsys.readouterr().out.count("IoU") == 4
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "| ball |" in summary and "| cube |" in summary and "**mean**" in summary
    assert (tmp_path / "b" / "runs" / "ball-finer" / "render.png").is_file()
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(results["runs"]) == 4
    results["protocol"].update(machine="the training machine", date="2026-01-01")
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    protocol = json.loads((tmp_path / "b" / "results.json").read_text())["protocol"]
    assert (protocol["machine"], protocol["date"]) == ("the training machine", "2026-01-01")  # nothing trained here
    printed = capsys.readouterr().out
    assert printed.count("IoU") == 0 and "4 of 4 runs were already finished" in printed  # skipped, and said so
    assert f"4 runs: {tmp_path / 'b' / 'summary.md'}" in printed
    summary = (tmp_path / "b" / "summary.md").read_text()
    with pytest.raises(FinerError, match="another protocol or mesh \\(steps 3 where this grid has 4"):
        run_sdf_bench(meshes, models=["gauss", "finer"], out=tmp_path / "b", settings={**TINY, "steps": 4},
                      progress=False)
    # refused before anything trained (gauss comes first) or any table was rewritten
    assert not (tmp_path / "b" / "runs" / "ball-gauss").exists()
    assert (tmp_path / "b" / "summary.md").read_text() == summary
    config = tmp_path / "b" / "runs" / "ball-finer" / "config.json"
    recorded = json.loads(config.read_text())
    config.write_text(json.dumps({k: v for k, v in recorded.items() if k != "mesh_sha256"}))  # a run from before
    run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings=TINY, progress=False)  # its digest: taken
    assert capsys.readouterr().out.count("IoU") == 0
    config.write_text(json.dumps(recorded))
    trimesh.creation.icosphere(2).export(meshes / "ball.obj")  # another mesh under the same name
    with pytest.raises(FinerError, match="mesh_sha256"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings=TINY, progress=False)


def test_meshes_whose_names_differ_only_by_extension_are_refused(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "s.obj")
    trimesh.creation.box().export(meshes / "s.stl")
    with pytest.raises(FinerError, match="s.obj and s.stl: meshes whose names differ only by extension or case"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings=TINY, progress=False)
    assert not (tmp_path / "b").exists()


def test_meshes_whose_runs_would_share_a_name_are_refused_before_any_run(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    trimesh.creation.box().export(meshes / "ball-gauss.stl")  # with finer: ball-gauss-finer, as ball with gauss-finer
    with pytest.raises(FinerError, match=r"two runs of this grid would both be named 'ball-gauss-finer' "
                                         r"\(ball-gauss.stl with finer, ball.obj with gauss-finer\)"):
        run_sdf_bench(meshes, models=["finer", "gauss-finer"], out=tmp_path / "b", settings=TINY, progress=False)
    assert not (tmp_path / "b").exists()


def test_a_damaged_run_record_stops_the_grid_before_any_table_is_rewritten(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    out = tmp_path / "b"
    run_sdf_bench(meshes, models=["finer"], out=out, settings=TINY, progress=False)
    metrics = out / "runs" / "ball-finer" / "metrics.json"
    tables = {name: (out / name).read_text() for name in ("results.json", "results.csv", "summary.md")}
    row = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**row, "chamfer": "far"}))
    with pytest.raises(FinerError, match="metrics.json: chamfer 'far' is not a number"):
        run_sdf_bench(meshes, models=["finer"], out=out, settings=TINY, progress=False)
    metrics.write_text(json.dumps({k: v for k, v in row.items() if k != "iou"}))
    with pytest.raises(FinerError, match="it has no iou"):
        run_sdf_bench(meshes, models=["finer", "siren"], out=out, settings=TINY, progress=False)
    assert {name: (out / name).read_text() for name in tables} == tables


def test_a_diverged_run_is_a_marked_result_and_an_interrupted_one_stops_the_grid(tmp_path, monkeypatch, capsys):
    import finer.bench.sdf
    from finer.cli import main
    from finer.errors import DivergedError, InterruptedRun

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    real_fit, calls = finer.bench.sdf.fit_sdf, []

    def fit(cfg, run_dir, **kwargs):  # siren "diverges": the run keeps its metrics.json and raises with them
        calls.append(cfg.model)
        metrics = real_fit(cfg, run_dir, **kwargs)
        if cfg.model == "siren":
            diverged = {**metrics, "status": "diverged", "message": "loss diverged at step 3"}
            (run_dir / "metrics.json").write_text(json.dumps({k: v for k, v in diverged.items() if k != "out"}))
            raise DivergedError("loss diverged at step 3", diverged)
        return metrics

    monkeypatch.setattr(finer.bench.sdf, "fit_sdf", fit)
    rows = run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    assert [r["status"] for r in rows] == ["complete", "diverged"]
    assert "(diverged: loss diverged at step 3)" in capsys.readouterr().out
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert summary.count(" †") == 2 and "† the loss diverged" in summary  # its Chamfer and IoU cells
    run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    assert calls == ["finer", "siren"]  # the diverged run is a result: not fitted again

    def interrupted(cfg, run_dir, **kwargs):  # Ctrl-C or SIGTERM during the fit: it stops after its step
        real_fit(cfg, run_dir, **kwargs)
        raise InterruptedRun("interrupted at step 2 of 3")

    monkeypatch.setattr(finer.bench.sdf, "fit_sdf", interrupted)
    args = ["bench", "sdf", str(meshes), "--models", "gauss,finer", "--out", str(tmp_path / "c"), "--steps", "3",
            "--resolution", "12", "--chamfer-samples", "300", "--quiet"]
    monkeypatch.setattr(finer.bench.sdf, "QUICK", {**finer.bench.sdf.QUICK, **TINY})
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"finished runs are kept in {tmp_path / 'c'}/runs" in err and "fits the run it cut again" in err
    assert not (tmp_path / "c" / "runs" / "ball-finer").exists()  # the grid stopped at the cut run


def test_a_rerun_cut_short_keeps_every_finished_run_in_its_tables(tmp_path, monkeypatch):
    import finer.bench.sdf
    from finer.errors import InterruptedRun

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    trimesh.creation.box().export(meshes / "cube.obj")
    run_sdf_bench(meshes, models=["siren"], out=tmp_path / "b", settings=TINY, progress=False)
    real_fit = finer.bench.sdf.fit_sdf

    def fit(cfg, run_dir, **kwargs):  # finer fits the ball, then is interrupted on the cube
        if "cube" in cfg.mesh:
            raise InterruptedRun("interrupted at step 1 of 3")
        return real_fit(cfg, run_dir, **kwargs)

    monkeypatch.setattr(finer.bench.sdf, "fit_sdf", fit)
    with pytest.raises(KeyboardInterrupt):
        run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    summary = (tmp_path / "b" / "summary.md").read_text()  # written after the ball: siren's runs are in it
    assert "3 runs of 4 planned." in summary and "| cube | not run |" in summary
    assert summary.count("not run |") == 2  # finer on the cube, in both tables; siren's cells hold numbers


def test_an_unfinished_grid_counts_what_its_means_are_over(tmp_path):
    from finer.bench.sdf import _write

    meshes = [tmp_path / "ball.obj", tmp_path / "cube.obj"]
    run = dict(status="complete", chamfer=0.01, iou=0.9, seconds_per_step=0.1)
    rows = [{"shape": "ball", "model": "finer", **run}, {"shape": "cube", "model": "finer", **run},
            {"shape": "ball", "model": "siren", **run, "chamfer": 0.03}]
    _write(tmp_path, rows, ["finer", "siren"], meshes, TINY)
    summary = (tmp_path / "summary.md").read_text()
    assert "3 runs of 4 planned." in summary and "| cube | 1.000e-02 | not run |" in summary
    assert "| **mean** | 1.000e-02 | 3.000e-02 (1 of 2) |" in summary and "not run: the grid has not trained" in summary
    assert json.loads((tmp_path / "results.json").read_text())["protocol"]["runs_planned"] == 4


def test_the_command_takes_every_size_of_the_protocol(tmp_path, capsys):
    from finer.cli import main

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    sizes = ["--steps", "3", "--batch-size", "200", "--pool-size", "1000", "--surface-samples", "1000",
             "--resolution", "12", "--iou-resolution", "10", "--chamfer-samples", "300"]
    assert main(["bench", "sdf", str(meshes), "--models", "finer", "--out", str(tmp_path / "b"), *sizes,
                 "--quiet"]) == 0
    run = json.loads((tmp_path / "b" / "runs" / "ball-finer" / "config.json").read_text())["run"]
    assert [run[k] for k in ("steps", "batch_size", "pool_size", "surface_samples", "resolution", "iou_resolution",
                             "chamfer_samples")] == [3, 200, 1000, 1000, 12, 10, 300]
    assert "pool of 1000 precomputed points" in (tmp_path / "b" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["bench", "sdf", str(meshes), "--models", "finer", "--out", str(tmp_path / "c"), *sizes,
                 "--pool-size", "100"]) == 2  # fewer points than a step takes: refused before any run
    assert "pool-size must be at least batch-size" in capsys.readouterr().err
    assert not (tmp_path / "c" / "runs").exists()
    assert main(["bench", "sdf", str(meshes), "--models", "finer", "--out", str(tmp_path / "c"), *sizes,
                 "--pool-size", "1", "--batch-size", "1"]) == 2  # half coarse, half fine: no half of one
    assert "pool-size must be at least batch-size and 2 (half coarse points, half fine), got 1" in (
        capsys.readouterr().err)
    with pytest.raises(FinerError, match="needs coarse and fine points"):
        SDFTask(np.zeros((1, 3)), np.zeros(1), torch.device("cpu"), batch_size=1)


def test_a_model_listed_twice_is_refused_from_python_too(tmp_path):
    from finer.bench import check_models

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    with pytest.raises(FinerError, match="models listed more than once: finer, finer"):
        run_sdf_bench(meshes, models=["finer", "finer"], out=tmp_path / "b", settings=TINY, progress=False)
    with pytest.raises(FinerError, match="no models given"):
        run_sdf_bench(meshes, models=[], out=tmp_path / "b", settings=TINY, progress=False)
    with pytest.raises(FinerError, match="models listed more than once"):
        check_models(["siren", "finer", "siren"], ["finer", "siren"])
    assert not (tmp_path / "b").exists()


def test_a_bad_mesh_or_a_grid_too_large_stops_the_grid_before_any_run(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "a.obj")
    with pytest.raises(FinerError, match="resolution 100000"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings={**TINY, "resolution": 100_000},
                      progress=False)
    (meshes / "z.obj").write_text("# nothing\n")
    with pytest.raises(FinerError, match="z.obj"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings=TINY, progress=False)
    assert not (tmp_path / "b" / "runs").exists()
