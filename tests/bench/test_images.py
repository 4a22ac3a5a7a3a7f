"""Benchmark grids: records per run, resumable, summary tables, width sweep."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from finer import io
from finer.cli import main
from finer.errors import FinerError
from finer.bench.executors import threads_per_worker
from finer.bench.images import resolve_protocol
from finer.tasks.image import load_image


@pytest.fixture
def image_dir(tmp_path, astronaut_small):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, arr in enumerate([astronaut_small, astronaut_small[::-1]]):
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(d / f"{i:02d}.png")
    return d


def test_image_grid_is_resumable_and_summarised(image_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "images", str(image_dir), "--models", "finer,official-finer", "--steps", "3", "--width", "8",
            "--crop", "16", "--size", "16", "--seeds", "0,1", "--out", str(out), "--checkpoint-every", "1", "--quiet"]
    assert main(args) == 0
    assert not list((out / "runs").glob("*.partial.pt"))  # a run's state goes once its record is written
    first = capsys.readouterr().out
    assert first.count("PSNR") == 2 * 2 * 2
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 8 and results["protocol"]["steps"] == 3 and results["protocol"]["seeds"] == [0, 1]
    summary = (out / "summary.md").read_text()
    assert "| finer |" in summary and "| official-finer |" in summary and "3 full-batch steps" in summary
    run = results["runs"][0]
    assert run["curve"][0][0] == 1 and run["curve"][-1][0] == 3 and run["lpips"] is None  # 16 px: no LPIPS
    assert (run["image_height"], run["image_width"], run["width"]) == (16, 16, 8)  # the image's, the network's
    assert (out / "runs" / "00-finer-s1.png").is_file()
    report = (out / "report.html").read_text()
    assert report.count("<tr>") == 3 and report.count("data:image/png;base64,") == 1 + 2  # curves + 2 images
    assert "8 runs." in report
    assert main(args) == 0  # a rerun skips every finished run
    assert capsys.readouterr().out.count("PSNR") == 0
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 8


def test_bench_records_lpips_when_the_image_allows(tmp_path, capsys):
    from finer import lpips

    if not lpips.available():
        pytest.skip(f"LPIPS weights not installed ({lpips.INSTALL_HINT})")
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray((load_image(None, size=48) * 255).round().astype(np.uint8)).save(d / "a.png")
    out = tmp_path / "bench"
    assert main(["bench", "images", str(d), "--models", "siren", "--steps", "2", "--width", "8", "--crop", "none",
                 "--size", "48", "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert 0.0 < run["lpips"] < 1.5
    assert "| siren |" in (out / "summary.md").read_text() and " ± " in (out / "summary.md").read_text()


def test_width_sweep(image_dir, tmp_path):
    out = tmp_path / "width"
    assert main(["bench", "width", str(image_dir), "--models", "finer,siren", "--widths", "4,8", "--steps", "2",
                 "--crop", "none", "--size", "12", "--limit", "1", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "width.json").read_text())["runs"]
    assert sorted({(r["width"], r["hidden_layers"]) for r in rows}) == [(4, 2), (8, 2)]
    assert (out / "width.png").is_file()
    text = (out / "width.md").read_text()
    assert "| width | finer | siren | FINER lead (dB) | FINER ahead on |" in text
    means = {m: next(r["psnr"] for r in rows if r["model"] == m and r["width"] == 8) for m in ("finer", "siren")}
    ahead = int(means["finer"] > means["siren"])
    assert (f"| 8 | {means['finer']:.2f} | {means['siren']:.2f} | {means['finer'] - means['siren']:+.2f} | {ahead}/1 |"
            in text)


def test_report_only_writes_the_table_of_the_finished_runs(image_dir, tmp_path, capsys):
    """A subset of the grid run on its own, then the whole grid's table from what finished: nothing trained."""
    out = tmp_path / "width"
    common = ["--steps", "2", "--crop", "none", "--size", "12", "--limit", "1", "--out", str(out), "--quiet"]
    assert main(["bench", "width", str(image_dir), "--models", "finer", "--widths", "8", *common]) == 0
    records = sorted(p.name for p in (out / "runs").iterdir())
    assert main(["bench", "width", str(image_dir), "--models", "finer,siren", "--widths", "4,8", "--report-only",
                 "--workers", "2", "--batch-signals", "4", *common]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == records  # no run trained
    # the options it was run with are taken, even where they would not train here (a GPU, more workers)
    assert main(["bench", "width", str(image_dir), "--models", "finer,siren", "--widths", "4,8", "--report-only",
                 "--device", "cuda", "--workers", "1000", *common]) == 0
    data = json.loads((out / "width.json").read_text())
    assert len(data["runs"]) == 1 and data["protocol"]["runs_planned"] == 4
    # the report describes how the runs were trained (one at a time, unstacked), not the report's command
    assert (data["protocol"]["workers"], data["protocol"]["batch_signals"]) == (1, 1)
    assert "width" not in data["protocol"] and data["protocol"]["widths"] == [4, 8]  # no one width of the preset
    (out / "width.json").unlink()  # no earlier record: the conditions are unknown, not the report command's
    assert main(["bench", "width", str(image_dir), "--models", "finer,siren", "--widths", "4,8", "--report-only",
                 "--workers", "2", "--batch-signals", "4", *common]) == 0
    protocol = json.loads((out / "width.json").read_text())["protocol"]
    assert (protocol["workers"], protocol["batch_signals"], protocol["device"]) == (None, None, None)
    assert "run conditions not recorded (width.json missing" in (out / "width.md").read_text()
    text = (out / "width.md").read_text()
    assert "1 run of 4 planned" in text and "| 4 | - | - |" in text and "| 8 | " in text
    assert main(["bench", "images", str(image_dir), "--models", "finer", "--report-only", "--out",
                 str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_a_grid_continued_on_another_device_says_so(image_dir, tmp_path):
    """A run finished elsewhere (here: its record says a GPU) and one trained now: the table names both, as the
    protocol's machine is only the last command's and the seconds do not compare."""
    out = tmp_path / "grid"
    common = ["--steps", "2", "--width", "4", "--crop", "none", "--size", "12", "--limit", "1", "--out", str(out),
              "--quiet"]
    assert main(["bench", "images", str(image_dir), "--models", "finer", *common]) == 0
    text = (out / "summary.md").read_text()
    assert "more than one device" not in text
    (record,) = (out / "runs").glob("*.json")
    row = json.loads(record.read_text())
    assert row["processor"]  # each run records what it was trained on
    record.write_text(json.dumps({k: v for k, v in row.items() if k != "processor"}))  # a run recorded before that
    assert main(["bench", "images", str(image_dir), "--models", "finer", "--report-only", *common]) == 0
    assert main(["bench", "images", str(image_dir), "--models", "finer,siren", *common]) == 0
    assert "more than one device" not in (out / "summary.md").read_text()  # same device: not taken for two
    record.write_text(json.dumps({**row, "device": "cuda", "processor": "NVIDIA H200"}))
    assert main(["bench", "images", str(image_dir), "--models", "finer,siren", *common]) == 0
    here = next(r for r in json.loads((out / "results.json").read_text())["runs"] if r["model"] == "siren")
    text = (out / "summary.md").read_text()
    assert (f"(trained on more than one device: cpu, {here['processor']}: 1 run; cuda, NVIDIA H200: 1 run; their "
            "seconds do not compare)") in text


def test_width_table_compares_methods_on_the_same_images():
    from finer.bench.images import width_table

    rows = [dict(model="finer", width=16, image="a", psnr=30.0), dict(model="finer", width=16, image="b", psnr=40.0),
            dict(model="siren", width=16, image="a", psnr=29.0),  # siren has not finished image b
            dict(model="pemlp", width=16, image="a", psnr=20.0), dict(model="pemlp", width=16, image="b", psnr=50.0)]
    text = width_table(rows, ["finer", "siren", "pemlp"], [16, 32], {"images": 2, "directory": "d", "steps": 1,
                                                            "hidden_layers": 2, "crop": None, "size": None,
                                                            "seeds": [0], "device": "cpu", "machine": "m",
                                                            "torch": "t", "date": "d", "runs_done": 3})
    # lead over the best: siren +1 on image a; pemlp (30+40)/2 - (20+50)/2 = 0 on a and b
    assert "| 16 | 35.00 | 29.00 (1) | 35.00 | +0.00 | 2/3 |" in text and "| 32 | - | - | - | - | - |" in text


def test_width_table_compares_methods_on_the_same_seeds():
    """A method with more seeds finished than another is compared on the runs both have (seed-averaged per image,
    finer's two seeds were set against siren's one: +0.06 dB ahead where the matching runs say -0.05)."""
    from finer.bench.images import width_table

    rows = [dict(model="finer", width=8, image="a", seed=0, psnr=9.00), dict(model="finer", width=8, image="a", seed=1,
                                                                              psnr=9.20),
            dict(model="siren", width=8, image="a", seed=0, psnr=9.05)]
    protocol = {"images": 1, "directory": "d", "steps": 1, "hidden_layers": 2, "crop": None, "size": None,
                "seeds": [0, 1], "device": "cpu", "machine": "m", "torch": "t", "date": "d", "runs_done": 3}
    text = width_table(rows, ["finer", "siren"], [8], protocol)
    assert "| 8 | 9.10 | 9.05 (1) | -0.05 | 0/1 |" in text
    assert "over the runs (image and seed) each method has finished" in text and "(image, seed, method) triples" in text


def test_presets():
    assert resolve_protocol("paper").steps == 5000 and resolve_protocol("paper").width == 256
    assert resolve_protocol("quick", steps=7).steps == 7
    assert resolve_protocol("quick", crop="none").crop is None
    with pytest.raises(FinerError, match="unknown preset"):
        resolve_protocol("slow")


def _grid(image_dir, out, *extra):
    assert main(["bench", "images", str(image_dir), "--models", "finer,siren", "--steps", "4", "--width", "8",
                 "--crop", "none", "--size", "16", "--out", str(out), "--quiet", *extra]) == 0
    return {(r["image"], r["model"]): r for r in json.loads((out / "results.json").read_text())["runs"]}


def test_results_do_not_depend_on_the_executor(image_dir, tmp_path):
    here = _grid(image_dir, tmp_path / "here")
    pool = _grid(image_dir, tmp_path / "pool", "--workers", "2")
    assert list(here) == list(pool)  # same rows, same (plan) order
    for key, row in here.items():
        assert pool[key]["psnr"] == pytest.approx(row["psnr"], abs=1e-3), key
        assert pool[key]["params"] == row["params"]
    protocol = json.loads((tmp_path / "pool" / "results.json").read_text())["protocol"]
    assert protocol["workers"] == 2
    share = threads_per_worker(2)
    assert f"2 worker processes x {share} torch threads" in protocol["machine"]  # says how the cores were shared
    assert {row["threads"] for row in pool.values()} == {share}
    assert {row["threads"] for row in here.values()} == {torch.get_num_threads()}


def test_batched_runs_give_each_run_its_own_result(image_dir, tmp_path, capsys):
    """--batch-signals: a method's runs on same-sized images fitted as one stacked network."""
    common = ("--models", "finer,metasin", "--fused", "compile")  # the fused stacked layers, one-pass first layer
    here = _grid(image_dir, tmp_path / "here", *common)
    batched = _grid(image_dir, tmp_path / "batched", *common, "--batch-signals", "2")
    assert list(here) == list(batched)
    for key, row in here.items():
        other = batched[key]
        assert other["psnr"] == pytest.approx(row["psnr"], abs=1e-3), key
        assert other["ssim"] == pytest.approx(row["ssim"], abs=1e-5), key
        assert [s for s, _ in other["curve"]] == [s for s, _ in row["curve"]]
        np.testing.assert_allclose([p for _, p in other["curve"]], [p for _, p in row["curve"]], atol=1e-3)
    assert batched[("00.png", "finer")]["batch_signals"] == 2  # both images in one stacked fit
    assert "batch_signals" not in batched[("00.png", "metasin")]  # learnable activations: one at a time
    assert json.loads((tmp_path / "batched" / "results.json").read_text())["protocol"]["batch_signals"] == 2
    assert "up to 2 images at a time" in (tmp_path / "batched" / "summary.md").read_text()


def test_a_stacked_group_judges_divergence_per_image():
    from finer.bench.images import diverged_signals

    losses = np.array([[1.0, 2.0, 1.0], [0.5, 2500.0, 1.0], [0.1, 1.0, np.nan]])
    assert diverged_signals(losses, 1e3) == [1, 2]  # image 1 grew past 1000x its first loss; image 2 is NaN
    assert diverged_signals(losses[:, :1], 1e3) == []


def test_ray_executor_on_a_local_instance(image_dir, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'finer-inr[ray]')")
    here = _grid(image_dir, tmp_path / "here")
    remote = _grid(image_dir, tmp_path / "ray", "--executor", "ray")
    assert list(here) == list(remote)
    for key, row in here.items():
        assert remote[key]["psnr"] == pytest.approx(row["psnr"], abs=1e-3), key
    assert (tmp_path / "ray" / "runs" / "01-siren-s0.png").is_file()


def test_unknown_executor_and_missing_ray(image_dir, tmp_path, monkeypatch, capsys):
    from finer.bench.executors import execute

    with pytest.raises(FinerError, match="unknown executor"):
        list(execute(abs, [1], executor="dask"))
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    assert main(["bench", "images", str(image_dir), "--models", "finer", "--steps", "2", "--width", "8", "--crop",
                 "none", "--size", "16", "--out", str(tmp_path / "x"), "--quiet", "--executor", "ray"]) == 2
    assert "pip install 'finer-inr[ray]'" in capsys.readouterr().err


def test_best_counts_only_count_images_every_method_ran():
    from finer.bench.images import best_counts, summary_table

    def row(image, model, psnr, seed=0):
        return {"image": image, "model": model, "seed": seed, "psnr": psnr, "ssim": 0.9, "params": 10,
                "seconds_per_step": 0.1}

    rows = [row("a", "finer", 30.0), row("a", "siren", 29.0), row("a", "gauss", 20.0),
            row("b", "finer", 25.0), row("b", "siren", 26.0), row("b", "gauss", 20.0),
            row("c", "finer", 31.0), row("c", "siren", 31.0), row("c", "gauss", 20.0),  # a tie counts for both
            row("d", "finer", 40.0), row("d", "siren", 10.0)]  # gauss has not run d: not counted
    assert best_counts(rows, ["finer", "siren", "gauss", "wire"]) == {
        "finer": "2/3", "siren": "2/3", "gauss": "0/3", "wire": "0/3"}
    setting = {"images": 4, "directory": "x", "crop": None, "size": None, "hidden_layers": 1, "width": 8, "steps": 3,
               "seeds": [0], "device": "cpu", "machine": "m", "torch": "t", "date": "d", "runs_done": 11}
    table = summary_table(rows, ["finer", "siren", "gauss"], setting)
    assert "| best on |" in table and table.count("| 2/3 |") == 2 and "| 0/3 |" in table


def test_an_interrupted_run_continues_from_its_partial_state(astronaut_small, tmp_path, monkeypatch):
    """A run killed after a checkpoint continues from it on the next call and ends where the
    uninterrupted run ends; another run's state is refused."""
    from finer.bench import images as bench

    protocol = bench.Protocol(steps=40, hidden_layers=1, width=16, crop=None, size=None)
    image = np.ascontiguousarray(astronaut_small[:16, :16])

    def job(partial=None):
        return bench.Job("00-finer-s0", "00.png", image, "finer", protocol, 0, "cpu", fused="off",
                         partial=partial, checkpoint_every=10 if partial else 0)

    whole, _ = bench.run_one(job())
    partial = str(tmp_path / "00-finer-s0.partial.pt")
    save = bench._save_partial

    def dies_after_step_20(path, payload):
        save(path, payload)
        if payload["fit"]["step"] == 20:
            raise KeyboardInterrupt  # the process is killed right after that checkpoint

    monkeypatch.setattr(bench, "_save_partial", dies_after_step_20)
    with pytest.raises(KeyboardInterrupt):
        bench.run_one(job(partial))
    monkeypatch.setattr(bench, "_save_partial", save)
    saved = torch.load(partial, weights_only=True)["fit"]
    assert saved["step"] == 20 and saved["train_seconds"] > 0  # the time of those 20 steps, carried on
    resumed, _ = bench.run_one(job(partial))
    assert resumed["status"] == "complete" and resumed["steps"] == 40
    assert [c[0] for c in resumed["curve"]] == [c[0] for c in whole["curve"]]
    np.testing.assert_allclose([c[1] for c in resumed["curve"]], [c[1] for c in whole["curve"]], rtol=1e-5)
    assert resumed["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)
    with pytest.raises(FinerError, match="not a partial run of finer on 00.png"):
        bench.run_one(dataclasses.replace(job(partial), seed=1))


def test_a_benchmark_folder_and_a_run_folder_do_not_take_each_others_outputs(image_dir, tmp_path, capsys):
    bench, run = tmp_path / "bench", tmp_path / "run"
    assert main(["bench", "images", str(image_dir), "--models", "finer", "--limit", "1", "--steps", "2", "--width",
                 "8", "--crop", "16", "--size", "16", "--out", str(bench), "--quiet"]) == 0
    kept = sorted(str(p.relative_to(bench)) for p in bench.rglob("*"))
    assert main(["fit", "image", str(image_dir / "00.png"), "--steps", "2", "--width", "8", "--out", str(bench),
                 "--overwrite", "--quiet"]) == 2
    assert "holds a benchmark's results (results.json or width.json, runs/)" in capsys.readouterr().err
    assert sorted(str(p.relative_to(bench)) for p in bench.rglob("*")) == kept
    assert main(["fit", "image", str(image_dir / "00.png"), "--steps", "2", "--width", "8", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    for command in (["images", str(image_dir), "--models", "finer"], ["width", str(image_dir), "--widths", "4"]):
        assert main(["bench", *command, "--limit", "1", "--steps", "2", "--out", str(run), "--quiet"]) == 2
        assert "holds an image run; a benchmark writes its tables and runs into a folder of its own" in (
            capsys.readouterr().err)
    assert not (run / "runs").exists()
    import trimesh

    from finer.bench.sdf import run_sdf_bench

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.icosphere(1).export(meshes / "ball.obj")
    with pytest.raises(FinerError, match="holds the results of `finer bench images`; `finer bench sdf` would"):
        run_sdf_bench(meshes, models=["finer"], out=bench, progress=False,
                      settings=dict(steps=2, batch_size=100, pool_size=1000, surface_samples=1000, resolution=12,
                                    iou_resolution=12, chamfer_samples=300))
    assert sorted(str(p.relative_to(bench)) for p in bench.rglob("*")) == kept
    capsys.readouterr()
    assert main(["bench", "width", str(image_dir), "--widths", "4", "--limit", "1", "--steps", "2", "--out", str(bench),
                 "--quiet"]) == 2
    assert "holds the results of `finer bench images`; `finer bench width` would" in capsys.readouterr().err


def test_a_damaged_run_record_is_named_before_any_table_is_rewritten(image_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "images", str(image_dir), "--models", "finer", "--limit", "1", "--steps", "2", "--width", "8",
            "--crop", "16", "--size", "16", "--out", str(out), "--quiet"]
    assert main(args) == 0
    record = next((out / "runs").glob("*.json"))
    tables = {name: (out / name).read_text() for name in ("results.json", "results.csv", "summary.md")}
    row = json.loads(record.read_text())
    for damage, message in (({"psnr": "high"}, "psnr 'high' is not a number"), ({"psnr": None, "ssim": "x"},
                            "ssim 'x' is not a number")):
        record.write_text(json.dumps({**row, **damage}))
        assert main([*args, "--report-only"]) == 2
        err = capsys.readouterr().err
        assert f"{record}: {message}; delete the record to fit that run again" in err and "Error:" not in err
        assert {name: (out / name).read_text() for name in tables} == tables
    record.write_text(json.dumps({k: v for k, v in row.items() if k != "psnr"}))
    assert main(args) == 2 and "(it has no psnr)" in capsys.readouterr().err


def test_a_rerun_with_other_settings_does_not_take_the_old_runs(image_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "images", str(image_dir), "--models", "finer", "--limit", "1", "--steps", "3", "--width", "8",
            "--crop", "16", "--size", "16", "--out", str(out), "--quiet"]
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    capsys.readouterr()
    for flag, value, said in (("--width", "16", "width 8 where this grid has 16"),
                              ("--steps", "4", "steps 3 where this grid has 4")):
        changed = [*args]
        changed[changed.index(flag) + 1] = value
        assert main(changed) == 2
        err = capsys.readouterr().err
        assert said in err and "write this grid to another --out" in err
        assert main([*changed, "--report-only"]) == 2
        err = capsys.readouterr().err  # nothing to delete or move: the options were not the grid's
        assert said in err and "give the options it was run with" in err and "delete" not in err
        assert (out / "summary.md").read_text() == summary  # the old grid's table stays as it was
    same = [*args]
    same[same.index("--crop") + 1] = "16x16"  # the same crop written otherwise: the same pixels, accepted
    assert main(same) == 0 and "1 of 1 run already finished" in capsys.readouterr().out
    assert main([*args, "--report-only", "--models", "siren"]) == 2  # (no finished siren run to report)
    printed = capsys.readouterr().out  # the finer run is kept, and said to be left out
    assert "1 finished run in" in printed and "not in this grid (other models, seeds, images or widths) left out of " \
        "its tables: 00-finer-s0" in printed
    other = tmp_path / "other"  # other images under the same file names
    other.mkdir()
    Image.fromarray(np.full((24, 24, 3), 77, np.uint8)).save(other / "00.png")
    assert main([args[0], args[1], str(other), *args[3:]]) == 2
    assert "pixels" in capsys.readouterr().err
    # a record from before records named the pixels: its saved reconstruction tells the other image apart
    record = out / "runs" / "00-finer-s0.json"
    row = json.loads(record.read_text())
    record.write_text(json.dumps({**{k: v for k, v in row.items() if k != "image_digest"}, "psnr": 40.0}))
    # (a 3-step fit learns nothing; a good one, whose reconstruction is close to the image, is drawn here)
    Image.fromarray((load_image(image_dir / "00.png", crop=16, size=16) * 255).round().astype(np.uint8)).save(
        out / "runs" / "00-finer-s0.png")
    negative = tmp_path / "negative"
    negative.mkdir()
    Image.fromarray(255 - np.asarray(Image.open(image_dir / "00.png"))).save(negative / "00.png")
    assert main([args[0], args[1], str(negative), *args[3:]]) == 2
    assert "another image of the same name" in capsys.readouterr().err
    assert main(args) == 0 and "1 of 1 run already finished" in capsys.readouterr().out  # its own image: taken
    (out / "runs" / "00-finer-s0.png").unlink()  # no reconstruction either: the folder the tables name tells
    assert main([args[0], args[1], str(negative), *args[3:]]) == 2
    assert f"recorded for the images of {image_dir}, where this grid's are in {negative}" in capsys.readouterr().err
    # a partial run of other settings stops the grid before anything trains
    torch.save({"format": io.BENCH_PARTIAL_FORMAT, "key": {"model": "siren"}}, out / "runs" / "00-siren-s0.partial.pt")
    assert main([*args[:3], "--models", "gauss,siren", *args[5:]]) == 2
    assert "is not a partial run of siren on 00.png" in capsys.readouterr().err
    assert not (out / "runs" / "00-gauss-s0.json").exists()


def test_options_that_would_be_ignored_are_refused(image_dir, tmp_path, capsys):
    base = [str(image_dir), "--out", str(tmp_path / "x"), "--quiet"]
    assert main(["bench", "width", *base, "--width", "64"]) == 2
    assert "--width and --hidden-layers do not apply" in capsys.readouterr().err
    assert main(["bench", "images", *base, "--address", "auto"]) == 2
    assert "use it with --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_grid_that_stops_on_bad_input_creates_nothing(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "a.png")
    grid = ["bench", "images", str(images), "--steps", "2", "--size", "16", "--width", "8", "--hidden-layers", "1",
            "--models", "finer", "--quiet", "--out", str(tmp_path / "o")]
    assert main([*grid, "--crop", "64"]) == 2
    err = capsys.readouterr().err
    assert "a.png: crop 64x64 is larger than the image (20x20)" in err and "give --crop none" in err
    (images / "b.png").write_bytes(b"not an image")
    assert main([*grid, "--crop", "none"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_grid_says_what_is_kept_and_how_to_go_on(image_dir, tmp_path, monkeypatch, capsys):
    from finer.bench import images as bench

    def stopped(job):  # Ctrl-C or SIGTERM during the first run
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_one", stopped)
    out = tmp_path / "bench"
    grid = ["bench", "images", str(image_dir), "--models", "finer", "--limit", "1", "--steps", "3", "--width", "8",
            "--crop", "16", "--size", "16", "--out", str(out), "--quiet"]
    for extra, said in (([], "skips them and continues the runs it cut from their last saved state"),
                        (["--checkpoint-every", "0"], "skips them and fits the runs it cut again"),
                        (["--batch-signals", "2"], "; stacked runs (--batch-signals) start again")):
        assert main([*grid, *extra]) == 130
        err = capsys.readouterr().err
        assert err.startswith("error: interrupted; the finished runs are kept in") and len(err.splitlines()) == 1
        assert said in err


def test_stored_nan_ssim_reads_back_on_a_rerun(tmp_path, capsys):
    """A 20 x 1 image has no SSIM (NaN, stored as null): the rerun that reads the finished run back, and
    --report-only, tabulate it as the first run did."""
    (tmp_path / "img").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1, 20, 3), dtype=np.uint8)).save(
        tmp_path / "img" / "line.png")
    args = ["bench", "images", str(tmp_path / "img"), "--models", "finer", "--steps", "2", "--crop", "none",
            "--size", "1", "--width", "4", "--out", str(tmp_path / "b"), "--quiet"]
    assert main(args) == 0
    first = (tmp_path / "b" / "summary.md").read_text()
    assert "| nan |" in first.replace(" ± nan", "")
    assert main(args) == 0 and main([*args, "--report-only"]) == 0
    assert (tmp_path / "b" / "summary.md").read_text() == first
    (tmp_path / "b" / "runs" / "line-finer-s0.json").write_text("[1, 2]")  # valid JSON, not a record
    capsys.readouterr()
    assert main(args) == 2
    assert "line-finer-s0.json is not a run record" in capsys.readouterr().err


def test_a_grid_refuses_its_image_folder_as_out_and_names_too_long_for_files(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    args = ["--models", "finer", "--steps", "1", "--crop", "none", "--size", "8", "--quiet"]
    assert main(["bench", "width", str(tmp_path / "img"), "--widths", "4", "--out", str(tmp_path / "img"), *args]) == 2
    assert "is the image folder" in capsys.readouterr().err
    (tmp_path / "img" / "folder.png").mkdir()  # not an image: passed over
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{'a' * 240}.png")
    assert main(["bench", "images", str(tmp_path / "img"), "--out", str(tmp_path / "b"), *args]) == 2
    assert "is longer than file names may be here" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    (tmp_path / "img" / f"{'a' * 240}.png").unlink()
    assert main(["bench", "images", str(tmp_path / "img"), "--out", str(tmp_path / "b"), *args]) == 0
    assert [r["image"] for r in json.loads((tmp_path / "b" / "results.json").read_text())["runs"]] == ["a.png"]


@pytest.mark.parametrize("bench", ["images", "width"])
def test_two_runs_that_would_share_a_name_are_refused_before_any_work(tmp_path, capsys, bench):
    """x-gauss.png fitted by finer and x.png by gauss-finer would both be x-gauss-finer-...: one run's files
    would replace the other's, and the grid could never be finished."""
    (tmp_path / "img").mkdir()
    for name in ("x.png", "x-gauss.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / name)
    extra = ["--widths", "4"] if bench == "width" else []
    assert main(["bench", bench, str(tmp_path / "img"), "--models", "finer,gauss-finer", "--steps", "1", "--crop",
                 "none", "--size", "8", "--quiet", "--out", str(tmp_path / "b"), *extra]) == 2
    err = capsys.readouterr().err
    assert "would both be named 'x-gauss-finer-" in err and "x-gauss.png with finer" in err
    assert not (tmp_path / "b").exists()


def test_a_grid_takes_size_none_as_it_takes_crop_none(tmp_path):
    """--size none: the images at their own size (the quick preset would resize them to 128)."""
    (tmp_path / "img").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(
        tmp_path / "img" / "a.png")
    assert main(["bench", "images", str(tmp_path / "img"), "--models", "finer", "--steps", "2", "--crop", "none",
                 "--size", "none", "--width", "8", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    data = json.loads((tmp_path / "b" / "results.json").read_text())
    assert data["protocol"]["size"] is None and data["protocol"]["crop"] is None
    assert (data["runs"][0]["image_height"], data["runs"][0]["image_width"]) == (12, 20)
    assert "whole images, 3 hidden layers" in (tmp_path / "b" / "summary.md").read_text()  # no "resized to"


def test_width_table_counts_two_exact_fits_as_a_tie():
    from finer.bench.images import width_table

    rows = [dict(model=m, width=8, image="a", psnr=math.inf) for m in ("finer", "siren")]
    rows += [dict(model="finer", width=8, image="b", psnr=31.0), dict(model="siren", width=8, image="b", psnr=30.0)]
    protocol = dict(images=2, directory="d", crop=None, size=None, hidden_layers=2, steps=1, seeds=[0], device="cpu",
                    machine="m", torch="t", date="d", runs_done=4)
    table = width_table(rows, ["finer", "siren"], [8], protocol)
    line = next(row for row in table.splitlines() if row.startswith("| 8"))
    assert "nan" not in line and "+0.50" in line and "1/2" in line  # the lead: mean of 0 (tie) and +1


def test_tables_take_exact_fits_nan_ssim_and_mark_diverged_runs():
    from finer.bench.images import summary_table, width_table
    from finer.bench.report import _table_html, curves_figure, mean_curves

    curve = [[1, 10.0], [2, 20.0], [3, 30.0]]
    rows = [dict(model="finer", image="a", seed=0, width=8, psnr=math.inf, ssim=1.0, lpips=None, params=10,
                 seconds_per_step=0.1, status="complete", curve=curve),
            dict(model="finer", image="b", seed=0, width=8, psnr=30.0, ssim=math.nan, lpips=None, params=10,
                 seconds_per_step=0.1, status="complete", curve=curve),
            dict(model="siren", image="a", seed=0, width=8, psnr=20.0, ssim=0.5, lpips=None, params=10,
                 seconds_per_step=0.1, status="diverged", curve=curve[:1]),
            dict(model="siren", image="b", seed=0, width=8, psnr=25.0, ssim=0.6, lpips=None, params=10,
                 seconds_per_step=0.1, status="complete", curve=curve)]
    protocol = dict(images=2, directory="d", crop=None, size=None, hidden_layers=2, width=8, steps=3, seeds=[0],
                    device="cpu", machine="m", torch="t", date="d", runs_done=4)
    table = summary_table(rows, ["finer", "siren"], protocol)
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| inf | nan |" in lines["| finer"]  # an exact fit's mean is inf, and no spread is made up
    assert "22.50 ± 3.54" in lines["| siren"] and "| 2 (1 †) |" in lines["| siren"]
    assert "† runs whose loss diverged" in table
    assert "(1 †)" in _table_html(rows, ["finer", "siren"]) and "† runs whose loss diverged" in _table_html(
        rows, ["finer", "siren"])
    width = width_table(rows, ["finer", "siren"], [8], protocol)
    assert "22.50 †" in width and "† runs whose loss diverged" in width and "± std" not in width  # (no spread shown)
    assert curves_figure(rows, ["finer", "siren"])
    means = mean_curves(rows, ["finer", "siren"])  # the diverged run's 1-step curve left out, not cutting siren's
    assert means["siren"][0] == [1, 2, 3] and means["siren"][2] == 1 and means["finer"][2] == 2
    assert "curves leave them out" in table and "curves" not in width.split("†")[-1]  # (the width table has none)


def test_a_rerun_that_trains_nothing_keeps_the_run_conditions(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    args = ["bench", "images", str(tmp_path / "img"), "--models", "finer", "--steps", "1", "--crop", "none",
            "--size", "8", "--width", "4", "--out", str(tmp_path / "b"), "--quiet"]
    assert main(args) == 0 and main([*args, "--workers", "2"]) == 0  # every run finished: nothing trained
    assert json.loads((tmp_path / "b" / "results.json").read_text())["protocol"]["workers"] == 1


def test_a_folder_takes_the_common_image_formats_and_leaves_other_files(tmp_path):
    from finer.bench.images import list_images

    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for name in ("a.pgm", "b.gif", "c.png", "d.tga"):
        grey.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "data.h5").write_bytes(b"\x89HDF")
    assert [p.name for p in list_images(tmp_path)] == ["a.pgm", "b.gif", "c.png", "d.tga"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.h5").write_bytes(b"\x89HDF")
    with pytest.raises(FinerError, match="no images in"):
        list_images(tmp_path / "other")


@pytest.mark.parametrize("bench,args,message", [
    ("images", ["--models", "finer,siren,wire", "--width", "1"], "width 1 leaves 0 complex units"),
    ("width", ["--models", "finer,official-finer", "--widths", "8,10000000"], "choose a smaller width"),
])
def test_a_network_the_grid_cannot_build_is_refused_before_any_run(image_dir, tmp_path, capsys, bench, args, message):
    out = tmp_path / "grid"
    assert main(["bench", bench, str(image_dir), *args, "--steps", "2", "--crop", "none", "--size", "12", "--limit",
                 "1", "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())


def test_the_tables_say_how_the_runs_were_trained_where_the_command_would_not(tmp_path, astronaut_small, capsys):
    """Images of other shapes (one grey): nothing stacked although --batch-signals allowed it, and the methods'
    parameter counts differ by image; a method's runs trained with and without fused layers are named."""
    d = tmp_path / "mixed"
    d.mkdir()
    rgb = (astronaut_small * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(d / "a.png")
    Image.fromarray(rgb[:20, :, 0]).save(d / "b.png")  # grey, another shape
    out = tmp_path / "grid"
    common = ["--models", "finer", "--steps", "2", "--width", "8", "--crop", "none", "--size", "none", "--out",
              str(out), "--quiet"]
    assert main(["bench", "images", str(d), "--limit", "1", "--fused", "off", *common]) == 0
    assert main(["bench", "images", str(d), "--batch-signals", "2", "--fused", "eager", *common]) == 0
    text = (out / "summary.md").read_text()
    assert "at a time as one stacked network" not in text  # no two images of one shape: nothing stacked
    rows = json.loads((out / "results.json").read_text())["runs"]
    low, high = sorted(r["params"] for r in rows)
    assert low < high and f"| {low:,}–{high:,} |" in text
    assert "(fused layers for some runs of a method, not for others: finer: eager 1, off 1;" in text
    assert f"<td>{low:,}–{high:,}</td>" in (out / "report.html").read_text()


def test_run_conditions_are_read_from_the_runs():
    from finer.bench.images import _as_trained

    cpu = {"model": "finer", "device": "cpu"}
    assert _as_trained([{**cpu, "batch_signals": 4}, cpu], {"batch_signals": 1}) == {"batch_signals": 4}
    assert _as_trained([cpu, cpu], {"batch_signals": 16}) == {"batch_signals": 1}  # allowed, none stacked
    assert _as_trained([cpu, {**cpu, "processor": "A"}], {}) == {}  # a row from before processors were recorded
    assert _as_trained([cpu, {**cpu, "processor": "A"}, {**cpu, "processor": "B"}], {})["mixed_devices"] == [
        "cpu: 1 run", "cpu, A: 1 run", "cpu, B: 1 run"]
    assert _as_trained([{**cpu, "model": "pemlp", "fused": "compile"}, {**cpu, "model": "pemlp", "fused": "off"}],
                       {}) == {}  # nothing of PE-MLP's is fused: an old record's "compile" changed nothing
