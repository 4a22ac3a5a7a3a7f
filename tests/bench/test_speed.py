"""finer bench speed: the report's parts on a tiny network (timings themselves are a benchmark)."""

import json

import pytest
import torch

from finer.cli import main


def test_speed_report_on_tiny_shapes(tmp_path, capsys):
    out = tmp_path / "speed.md"
    assert main(["bench", "speed", "--size", "16", "--width", "8", "--hidden-layers", "1", "--steps", "2",
                 "--repeats", "1", "--warmup", "1", "--models", "finer,wire", "--no-compile",
                 "--identity-steps", "20", "--signals", "3", "--signal-size", "16", "--signal-width", "8",
                 "--signal-steps", "3", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["points"] == 256 and data["gemm_floor_seconds_per_step"] > 0
    rows = {r["method"]: r for r in data["methods"]}
    assert rows["finer"]["fused_layers"] == 2 and rows["wire"]["fused_layers"] == 2
    # FINER's own products are the floor's; WIRE's (complex, narrower) are timed on their own
    assert rows["finer"]["own_products_seconds_per_step"] == data["gemm_floor_seconds_per_step"]
    assert rows["wire"]["own_products_seconds_per_step"] != data["gemm_floor_seconds_per_step"]
    # same weights, same data, same steps: the fused library FINER is the official computation
    assert data["identity"]["max_relative_loss_difference"] < 1e-4
    assert abs(data["identity"]["psnr_difference"]) < 1e-3
    assert data["signals"]["images"] == 3 and data["signals"]["max_psnr_difference"] < 1e-3
    text = out.read_text()
    assert "| finer |" in text and "GEMM floor" in text and "Identity" in text and "Many signals" in text


def test_an_earlier_report_is_kept_unless_overwrite(tmp_path, monkeypatch, capsys):
    import finer.bench.speed

    out = tmp_path / "speed.md"
    out.write_text("an earlier report")
    monkeypatch.setattr(finer.bench.speed, "run_speed", lambda *a, **k: pytest.fail("timed before checking --out"))
    assert main(["bench", "speed", "--out", str(out), "--quiet"]) == 2
    assert "an earlier report; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "an earlier report"
    # --overwrite replaces an earlier speed report only: not a run's metrics.json, not a picture
    assert main(["bench", "speed", "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert "not an earlier speed report (no speed.json of one beside it)" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text('{"task": "image", "psnr": 30.0}')
    assert main(["bench", "speed", "--out", str(tmp_path / "metrics.md"), "--overwrite", "--quiet"]) == 2
    assert "not an earlier speed report" in capsys.readouterr().err
    assert main(["bench", "speed", "--out", str(tmp_path / "pic.png"), "--overwrite", "--quiet"]) == 2
    assert "the report is Markdown; give it a name ending in .md" in capsys.readouterr().err
    monkeypatch.undo()
    out.with_suffix(".json").write_text('{"gemm_floor_seconds_per_step": 1.0}')  # an earlier report's data
    out.with_suffix(".profile.txt").write_text("an earlier report's profiles")
    assert main(["bench", "speed", "--size", "16", "--width", "8", "--hidden-layers", "1", "--steps", "1",
                 "--repeats", "1", "--warmup", "0", "--models", "finer", "--no-compile", "--identity-steps", "0",
                 "--signals", "0", "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert "| finer |" in out.read_text() and not out.with_suffix(".profile.txt").exists()  # none stay
    assert (tmp_path / "metrics.json").read_text() == '{"task": "image", "psnr": 30.0}'


@pytest.mark.parametrize("models, message", [
    ("finer,nope", "unknown model(s) nope"),
    (",", "no models given"),
    ("finer,official-finer", "official-finer is always timed, as the reference row"),
])
def test_speed_rejects_bad_model_lists(capsys, models, message):
    assert main(["bench", "speed", "--models", models, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_too_few_signals_is_refused_before_any_timing(tmp_path, monkeypatch, capsys):
    import finer.bench.speed

    def timing(*args, **kwargs):
        raise AssertionError("timed before the signals were checked")

    monkeypatch.setattr(finer.bench.speed, "products_block", timing)
    assert main(["bench", "speed", "--signals", "500", "--signal-size", "128", "--quiet"]) == 2
    assert "only 34 images of 128x128 available, 500 asked for" in capsys.readouterr().err


def test_a_setting_a_method_refuses_is_refused_before_any_timing(monkeypatch, capsys):
    import finer.bench.speed

    def timing(*args, **kwargs):
        raise AssertionError("timed before the methods' settings were checked")

    monkeypatch.setattr(finer.bench.speed, "products_block", timing)
    assert main(["bench", "speed", "--models", "finer,wire", "--width", "1", "--size", "8", "--quiet"]) == 2
    assert "width 1 leaves 0 complex units" in capsys.readouterr().err


def test_blocks_are_timed_round_by_round():
    from finer.bench.speed import interleaved_medians

    calls, seconds = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([9.0, 5.0, 7.0])}

    def block(name):
        def run():
            calls.append(name)
            return next(seconds[name])
        return run

    assert interleaved_medians({"a": block("a"), "b": block("b")}, 3) == {"a": 2.0, "b": 7.0}
    assert calls == ["a", "b"] * 3  # a slow spell of the machine hits every row alike


def test_each_method_is_measured_against_its_own_products():
    import finer
    import torch
    from finer.bench.speed import model_layers, network_layers

    floor = network_layers(256, 3, 3)
    assert model_layers(finer.build_model("finer", 2, 3, width=256, hidden_layers=3)) == floor
    wire = model_layers(finer.build_model("wire", 2, 3, width=256, hidden_layers=3))
    assert wire[0] == (2, 181, torch.float32)  # real first layer, then complex layers of width 256/sqrt(2)
    assert wire[1:] == [(181, 181, torch.complex64)] * 3 + [(181, 3, torch.complex64)]
    assert model_layers(finer.build_model("pemlp", 2, 3, width=256, hidden_layers=3))[0][0] == 42  # encoded input


def test_speed_report_with_recorded_steps(tmp_path, cpu_recorder):
    """--cuda-graph: every library row and the identity check's library fit run as recorded steps
    (replayed by the CPU stand-in here), and the identity with the reference still holds."""
    out = tmp_path / "speed.md"
    assert main(["bench", "speed", "--size", "16", "--width", "8", "--hidden-layers", "1", "--steps", "2",
                 "--repeats", "1", "--warmup", "0", "--models", "finer,siren", "--no-compile",
                 "--identity-steps", "20", "--signals", "0", "--device", "cpu", "--cuda-graph",
                 "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    labels = [r["label"] for r in data["methods"]]
    assert labels == ["finer", "finer (CUDA graph)", "siren", "siren (CUDA graph)"]
    assert cpu_recorder.records == 3  # two graph rows (recorded in warm-up) + the identity check
    assert data["identity"]["max_relative_loss_difference"] < 1e-4
    text = out.read_text()
    assert "| finer (CUDA graph) |" in text and "replayed as a CUDA graph" in text
    assert "Command: `finer bench speed --size 16 " in text


def test_speed_profile_tables_every_row(tmp_path, capsys):
    out = tmp_path / "speed.md"
    assert main(["bench", "speed", "--size", "16", "--width", "8", "--hidden-layers", "1", "--steps", "2",
                 "--repeats", "1", "--warmup", "1", "--models", "finer", "--no-compile", "--identity-steps", "0",
                 "--signals", "0", "--profile", "--out", str(out), "--quiet"]) == 0
    text = out.with_suffix(".profile.txt").read_text()
    assert [line for line in text.splitlines() if line.startswith("== ")] == ["== floor", "== official", "== finer"]
    assert "aten::mm" in text  # the products show up by name
    assert text.count("-- by CPU time") == 3
    assert "profiles" not in json.loads(out.with_suffix(".json").read_text())
    assert main(["bench", "speed", "--profile", "--quiet"]) == 2
    assert "give --out" in capsys.readouterr().err


def test_profile_orders_show_the_host_beside_the_card():
    """On a GPU a step of small kernels is bound by the host: its tables give both sides."""
    from finer.bench.speed import profile_orders

    assert [key for _, key in profile_orders(torch.device("cuda"))] == ["self_device_time_total", "self_cpu_time_total"]
    assert [key for _, key in profile_orders(torch.device("cpu"))] == ["self_cpu_time_total"]
