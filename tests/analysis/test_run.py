"""`finer analyze` end to end at a tiny size: the outputs exist and describe themselves."""

import json

import pytest

from finer.cli import main


def test_analyze_ntk_and_activations(tmp_path, capsys):
    assert main(["analyze", "ntk", "--points", "32", "--width", "32", "--steps", "5", "--k", "1,20",
                 "--mc-samples", "2000", "--out", str(tmp_path / "ntk")]) == 0
    rows = json.loads((tmp_path / "ntk" / "ntk.json").read_text())
    assert [(r["model"], r["k"]) for r in rows] == [("siren", None), ("finer", 1.0), ("finer", 20.0)]
    assert {"model", "k", "diag_dominance", "n_large_eigenvalues", "loss_at_step_5"} <= set(rows[0])
    assert "fit loss at step 5 |" in (tmp_path / "ntk" / "ntk.md").read_text()  # 5 steps: no step 100 to name
    for name in ("ntk_kernels.png", "ntk_eigenvalues.png", "ntk_fit_loss.png", "ntk.md", "ntk_setting.json"):
        assert (tmp_path / "ntk" / name).is_file()
    setting = json.loads((tmp_path / "ntk" / "ntk_setting.json").read_text())["setting"]
    assert setting["finer_scale_grad"] is False  # which FINER derivative the kernels are of, recorded
    assert "detached" in (tmp_path / "ntk" / "ntk.md").read_text()  # and said beside the table
    # the final loss is that of the network after its 5 updates, computed here again
    import torch

    from finer.analysis import ntk as N
    from finer.analysis.signal1d import fit_curve, sum_of_sines

    net, x = N.shallow_network("finer", 20.0, width=32), N.ntk_grid(32)
    curve = fit_curve(net, x, sum_of_sines(x), steps=5)
    with torch.no_grad():
        after = float(torch.mean((net(x) - sum_of_sines(x)) ** 2))
    assert len(curve) == 6 and curve[-1] == pytest.approx(after, rel=1e-6)
    assert rows[2]["final_loss"] == pytest.approx(after, rel=1e-6) == rows[2]["loss_at_step_5"]
    assert main(["analyze", "ntk", "--models", "finer", "--k", "1,1.0000001", "--out", str(tmp_path / "x")]) == 2
    assert "bias ranges that print alike would share one row and one picture (finer k=1)" in capsys.readouterr().err
    # a folder holding other files (here the NTK's, as docs/results/analysis does) takes another analysis
    activations = ["analyze", "activations", "--resolution", "8", "--k", "default,5", "--out", str(tmp_path / "ntk")]
    assert main(activations) == 0
    rows = json.loads((tmp_path / "ntk" / "activations.json").read_text())
    assert len(rows) == 4 and rows[2]["k"] == 5.0 and (rows[2]["seed"], rows[2]["resolution"]) == (0, 8)
    assert "radians per unit of z" in (tmp_path / "ntk" / "activations.md").read_text()
    assert main(["analyze", "activations", "--resolution", "100000", "--out", str(tmp_path / "big")]) == 2
    assert "use a smaller --resolution" in capsys.readouterr().err and not (tmp_path / "big").exists()


def test_an_earlier_analysis_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "act"
    first = ["analyze", "activations", "--resolution", "8", "--k", "5", "--out", str(out)]
    assert main(first) == 0
    (out / "notes.txt").write_text("the user's")
    second = ["analyze", "activations", "--resolution", "8", "--k", "1,5", "--out", str(out)]
    capsys.readouterr()
    assert main(second) == 2
    err = capsys.readouterr().err
    assert "holds an earlier activation analysis (activations.png, activations.json, activations.md)" in err
    assert "--overwrite" in err and len(json.loads((out / "activations.json").read_text())) == 2  # untouched
    (out / "activations.md").unlink()  # a partial earlier analysis: the new one must not keep its pieces
    assert main([*second, "--overwrite"]) == 0
    assert len(json.loads((out / "activations.json").read_text())) == 4 and (out / "activations.md").is_file()
    assert (out / "notes.txt").read_text() == "the user's"  # other files stay
    ntk = ["analyze", "ntk", "--points", "8", "--width", "8", "--steps", "2", "--k", "1", "--mc-samples", "100",
           "--out", str(out)]
    assert main(ntk) == 0 and main(ntk) == 2
    assert "earlier NTK analysis" in capsys.readouterr().err


