"""Checkpoints rebuild the model from the file alone; JSON/CSV outputs are written atomically."""

import json

import numpy as np
import pytest
import torch

import finer
from finer import io
from finer.errors import FinerError
from finer.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_round_trip(name, tmp_path):
    net = build_model(name, 2, 3, width=16, hidden_layers=1, seed=3, lr=1e-3)
    io.save_checkpoint(tmp_path / "c.pt", model=net, extra={"model": net.state_dict(), "task": {"kind": "x"}})
    loaded, payload = io.load_checkpoint(tmp_path / "c.pt")
    x = torch.rand(9, 2)
    assert torch.equal(loaded(x), net(x))
    assert loaded.config == net.config and payload["task"] == {"kind": "x"}


def test_bad_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FinerError, match="cannot read checkpoint"):
        io.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(FinerError, match="not a finer-inr checkpoint"):
        io.load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": io.NERF_CHECKPOINT_FORMAT}, tmp_path / "nerf.pt")  # the other kind: say which it is
    with pytest.raises(FinerError, match="is a NeRF checkpoint .for `finer render nerf`., not an image or SDF"):
        io.load_checkpoint(tmp_path / "nerf.pt")
    torch.save({"format": io.CHECKPOINT_FORMAT}, tmp_path / "image.pt")
    with pytest.raises(FinerError, match="is an image or SDF model's checkpoint, not a NeRF checkpoint"):
        io.read_payload(tmp_path / "image.pt", io.NERF_CHECKPOINT_FORMAT)


