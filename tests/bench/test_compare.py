"""Per-image comparisons of a finished grid (`finer bench compare`)."""

import json

import pytest

from finer.bench import compare
from finer.cli import main
from finer.errors import FinerError


@pytest.fixture
def grid(tmp_path):
    def run(image, model, psnr):
        return {"image": image, "model": model, "seed": 0, "psnr": psnr}

    runs = [run("a", "finer", 30.0), run("a", "siren", 29.0), run("a", "gauss", 20.0),
            run("b", "finer", 25.0), run("b", "siren", 26.5), run("b", "gauss", 20.0),
            run("c", "finer", 33.0), run("c", "siren", 31.0)]  # gauss did not run c
    (tmp_path / "results.json").write_text(json.dumps({"protocol": {}, "runs": runs}))
    return tmp_path


def test_pairs_and_lead_by_hand(grid):
    table = compare.psnr_table(grid)
    stats = compare.pair(table, "finer", "siren")
    assert stats["pairs"] == 3 and stats["ahead"] == 2
    assert stats["mean"] == pytest.approx((1.0 - 1.5 + 2.0) / 3) and stats["min"] == -1.5 and stats["max"] == 2.0
    assert compare.pair(table, "siren", "gauss")["pairs"] == 2  # only the images both ran
    lead = compare.lead(table, "finer")  # over the images every method ran: a and b
    assert (lead["pairs"], lead["ahead"], lead["min"], lead["max"]) == (2, 1, -1.5, 1.0)


def test_cli_prints_text_or_json(grid, capsys):
    assert main(["bench", "compare", str(grid), "finer:siren", "--lead", "finer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["finer - siren: mean +0.50 dB, range -1.50 to +2.00 dB, ahead on 2 of 3",
                     "finer - best other: mean -0.25 dB, range -1.50 to +1.00 dB, ahead on 1 of 2"]
    assert main(["bench", "compare", str(grid / "results.json"), "gauss:siren", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ahead"] == 0


def test_pairs_may_follow_an_option(grid, capsys):
    assert main(["bench", "compare", str(grid), "--lead", "finer", "finer:siren", "--json", "siren:gauss"]) == 0
    assert [json.loads(line)["pairs"] for line in capsys.readouterr().out.splitlines()] == [3, 2, 2]
    with pytest.raises(SystemExit):  # an unknown option is still refused
        main(["bench", "compare", str(grid), "--lead", "finer", "finer:siren", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["finer:wire"], "not in these results; they have: finer, gauss, siren"),
    (["finer"], "a pair is written A:B"),
    (["finer:finer"], "finer:finer: a method compared with itself"),
    ([], "at least one pair"),
])
def test_cli_errors(grid, capsys, args, message):
    assert main(["bench", "compare", str(grid), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_or_foreign_results(tmp_path):
    with pytest.raises(FinerError, match="no grid results"):
        compare.psnr_table(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(FinerError, match="not a grid's results.json"):
        compare.psnr_table(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"runs": [{"shape": "ball", "model": "finer", "chamfer": 1e-4,
                                                                "iou": 0.9}]}))  # as `bench sdf` writes it
    with pytest.raises(FinerError, match="holds the shapes of `finer bench sdf`"):
        compare.psnr_table(tmp_path)


@pytest.mark.parametrize("damage, message", [
    ({"psnr": "high"}, "run 1: psnr 'high' is not a number"), ({"psnr": [1]}, "run 1: psnr \\[1\\] is not a number"),
    ({"model": 5}, "run 1: model 5 is not a name"), ({"image": None}, "run 1: image None is not a name")])
def test_damaged_runs_are_named_not_a_python_error(grid, capsys, damage, message):
    data = json.loads((grid / "results.json").read_text())
    data["runs"][0].update(damage)
    (grid / "results.json").write_text(json.dumps(data))
    with pytest.raises(FinerError, match=message):
        compare.psnr_table(grid)
    del data["runs"][0]["model"]
    data["runs"][1] = 7
    (grid / "results.json").write_text(json.dumps(data))
    assert main(["bench", "compare", str(grid), "finer:siren"]) == 2
    assert "run 1 is not a run record of a grid (it has no model)" in capsys.readouterr().err


def test_a_width_sweep_compares_every_width_and_skips_runs_without_a_psnr(tmp_path, capsys):
    def run(width, model, psnr):
        return {"image": "a", "model": model, "seed": 0, "width": width, "psnr": psnr}

    runs = [run(4, "finer", 20.0), run(4, "siren", 18.0), run(8, "finer", 22.0), run(8, "siren", 23.0),
            run(16, "finer", None), run(16, "siren", 25.0)]  # finer diverged at width 16 before any PSNR
    (tmp_path / "width.json").write_text(json.dumps({"protocol": {}, "runs": runs}))
    assert main(["bench", "compare", str(tmp_path), "finer:siren"]) == 0
    assert capsys.readouterr().out.strip() == "finer - siren: mean +0.50 dB, range -1.00 to +2.00 dB, ahead on 1 of 2"


def test_an_exact_fit_stored_as_inf_compares(tmp_path):
    """An exact fit's PSNR is stored as the string "inf" (strict JSON); it compares as infinity."""
    runs = [{"image": "a", "model": "finer", "seed": 0, "psnr": "inf"},
            {"image": "a", "model": "siren", "seed": 0, "psnr": 30.0},
            {"image": "b", "model": "finer", "seed": 0, "psnr": 20.0},
            {"image": "b", "model": "siren", "seed": 0, "psnr": 25.0}]
    (tmp_path / "results.json").write_text(json.dumps({"protocol": {}, "runs": runs}))
    stats = compare.pair(compare.psnr_table(tmp_path), "finer", "siren")
    assert (stats["pairs"], stats["ahead"], stats["max"], stats["min"]) == (2, 1, float("inf"), -5.0)


def test_two_exact_fits_tie(tmp_path):
    """Both methods "inf" on an image: a tie (0 dB), not NaN spoiling the mean, the range and the JSON."""
    runs = [{"image": "a", "model": "finer", "seed": 0, "psnr": "inf"},
            {"image": "a", "model": "siren", "seed": 0, "psnr": "inf"},
            {"image": "b", "model": "finer", "seed": 0, "psnr": 27.0},
            {"image": "b", "model": "siren", "seed": 0, "psnr": 25.0}]
    (tmp_path / "results.json").write_text(json.dumps({"protocol": {}, "runs": runs}))
    table = compare.psnr_table(tmp_path)
    stats = compare.pair(table, "finer", "siren")
    assert (stats["pairs"], stats["ahead"], stats["mean"], stats["min"], stats["max"]) == (2, 1, 1.0, 0.0, 2.0)
    assert compare.lead(table, "finer")["mean"] == 1.0
