"""Fitting K images as one stacked network gives each image the result of its own fit."""

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

import finer
from finer.cli import main
from finer.errors import FinerError
from finer.nn.stacked import StackedMLP


@pytest.fixture
def folder(tmp_path, astronaut_small):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, arr in enumerate([astronaut_small, astronaut_small[::-1], astronaut_small[:, ::-1]]):
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(d / f"{i:02d}.png")
    return d


def test_stacked_forward_is_each_model_forward():
    for name in ("finer", "wire", "pemlp"):
        models = [finer.build_model(name, 2, 3, width=8, hidden_layers=1, seed=s) for s in range(3)]
        x = torch.rand(50, 2) * 2 - 1
        out = StackedMLP(models)(x)
        for k, m in enumerate(models):
            torch.testing.assert_close(out[k], m(x), rtol=1e-5, atol=1e-6)
    from finer.errors import FinerWarning
    from finer.nn.fused import fuse

    with pytest.warns(FinerWarning, match="fuse its networks, then stack them"):
        assert fuse(StackedMLP(models)) == 0
    with pytest.raises(FinerError, match="a stack of 3 networks takes coordinates .* got \\(2, 50, 2\\)"):
        StackedMLP(models)(torch.rand(2, 50, 2))  # one set of points a network, for 2 of the 3