def test_each_command_names_the_checkpoint_it_was_given_and_the_kind_it_reads(tmp_path, capsys):
    from finer.cli import main

    net = build_model("finer", 3, 1, width=8, hidden_layers=1)
    sdf = tmp_path / "sdf"
    io.save_checkpoint(sdf / "checkpoint.pt", model=net, extra={"model": net.state_dict(), "task": {"kind": "sdf"}})
    torch.save({"format": io.NERF_CHECKPOINT_FORMAT}, tmp_path / "nerf.pt")
    (tmp_path / "nerf-run").mkdir()  # a run folder without config.json: no warning about SDF settings first
    torch.save({"format": io.NERF_CHECKPOINT_FORMAT}, tmp_path / "nerf-run" / "checkpoint.pt")
    image = build_model("finer", 2, 3, width=8, hidden_layers=1)
    io.save_checkpoint(tmp_path / "image.pt", model=image,
                       extra={"model": image.state_dict(), "task": {"kind": "image"}})
    cases = [
        (["analyze", "neurons", str(sdf)], f"{sdf / 'checkpoint.pt'} is an SDF model's checkpoint, not an image "
                                           "model's checkpoint, which `finer analyze neurons` reads"),
        (["analyze", "neurons", str(tmp_path / "nerf.pt")], "nerf.pt is a NeRF checkpoint (for `finer render nerf`), "
                                                            "not an image model's checkpoint, which `finer analyze"),
        (["eval", "sdf", str(tmp_path / "image.pt")], "image.pt is an image model's checkpoint, not an SDF model's "
                                                      "checkpoint, which `finer eval sdf` reads"),
        (["render", str(tmp_path / "nerf.pt")], "is a NeRF checkpoint (for `finer render nerf`), not an image "
                                                "model's checkpoint, which `finer render` reads"),
        (["render", "nerf", str(tmp_path / "image.pt")], "image.pt is an image model's checkpoint, not a NeRF"),
        (["eval", "sdf", str(tmp_path / "nerf-run")], "checkpoint.pt is a NeRF checkpoint (for `finer render nerf`), "
                                                      "not an SDF model's checkpoint"),
        (["render", str(sdf)], "is an SDF model's checkpoint, not an image model's checkpoint, which `finer render` "
                               "reads (`finer render nerf` reads NeRF runs); an SDF run's folder holds its surface"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (sdf / "neurons").exists()


def test_an_unknown_image_extension_is_refused_before_any_work(tmp_path):
    from finer.tasks.image import check_image_path

    check_image_path(tmp_path / "a.png")
    for name in ("x.jpgg", "x.psd"):  # unknown, and a format PIL reads but cannot write
        with pytest.raises(FinerError, match=f"no format with the extension '.{name[2:]}'"):
            check_image_path(tmp_path / name)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a PyTorch file, but of pickled objects
    with pytest.raises(FinerError, match="holds Python objects"):
        io.load_checkpoint(tmp_path / "module.pt")


def test_json_handles_non_finite_numbers(tmp_path):
    io.write_json(tmp_path / "m.json", {"psnr": float("inf"), "x": float("nan"), "t": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"psnr": "inf", "x": None, "t": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from finer import io

    mask = os.umask(0o022)
    try:
        io.write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_a_run_that_raises_is_recorded_as_failed_not_running(tmp_path):
    from finer.io import failure_recorded, write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"status": "running", "steps": 0})
    with pytest.raises(RuntimeError, match="boom"), failure_recorded(path):
        raise RuntimeError("boom")
    assert json.loads(path.read_text()) == {"status": "failed", "steps": 0, "message": "RuntimeError: boom"}
    write_json(path, {"status": "running"})
    with pytest.raises(KeyboardInterrupt), failure_recorded(path):
        raise KeyboardInterrupt
    assert json.loads(path.read_text())["status"] == "interrupted"
    write_json(path, {"status": "diverged", "message": "loss became nan"})  # a final status stays
    with pytest.raises(ValueError), failure_recorded(path):
        raise ValueError("later")
    assert json.loads(path.read_text()) == {"status": "diverged", "message": "loss became nan"}


def test_a_network_saved_on_its_own_loads_back_and_bad_payloads_are_named(tmp_path):
    import finer
    from finer.io import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

    net = finer.build_model("siren", 2, 3, width=8, hidden_layers=1, seed=0)
    save_checkpoint(tmp_path / "net.pt", model=net)  # the weights need no help from the caller
    back, _ = load_checkpoint(tmp_path / "net.pt")
    x = torch.rand(5, 2)
    assert torch.equal(back(x), net(x))
    torch.save({"format": CHECKPOINT_FORMAT}, tmp_path / "part.pt")
    with pytest.raises(finer.FinerError, match="incomplete finer-inr checkpoint \\(no method, model_config"):
        load_checkpoint(tmp_path / "part.pt")
    with pytest.raises(finer.FinerError, match="task 'nerf': load_checkpoint rebuilds 'image' or 'sdf'"):
        load_checkpoint(tmp_path / "net.pt", task="nerf")
    with pytest.raises(finer.FinerError, match="networks built by finer.build_model; got a Linear"):
        save_checkpoint(tmp_path / "lin.pt", model=torch.nn.Linear(2, 3))


@pytest.mark.parametrize("options, message", [({"scale": "2"}, "scale must be a positive number"),
                                              ({"scale": float("inf")}, "scale must be a positive number"),
                                              ({"chunk": 0}, "chunk must be a positive integer")])
def test_render_refuses_bad_options_from_python(tmp_path, options, message):
    from finer.runs import render_checkpoint

    io.save_checkpoint(tmp_path / "net.pt", model=build_model("siren", 2, 3, width=8, hidden_layers=1, seed=0),
                       extra={"task": {"kind": "image", "height": 4, "width": 4, "channels": 3,
                                       "target_range": [-1.0, 1.0], "aspect": "stretch"}})
    with pytest.raises(FinerError, match=message):
        render_checkpoint(tmp_path / "net.pt", out=tmp_path / "r.png", **options)


def test_a_fit_comes_back_as_an_array_and_a_model(tmp_path, png_path):
    """reconstruct_image at scale 1 is the run's reconstruction.png (to its 8-bit rounding), at scale 2
    twice the size; load_checkpoint gives the model, whose output on a pixel centre is that pixel."""
    from PIL import Image

    from finer.tasks.image import coordinate_grid

    finer.fit_image(finer.ImageRunConfig(image=str(png_path), steps=30, model_options={"width": 16}),
                    tmp_path / "run", progress=False)
    saved = np.asarray(Image.open(tmp_path / "run" / "reconstruction.png"), dtype=np.float32) / 255
    image = finer.reconstruct_image(tmp_path / "run")
    assert image.shape == saved.shape and image.dtype == np.float32
    assert np.abs(image - saved).max() <= 0.5 / 255 + 1e-6
    assert finer.reconstruct_image(tmp_path / "run" / "checkpoint.pt", scale=2).shape == (48, 48, 3)
    model, payload = finer.load_checkpoint(tmp_path / "run")
    lo, hi = payload["task"]["target_range"]
    with torch.no_grad():
        out = model(coordinate_grid(24, 24)).reshape(24, 24, 3).numpy()
    np.testing.assert_allclose(np.clip((out - lo) / (hi - lo), 0, 1), image, atol=1e-5)


def test_reports_name_the_processor_by_its_model_name(tmp_path, monkeypatch):
    import platform

    import torch

    import finer.runs

    (tmp_path / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000\nflags\t: a\n")
    monkeypatch.setattr(finer.runs, "CPUINFO", str(tmp_path / "cpuinfo"))
    assert finer.runs.device_name(torch.device("cpu")) == "Example CPU 9000"
    monkeypatch.setattr(finer.runs, "CPUINFO", str(tmp_path / "missing"))  # not Linux: what platform says
    assert finer.runs.device_name(torch.device("cpu")) == (platform.processor() or platform.machine() or "cpu")


def test_inputs_whose_names_differ_only_by_extension_or_case_are_refused():
    from pathlib import Path

    io.check_unique_stems([Path("a.png"), Path("b.png"), Path("ab.png")], "images")  # distinct: nothing raised
    with pytest.raises(FinerError, match="a.png and a.jpg: images whose names differ only by extension or case"):
        io.check_unique_stems([Path("a.png"), Path("a.jpg")], "images")
    with pytest.raises(FinerError, match="Cat.png and cat.png: "):  # one folder on macOS and Windows
        io.check_unique_stems([Path("Cat.png"), Path("cat.png"), Path("dog.png")], "images")
