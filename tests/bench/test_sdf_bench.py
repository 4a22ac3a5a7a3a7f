import json

import pytest
import trimesh

from finer.errors import FinerError

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
    with pytest.raises(FinerError, match="another protocol or mesh \\(steps 3 where this grid has 4"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings={**TINY, "steps": 4}, progress=False)
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
    with pytest.raises(FinerError, match="s.obj and s.stl: meshes whose names differ only by extension"):
        run_sdf_bench(meshes, models=["finer"], out=tmp_path / "b", settings=TINY, progress=False)
    assert not (tmp_path / "b").exists()