def test_analyze_neurons_from_a_checkpoint(tmp_path, png_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["fit", "image", str(png_path), "--steps", "3", "--width", "16", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyze", "neurons", str(run), "--count", "9"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["units"] == 16 and (run / "neurons" / "neurons.png").is_file()
    assert summary["spectral_centroid_unit"] == "cycles per image side" and summary["spectral_centroid"] > 0
    before = (run / "neurons" / "neurons.json").read_bytes()
    assert main(["analyze", "neurons", str(run), "--count", "4"]) == 2  # the earlier analysis is kept
    assert "holds an earlier neuron analysis (neurons.png, neuron_spectrum.png, neurons.json)" in \
        capsys.readouterr().err
    assert (run / "neurons" / "neurons.json").read_bytes() == before
    assert main(["analyze", "neurons", str(run), "--count", "4", "--overwrite"]) == 0
    import finer.analysis.run

    monkeypatch.setattr(finer.analysis.run, "memory_budget", lambda device: 1000)
    capsys.readouterr()
    assert main(["analyze", "neurons", str(run), "--out", str(tmp_path / "n")]) == 2
    assert "first-layer neurons of this run on its" in capsys.readouterr().err and not (tmp_path / "n").exists()


@pytest.mark.parametrize("args, message", [
    (["--models", ","], "no models given"),
    (["--k", "inf"], "finite"),
    (["--points", "1"], "points must be at least 2"),
    (["--points", "10000000"], "an NTK of 10000000 points needs about"),
    (["--mc-samples", "1000000000000"], "mc_samples 1000000000000: at most 1e+09"),
    (["--models", "finer,nope"], "unknown model 'nope'"),
])
def test_ntk_refuses_bad_settings_before_any_work(tmp_path, capsys, args, message):
    from finer.cli import main

    assert main(["analyze", "ntk", "--out", str(tmp_path / "ntk"), *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "ntk").exists()


def test_activations_refuse_more_layers_than_the_network_has(tmp_path, capsys):
    from finer.cli import main

    assert main(["analyze", "activations", "--layers", "5", "--out", str(tmp_path / "a")]) == 2
    assert "this FINER (3 x 256) has 4 activated layers; give 1 to 4" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["analyze", "activations", "--layers", "4", "--resolution", "4", "--k", "5",
                 "--out", str(tmp_path / "a")]) == 0
    # another size: its layers are measured and the outputs name it
    assert main(["analyze", "activations", "--layers", "5", "--hidden-layers", "4", "--width", "16",
                 "--resolution", "4", "--k", "5", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "activations.json").read_text())
    assert [r["layer"] for r in rows] == [1, 2, 3, 4, 5]
    assert {(r["width"], r["hidden_layers"]) for r in rows} == {(16, 4)}
    assert "FINER image network (4 x 16, omega 30)" in (tmp_path / "b" / "activations.md").read_text()


def test_an_ntk_that_overflows_is_named(tmp_path, capsys):
    from finer.cli import main

    assert main(["analyze", "ntk", "--models", "finer", "--k", "1e30", "--width", "8", "--points", "8", "--steps", "2",
                 "--mc-samples", "100", "--out", str(tmp_path / "ntk")]) == 2
    assert "the 1-D fit of finer k=1e+30 overflows" in capsys.readouterr().err  # (the float64 kernel does not)
    assert main(["analyze", "ntk", "--models", "finer", "--k", "1e200", "--width", "8", "--points", "8", "--steps",
                 "2", "--mc-samples", "100", "--out", str(tmp_path / "ntk")]) == 2
    assert "the NTK of finer k=1e+200 overflows" in capsys.readouterr().err


def test_analyze_ntk_from_python_takes_one_name_and_refuses_bad_sizes(tmp_path):
    from finer.analysis import run
    from finer.errors import FinerError

    rows = run.analyze_ntk(tmp_path / "a", models="siren", ks=1.0, width=8, points=8, steps=2, mc_samples=100)
    assert [r["model"] for r in rows] == ["siren"]  # one name, not its letters
    for options, message in (({"steps": 0}, "steps must be a positive integer"),
                             ({"params": "x"}, "params is 'all' or 'first'")):
        with pytest.raises(FinerError, match=message):
            run.analyze_ntk(tmp_path / "b", models="finer", width=8, points=8, **options)


def test_an_analysis_that_fails_keeps_the_earlier_one_even_with_overwrite(tmp_path, capsys):
    """Huge k overflows the activation statistics: a one-line error (exit 2), and the earlier analysis the
    --overwrite would have replaced is still there, whole (the results are computed before the folder is claimed)."""
    out = tmp_path / "act"
    assert main(["analyze", "activations", "--resolution", "4", "--k", "5", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["analyze", "activations", "--resolution", "4", "--k", "1e30", "--out", str(out), "--overwrite"]) == 2
    assert "the activation statistics of FINER k=1e+30 overflow" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ntk_rows_name_each_network_and_eq5_is_checked_only_with_finer(tmp_path):
    quick = ["--width", "4", "--points", "8", "--steps", "2", "--mc-samples", "100", "--k", "1"]
    assert main(["analyze", "ntk", "--models", "gauss,siren", *quick, "--out", str(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "ntk.json").read_text())
    networks = {r["model"]: r["network"] for r in rows}
    assert networks["siren"]["first_omega"] == 1.0 and networks["gauss"]["scale"] == 30.0  # its own default
    assert all(n["width"] == 4 and n["hidden_layers"] == 0 for n in networks.values())
    assert json.loads((tmp_path / "a" / "ntk_setting.json").read_text())["eq5_check"] == []
    assert "Eq. (5)" not in (tmp_path / "a" / "ntk.md").read_text()
    assert main(["analyze", "ntk", "--models", "finer", *quick, "--out", str(tmp_path / "b")]) == 0
    assert len(json.loads((tmp_path / "b" / "ntk_setting.json").read_text())["eq5_check"]) == 1


def test_the_ntk_memory_check_prices_the_largest_network(tmp_path, monkeypatch):
    """At 2048 points FINER's kernel and Jacobian take about 0.15 GiB, PE-MLP's (a first layer widened by its
    encoding) about 0.3: a budget between them refuses PE-MLP only."""
    import finer.analysis.run as R
    from finer.errors import FinerError

    monkeypatch.setattr(R, "memory_budget", lambda device: 250 * 2**20)

    class Passed(Exception):
        pass

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(R.io, "check_claim", passed)  # (the step after the memory check)
    with pytest.raises(Passed):
        R.analyze_ntk(tmp_path, models=["finer"], ks=[1.0], points=2048)
    with pytest.raises(FinerError, match="an NTK of 2048 points needs about 0.3 GiB"):
        R.analyze_ntk(tmp_path, models=["finer", "pemlp"], ks=[1.0], points=2048)
