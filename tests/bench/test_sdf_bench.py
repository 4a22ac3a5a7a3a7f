import json

import trimesh

from finer.bench.sdf import run_sdf_bench

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
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())["runs"]) == 4
    run_sdf_bench(meshes, models=["finer", "siren"], out=tmp_path / "b", settings=TINY, progress=False)
    assert capsys.readouterr().out.count("IoU") == 0  # finished runs are skipped