def test_only_networks_with_the_same_activations_are_stacked():
    """The stack runs the first network's activations for all: a network with other options would get a
    wrong output silently. Networks that differ only in their initialisation (FINER's k) do stack."""
    from finer.nn.fused import fuse

    def build(name="finer", **options):
        return finer.build_model(name, 2, 3, width=8, hidden_layers=1, seed=len(options), **options)

    plain, fused, other_k = build(), build(), build(first_bias_scale=5.0)
    fuse(fused, compile=False)
    x = torch.rand(20, 2) * 2 - 1
    out = StackedMLP([plain, fused, other_k])(x)
    torch.testing.assert_close(out[2], other_k(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(FinerError, match=r"activation of layer 2 \(finer\(omega=30.0, detach=True\) and "
                                         r"finer\(omega=5.0, detach=True\)\)"):
        StackedMLP([plain, build(hidden_omega=5.0)])
    with pytest.raises(FinerError, match="activation of layer 1 .* and sine"):
        StackedMLP([plain, build("siren")])
    sc = [build("sc-mlp"), build("sc-mlp", omega_max=50.0)]  # a module activation, its frequencies a buffer
    with pytest.raises(FinerError, match="SineComposition and SineComposition"):
        StackedMLP(sc)
    from finer.batch_runs import fit_stacked
    from finer.train import TrainConfig

    images = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(FinerError, match="differ in their lr"):  # one optimiser for all
        fit_stacked([plain, build(lr=1e-3)], images, TrainConfig(steps=1), torch.device("cpu"), progress=False)
    stack = StackedMLP([sc[0], build("sc-mlp")]).to(torch.bfloat16)  # the buffer converts with the stack
    assert stack(x.to(torch.bfloat16)).dtype == torch.bfloat16  # (a float32 one would promote the output)


@pytest.mark.parametrize("fused", ["off", "eager"])  # plain layers; fused layers (batched in the stack)
def test_batched_fit_matches_one_by_one(folder, tmp_path, capsys, fused):
    common = ["--steps", "15", "--width", "16", "--hidden-layers", "1", "--quiet", "--fused", fused]
    assert main(["fit", "image", str(folder), "--batch-signals", "2", "--out", str(tmp_path / "b"), *common]) == 0
    batched = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert batched["images"] == 3 and batched["batch_signals"] == 2  # groups of 2 and 1
    for row in batched["runs"]:
        stem = row["image"][:-4]
        assert json.loads((tmp_path / "b" / stem / "metrics.json").read_text())["fused"] == fused
        assert main(["fit", "image", str(folder / row["image"]), "--out", str(tmp_path / stem), "--eval-every", "0",
                     *common]) == 0
        single = json.loads((tmp_path / stem / "metrics.json").read_text())
        assert row["psnr"] == pytest.approx(single["psnr"], abs=1e-3), stem
    # each image's checkpoint stands alone
    assert main(["render", str(tmp_path / "b" / "01" / "checkpoint.pt"), "--scale", "2"]) == 0
    assert Image.open(tmp_path / "b" / "01" / "render_x2.png").size == (48, 48)
    capsys.readouterr()
    assert main(["fit", "image", str(folder), "--batch-signals", "2", "--out", str(tmp_path / "b"), "--overwrite",
                 *common]) == 0  # the render is left, and said to be of the earlier network
    assert f"warning: render_x2.png in {tmp_path / 'b' / '01'} was made from" in capsys.readouterr().err


@pytest.mark.parametrize("stacked", [[], ["--batch-signals", "2"]], ids=["one-by-one", "stacked"])
def test_a_folder_fit_keeps_going_past_an_image_that_diverges(folder, tmp_path, capsys, monkeypatch, stacked):
    """The images that diverge are results kept at their last good step; the others finish; exit 3."""
    import finer.batch_runs
    import finer.runs

    calls = []

    class BlowsUp:  # the first fit's task (an image, or a stacked group): its loss explodes at step 3
        def __init__(self, task):
            self.task, self.losses = task, 0

        def __getattr__(self, name):
            return getattr(self.task, name)

        def loss(self, pred, target):
            self.losses += 1
            return self.task.loss(pred, target) * (1e12 if self.losses == 3 else 1)

    def fit(model, task, *args, real, **kwargs):
        calls.append(task)
        return real(model, BlowsUp(task) if len(calls) == 1 else task, *args, **kwargs)

    for module in (finer.batch_runs, finer.runs):
        monkeypatch.setattr(module, "fit", functools.partial(fit, real=module.fit))
    out = tmp_path / "d"
    assert main(["fit", "image", str(folder), "--steps", "6", "--width", "8", "--hidden-layers", "1",
                 "--eval-every", "0", "--out", str(out), *stacked]) == 3
    printed = capsys.readouterr()  # stdout holds the summary alone; the per-image lines go to stderr
    err = printed.err
    assert json.loads(printed.out)["images"] == 3 and "00.png" in err
    summary = json.loads((out / "summary.json").read_text())
    diverged = ["00.png", "01.png"] if stacked else ["00.png"]
    assert summary["diverged"] == diverged and summary["images"] == 3
    assert [r["status"] for r in summary["runs"]] == ["diverged" if r["image"] in diverged else "complete"
                                                      for r in summary["runs"]]
    assert f"diverged on {len(diverged)} of 3 images" in err and "the others finished" in err
    for name in diverged:
        metrics = json.loads((out / name[:-4] / "metrics.json").read_text())
        assert metrics["status"] == "diverged" and metrics["steps"] < 6
        assert (out / name[:-4] / "checkpoint.pt").is_file()
    assert json.loads((out / "02" / "metrics.json").read_text())["steps"] == 6


def test_batched_fit_errors(folder, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(folder / "odd.png")
    assert main(["fit", "image", str(folder), "--batch-signals", "2", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "need images of one shape" in err and "height x width x channels: " in err
    assert "odd.png 10x12x3" in err and "channels differ" not in err
    assert "--crop HxW" in err and "drop --batch-signals" in err
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "odd.png")  # grey among RGB: no crop helps
    assert main(["fit", "image", str(folder), "--size", "12", "--batch-signals", "2", "--out", str(tmp_path / "y"),
                 "--quiet"]) == 2
    assert "their channels differ too" in capsys.readouterr().err
    with pytest.raises(FinerError, match="learnable activations"):
        StackedMLP([finer.build_model("metasin", 2, 3, width=8, hidden_layers=1)] * 2)
    assert main(["fit", "image", str(folder), "--model", "metasin", "--batch-signals", "2",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert "drop --batch-signals to fit the images one by one" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main(["fit", "image", str(folder), "--batch-size", "64", "--batch-signals", "2", "--out",
                 str(tmp_path / "b"), "--quiet"]) == 2
    assert "full batches" in capsys.readouterr().err
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(folder / "00.jpg")
    assert main(["fit", "image", str(folder), "--size", "12", "--out", str(tmp_path / "j"), "--quiet"]) == 2
    assert "00.jpg and 00.png: images whose names differ only by extension or case" in capsys.readouterr().err
    assert main(["fit", "image", str(folder / "00.png"), "--batch-signals", "2", "--quiet"]) == 2
    assert "needs a folder" in capsys.readouterr().err


@pytest.mark.parametrize("stack", [[], ["--batch-signals", "2"]], ids=["one-by-one", "stacked"])
def test_a_refit_with_bad_options_keeps_the_earlier_fit(folder, tmp_path, capsys, stack):
    out = tmp_path / "d"
    base = ["fit", "image", str(folder), "--steps", "2", "--width", "8", "--hidden-layers", "1", "--eval-every", "0",
            "--out", str(out), "--quiet", *stack]
    assert main(base) == 0
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for bad, message in ((["--option", "bogus=1"], "has no option bogus"),
                         (["--cuda-graph", "--device", "cpu"], "a CUDA graph needs a CUDA device")):
        assert main([*base, "--overwrite", *bad]) == 2
        assert message in capsys.readouterr().err
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == kept  # nothing deleted


def test_a_stacked_fit_says_tf32_does_nothing_on_a_cpu_as_a_single_fit_does(folder, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["fit", "image", str(folder), "--batch-signals", "3", "--width", "8", "--hidden-layers", "1",
                 "--steps", "2", "--precision", "tf32", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert "warning: tf32 changes only CUDA matrix products" in capsys.readouterr().err
    assert "float32, as fp32 does" in json.loads((out / "00" / "metrics.json").read_text())["precision_note"]


def test_a_stacked_folder_fit_decodes_each_image_once(folder, tmp_path, monkeypatch):
    """The images read to check the folder before any work (shapes, memory) are the ones fitted."""
    import finer.tasks.image

    calls = []
    load = finer.tasks.image.load_image
    monkeypatch.setattr(finer.tasks.image, "load_image", lambda path, **kw: calls.append(path) or load(path, **kw))
    assert main(["fit", "image", str(folder), "--batch-signals", "2", "--width", "8", "--hidden-layers", "1",
                 "--steps", "2", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert sorted(p.name for p in calls) == ["00.png", "01.png", "02.png"]


def test_a_stack_too_large_for_the_memory_is_refused_before_any_work(folder, tmp_path, capsys, monkeypatch):
    import finer.tasks.image

    one = finer.tasks.image.full_batch_bytes(24 * 24, 8, 2, False)  # the folder's 24x24 images, 8 wide, 2 layers
    monkeypatch.setattr(finer.tasks.image, "memory_budget", lambda device: int(2.5 * one))
    out = tmp_path / "d"
    assert main(["fit", "image", str(folder), "--batch-signals", "3", "--width", "8", "--hidden-layers", "1",
                 "--steps", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "3 stacked full-batch fits of 24x24 images need about" in err and "--batch-signals 2 fits" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["finer", "gauss"])
def test_stacked_fused_layers_keep_outputs_and_gradients(name):
    """Fused stacked layers (batched product, bias + kernel in one pass) against the plain stacked path."""
    from finer.nn.fused import fuse

    x = torch.rand(60, 2, dtype=torch.float64) * 2 - 1  # float64: float32 sums in another order differ
    results = []                                          # by more than any fixed tolerance at omega = 30
    for fused in (False, True):
        models = [finer.build_model(name, 2, 3, width=16, hidden_layers=2, seed=s).double() for s in range(3)]
        if fused:
            assert all(fuse(m, compile=True) == 3 for m in models)
        stacked = StackedMLP(models)
        assert all((f is not None) == fused for f in stacked.fused_forwards[:-1])
        y = stacked(x)
        weights = torch.arange(1.0, 4.0, dtype=torch.float64)  # a different weight per network
        (y.square().mean(dim=(1, 2)) * weights).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in stacked.parameters()]))
    (y0, g0), (y1, g1) = results
    assert y1.shape == (3, 60, 3)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item())


def test_a_folder_of_a_method_that_cannot_be_stacked_is_fitted_one_by_one(folder, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(folder / "odd.png")  # sizes may differ here
    out = tmp_path / "m"
    common = ["--steps", "4", "--width", "8", "--hidden-layers", "1", "--quiet"]
    assert main(["fit", "image", str(folder), "--model", "metasin", "--out", str(out), *common]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["batch_signals"] == 1
    single = tmp_path / "single"
    assert main(["fit", "image", str(folder / "01.png"), "--model", "metasin", "--out", str(single), *common]) == 0
    row = next(r for r in summary["runs"] if r["image"] == "01.png")
    assert row["psnr"] == json.loads((single / "metrics.json").read_text())["psnr"]  # the same single fit
    assert json.loads((out / "odd" / "metrics.json").read_text())["image_width"] == 12


def test_a_folder_without_batch_signals_is_fitted_one_by_one(folder, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "odd.png")  # another size, and grey
    out = tmp_path / "f"
    assert main(["fit", "image", str(folder), "--steps", "3", "--width", "8", "--hidden-layers", "1", "--quiet",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["batch_signals"] == 1
    odd = json.loads((out / "odd" / "metrics.json").read_text())
    assert (odd["image_height"], odd["image_width"], odd["image_channels"]) == (10, 12, 1)
    for name in ("odd", "00"):  # every image a complete single run, resumable on its own
        assert all((out / name / f).is_file() for f in ("config.json", "checkpoint.pt", "curve.csv")), name
    # resuming one of them updates its row of the folder's summary and the totals
    capsys.readouterr()
    assert main(["resume", str(out / "00"), "--steps", "40", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == str(out / "summary.json")
    resumed = json.loads((out / "00" / "metrics.json").read_text())
    after = json.loads((out / "summary.json").read_text())
    row = next(r for r in after["runs"] if r["image"] == "00.png")
    assert (row["psnr"], row["steps"], "resumed" in row) == (resumed["psnr"], 40, True) and row["psnr"] > 0
    assert row["psnr"] != next(r for r in summary["runs"] if r["image"] == "00.png")["psnr"]
    assert after["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in after["runs"]]))
    assert after["train_seconds"] == pytest.approx(sum(r["seconds"] for r in after["runs"]))
    assert after["steps"] == 3 and after["images"] == 4  # the folder's protocol; one row says it differs
    import os

    here = os.getcwd()
    os.chdir(out / "odd")  # the run given as "."
    try:
        assert main(["resume", ".", "--steps", "6", "--quiet"]) == 0
    finally:
        os.chdir(here)
    row = next(r for r in json.loads((out / "summary.json").read_text())["runs"] if r["image"] == "odd.png")
    assert row["steps"] == 6 and "resumed" in row


def test_a_resume_of_a_folder_image_stopped_again_updates_its_row(folder, tmp_path, capsys):
    """Ctrl-C during `finer resume OUT/IMAGE`: the image's row of summary.json says interrupted, at the step
    and score its folder now holds (it kept the earlier, finished numbers)."""
    from tests.test_train import ctrl_c_at_step

    out = tmp_path / "f"
    assert main(["fit", "image", str(folder), "--steps", "3", "--width", "8", "--hidden-layers", "1", "--quiet",
                 "--out", str(out)]) == 0
    with ctrl_c_at_step(10):
        assert main(["resume", str(out / "01"), "--steps", "40", "--quiet"]) == 130
    metrics = json.loads((out / "01" / "metrics.json").read_text())
    row = next(r for r in json.loads((out / "summary.json").read_text())["runs"] if r["image"] == "01.png")
    assert (row["status"], row["steps"], row["psnr"]) == ("interrupted", 11, metrics["psnr"]) and metrics["steps"] == 11


def test_resuming_an_image_of_a_folder_whose_summary_holds_an_infinite_psnr(folder, tmp_path, capsys):
    """A constant image fitted exactly has PSNR inf, stored as "inf" in the summary: a resume of another image
    refreshes the totals all the same (the mean is then inf)."""
    out = tmp_path / "f"
    assert main(["fit", "image", str(folder), "--steps", "3", "--width", "8", "--hidden-layers", "1", "--quiet",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    summary["runs"][1]["psnr"] = "inf"
    (out / "summary.json").write_text(json.dumps(summary))
    assert main(["resume", str(out / "00"), "--steps", "5", "--quiet"]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["mean_psnr"] == "inf" and after["runs"][0]["steps"] == 5 and after["runs"][1]["psnr"] == "inf"


def test_ctrl_c_in_a_folder_fit_exits_130_and_says_what_was_kept(folder, tmp_path, capsys, monkeypatch):
    import finer.batch_runs
    from finer.train import FitState

    monkeypatch.setattr(finer.batch_runs, "fit", lambda *a, **k: FitState(step=3, status="interrupted",
                                                                           message="interrupted at step 3 of 15"))
    assert main(["fit", "image", str(folder), "--steps", "15", "--width", "8", "--batch-signals", "2",
                 "--out", str(tmp_path / "i"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3 of 15 while fitting 00.png" in err and "no image was finished" in err
    assert "does not resume" in err and not (tmp_path / "i" / "summary.json").exists()


def test_a_folder_fit_over_a_single_run_leaves_none_of_its_files(folder, tmp_path):
    out = tmp_path / "o"
    common = ["--steps", "2", "--width", "8", "--hidden-layers", "1", "--quiet", "--out", str(out)]
    assert main(["fit", "image", str(folder / "00.png"), *common]) == 0
    assert main(["fit", "image", str(folder), "--overwrite", *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00", "01", "02", "summary.json"]


@pytest.mark.parametrize("stack", [[], ["--batch-signals", "2"]], ids=["one-by-one", "stacked"])
def test_a_refit_with_overwrite_leaves_no_earlier_image_and_deletes_no_input(folder, tmp_path, capsys, stack):
    """An image the earlier fit had and this one does not: its folder goes (it would pass for this fit's).
    An input named like a file the fit writes in --out: refused, not deleted."""
    images, out = folder, tmp_path / "o"
    common = ["--steps", "2", "--width", "8", "--hidden-layers", "1", "--quiet", *stack]
    assert main(["fit", "image", str(images), "--out", str(out), *common]) == 0
    assert (out / "02" / "metrics.json").is_file()
    (images / "02.png").unlink()
    assert main(["fit", "image", str(images), "--out", str(out), "--overwrite", *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00", "01", "summary.json"]
    earlier = out / "01"  # refitting an earlier image's pictures: its folder holds this fit's inputs
    assert main(["fit", "image", str(earlier), "--out", str(out), "--overwrite", *common[:6]]) == 0
    assert (earlier / "reconstruction.png").is_file() and (out / "reconstruction" / "metrics.json").is_file()
    assert not (out / "00").exists()  # the earlier fit's other image: gone
    (out / "reconstruction").rename(out / "mine")
    (out / "reconstruction").symlink_to(out / "mine")  # a link under an earlier image's name: not followed
    assert main(["fit", "image", str(images), "--out", str(out), "--overwrite", *common]) == 0
    assert (out / "mine" / "metrics.json").is_file() and not (out / "error_map").exists()
    linked = tmp_path / "o2"  # an earlier image's folder whose picture is a link to this fit's input
    (linked / "b").mkdir(parents=True)
    (linked / "b" / "reconstruction.png").symlink_to(images / "00.png")
    (linked / "summary.json").write_text(json.dumps({"runs": [{"image": "b.png"}]}))
    assert main(["fit", "image", str(linked / "b"), "--out", str(linked), "--overwrite", *common]) == 0
    assert (linked / "b" / "reconstruction.png").is_symlink()
    (images / "reconstruction.png").write_bytes((images / "00.png").read_bytes())
    capsys.readouterr()
    assert main(["fit", "image", str(images), "--out", str(images), "--overwrite", *common]) == 2
    assert "is the reconstruction.png this run writes" in capsys.readouterr().err
    assert (images / "reconstruction.png").is_file()


def test_a_fused_stack_pickles_as_the_plain_one():
    import io

    from finer.nn.fused import fuse

    models = [finer.build_model("finer", 2, 3, width=8, hidden_layers=1, seed=s) for s in range(2)]
    for m in models:
        fuse(m, compile=False)
    stacked = StackedMLP(models)
    assert any(f is not None for f in stacked.fused_forwards)
    buffer = io.BytesIO()
    torch.save(stacked, buffer)
    buffer.seek(0)
    back = torch.load(buffer, weights_only=False)
    x = torch.rand(10, 2) * 2 - 1
    torch.testing.assert_close(back(x), stacked(x), rtol=1e-5, atol=1e-6)
    assert all(f is None for f in back.fused_forwards)


def test_render_refuses_to_write_over_the_image_a_folder_fit_fitted(folder, tmp_path, capsys):
    """A stacked folder fit's image folders have no config.json: the image is known from metrics.json."""
    out = tmp_path / "out"
    assert main(["fit", "image", str(folder), "--batch-signals", "3", "--steps", "2", "--width", "8", "--out",
                 str(out), "--quiet"]) == 0
    before = (folder / "00.png").read_bytes()
    capsys.readouterr()
    assert main(["render", str(out / "00"), "--scale", "1", "--out", str(folder / "00.png")]) == 2
    assert "is the image this run was fitted to" in capsys.readouterr().err
    assert (folder / "00.png").read_bytes() == before
    other = (out / "01" / "reconstruction.png").read_bytes()  # another image's run (its metrics.json says so)
    assert main(["render", str(out / "00"), "--scale", "1", "--out", str(out / "01" / "reconstruction.png")]) == 2
    assert "is a file of an image run in" in capsys.readouterr().err
    assert (out / "01" / "reconstruction.png").read_bytes() == other
    assert main(["render", str(out / "00"), "--scale", "1", "--out", str(out / "01" / "render_x1.png")]) == 0
