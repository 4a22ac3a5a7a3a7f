"""Every registered model: build, shape, a two-step fit on a tiny real image, state-dict round trip."""

import dataclasses

import pytest
import torch

import finer
from finer.models import MODELS, build_model, count_parameters, make_config
from finer.tasks.image import ImageTask
from finer.train import TrainConfig, fit


@pytest.mark.parametrize("name", list(MODELS))
def test_build_and_output_shape(name):
    net = build_model(name, 2, 3, width=32, hidden_layers=2, seed=0)
    out = net(torch.rand(5, 2) * 2 - 1)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert net.method == name and isinstance(net.config, MODELS[name])


@pytest.mark.parametrize("name", list(MODELS))
def test_two_step_fit_on_a_real_image_lowers_the_loss(name, astronaut_small):
    net = build_model(name, 2, 3, width=32, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, tuple(net.config.target_range), torch.device("cpu"))
    state = fit(net, task, TrainConfig(steps=2, lr=net.config.lr, eval_every=0, log_every=1), progress=False)
    assert state.status == "complete" and len(state.history) == 2
    x, y = task.batch(0)
    with torch.no_grad():
        after = task.loss(net(x), y).item()
    assert after < state.history[0]["loss"]


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_round_trip(name):
    a = build_model(name, 3, 1, width=16, seed=1)
    b = build_model(name, 3, 1, width=16, seed=2)
    x = torch.rand(6, 3)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_same_seed_same_network():
    x = torch.rand(4, 2)
    assert torch.equal(build_model("finer", 2, 3, seed=7)(x), build_model("finer", 2, 3, seed=7)(x))


def test_paper_image_network_parameter_count():
    """The paper's 3 x 256 image network (2 -> 256, three 256 -> 256, 256 -> 3) has 198,915 parameters."""
    assert count_parameters(build_model("finer", 2, 3)) == 198_915
    wire = build_model("wire", 2, 3)
    assert wire.layers[1].linear.in_features == 181  # int(256 / sqrt 2), parameter parity


def test_first_bias_scale_sets_the_first_layer_bias_range():
    net = build_model("finer", 2, 3, width=4096, hidden_layers=0, first_bias_scale=10.0, seed=0)
    bias = net.layers[0].linear.bias
    assert 9.5 < bias.abs().max() <= 10.0
    default = build_model("finer", 2, 3, width=4096, hidden_layers=0, seed=0).layers[0].linear.bias
    assert default.abs().max() <= 2**-0.5 + 1e-6  # PyTorch's 1/sqrt(n_in) for n_in = 2


def test_scale_grad_switches_the_derivative():
    x = torch.rand(16, 2)
    grads = []
    for scale_grad in (False, True):
        net = build_model("finer", 2, 1, width=8, seed=0, scale_grad=scale_grad)
        net(x).sum().backward()
        grads.append(net.layers[0].linear.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_finer_models_is_the_listing_and_the_submodule(monkeypatch):
    import finer.models as fm

    assert fm() == finer.models() and fm.FinerConfig is make_config("finer").__class__
    assert fm.build_model is build_model and "FinerConfig" in dir(fm)
    monkeypatch.setattr("finer.models.MODELS", {"only": MODELS["finer"]})  # patches the submodule
    assert list(finer.models()) == ["only"]


def test_defaults_per_method():
    table = finer.models()
    assert table["pemlp"]["target_range"] == (0.0, 1.0)
    assert table["finer"]["target_range"] == (-1.0, 1.0)
    assert table["wire"]["lr"] == 5e-3 and table["siren"]["lr"] == 5e-4
    assert set(table) == set(MODELS)


def test_unknown_name_lists_the_choices():
    with pytest.raises(finer.ConfigError, match="unknown model 'nope'.*finer.*siren"):
        build_model("nope", 2, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"width": 0}, "width must be positive"),
        ({"width": 2.5}, "width must be an integer"),
        ({"hidden_layers": -1}, "hidden_layers must be zero or positive"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"first_omega": float("nan")}, "finite"),
        ({"target_range": (1.0, 0.0)}, "low < high"),
        ({"omega_w": 3.0}, "no option omega_w.*its options are"),
        ({"scale_grad": "no"}, "scale_grad is on or off: true or false, got 'no'"),
        ({"scale_grad": 1}, "scale_grad is on or off"),
        ({"width": True}, "width must be an integer, got True"),
        ({"hidden_layers": False}, "hidden_layers must be an integer"),
        ({"first_omega": True}, "first_omega must be a number"),
        # None only where the declared type allows it (first_bias_scale: float | None)
        ({"hidden_layers": None}, "hidden_layers must be an integer, got None"),
        ({"first_omega": None}, "first_omega must be a number, got None"),
        ({"first_bias_scale": -1.0}, "first_bias_scale must be zero or positive"),
        ({"target_range": (False, True)}, "two finite numbers"),
    ],
)
def test_bad_values_raise_clear_errors(overrides, message):
    with pytest.raises(finer.ConfigError, match=message):
        build_model("finer", 2, 3, **overrides)


@pytest.mark.parametrize("name", ["wire", "wire-finer"])
def test_a_complex_network_too_narrow_for_one_unit_is_refused(name):
    with pytest.raises(finer.ConfigError, match="width 1 leaves 0 complex units"):
        build_model(name, 2, 3, width=1)
    assert build_model(name, 2, 3, width=2, hidden_layers=1).config.hidden_width() == 1


def test_bad_feature_counts():
    with pytest.raises(finer.ConfigError, match="in_features must be a positive integer"):
        build_model("siren", 0, 3)


def test_config_is_plain_data():
    cfg = make_config("gauss-finer", width=64)
    assert dataclasses.asdict(cfg)["width"] == 64
    assert dataclasses.asdict(cfg)["first_bias_scale"] == 1.0


def test_on_off_options_of_every_method_take_only_true_or_false():
    import dataclasses

    from finer.models import MODELS

    checked = []
    for name, cls in MODELS.items():
        for f in dataclasses.fields(cls):
            if str(f.type) == "bool":
                checked.append((name, f.name))
                build_model(name, 2, 3, width=8, **{f.name: not f.default})  # the other setting builds
                with pytest.raises(finer.ConfigError, match="true or false"):
                    build_model(name, 2, 3, width=8, **{f.name: "maybe"})
    assert ("finer", "scale_grad") in checked and ("wire", "complex_parity") in checked


@pytest.mark.parametrize("name", ["finer", "gauss-finer", "wire-finer"])
def test_the_bias_range_k_reaches_the_first_layer_only(name):
    net = build_model(name, 2, 3, width=512, hidden_layers=2, first_bias_scale=10.0, seed=0)
    first, *rest = [layer.linear for layer in net.layers]
    assert 9.5 < first.bias.abs().max() <= 10.0
    for linear in rest:  # PyTorch's U(-1/sqrt(n_in), 1/sqrt(n_in)), on each part of a complex bias
        bias = torch.view_as_real(linear.bias) if linear.bias.is_complex() else linear.bias
        assert bias.abs().max() <= linear.in_features**-0.5 + 1e-6, linear


def test_finer_hidden_bias_scale_sets_the_hidden_layers_range():
    net = build_model("finer", 2, 3, width=512, hidden_layers=2, first_bias_scale=1.0, hidden_bias_scale=3.0, seed=0)
    for layer in net.layers[1:-1]:
        assert 2.9 < layer.linear.bias.abs().max() <= 3.0
    assert net.layers[-1].linear.bias.abs().max() <= 512**-0.5 + 1e-6  # the output layer keeps the default


@pytest.mark.parametrize("scale_grad", [False, True])
def test_gauss_finer_scale_grad_is_the_derivative_it_names(scale_grad):
    """scale_grad=True backpropagates through |z|+1 (the true derivative), False treats it as a constant
    (the official code): checked against the network written out by hand."""
    net = build_model("gauss-finer", 2, 1, width=8, hidden_layers=0, seed=0, scale_grad=scale_grad)
    cfg = net.config
    first, last = net.layers[0].linear, net.layers[-1].linear
    x = torch.rand(32, 2) * 2 - 1
    net(x).sum().backward()
    w = first.weight.detach().clone().requires_grad_(True)
    z = x @ w.T + first.bias.detach()
    alpha = z.abs() + 1 if scale_grad else (z.abs() + 1).detach()
    u = torch.sin(cfg.omega * alpha * z)
    by_hand = torch.exp(-(cfg.scale * u) ** 2) @ last.weight.detach().T + last.bias.detach()
    by_hand.sum().backward()
    torch.testing.assert_close(first.weight.grad, w.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale_grad", [False, True])
def test_wire_finer_scale_grad_is_the_derivative_it_names(scale_grad):
    """As for Gauss-FINER, on Wire-FINER's complex hidden layer: the network written out by hand in real
    arithmetic (real and imaginary parts warped by |re|+1 and |im|+1, the complex sine and Gabor by their
    real formulas), with |.|+1 a constant or not; its gradient of the complex weight is dL/da + i dL/db."""
    net = build_model("wire-finer", 2, 1, width=8, hidden_layers=1, seed=0, scale_grad=scale_grad)
    cfg = net.config
    first, hidden, last = (layer.linear for layer in net.layers)
    x = torch.rand(32, 2) * 2 - 1
    net(x).sum().backward()

    def alpha(t):
        return t.abs() + 1 if scale_grad else (t.abs() + 1).detach()

    def gabor(ur, ui):  # exp(i w u - |s u|^2) of u = ur + i ui: exp(-w ui - s^2 |u|^2) (cos w ur + i sin w ur)
        env = torch.exp(-cfg.omega_w * ui - cfg.scale**2 * (ur**2 + ui**2))
        return env * torch.cos(cfg.omega_w * ur), env * torch.sin(cfg.omega_w * ur)

    z = x @ first.weight.detach().T + first.bias.detach()  # real first layer
    hr, hi = gabor(torch.sin(cfg.omega * alpha(z) * z), torch.zeros_like(z))
    wr = hidden.weight.detach().real.clone().requires_grad_(True)
    wi = hidden.weight.detach().imag.clone().requires_grad_(True)
    a = hr @ wr.T - hi @ wi.T + hidden.bias.detach().real
    b = hr @ wi.T + hi @ wr.T + hidden.bias.detach().imag
    p, q = cfg.omega * alpha(a) * a, cfg.omega * alpha(b) * b
    yr, yi = gabor(torch.sin(p) * torch.cosh(q), torch.cos(p) * torch.sinh(q))  # sin(p + i q)
    lr, li = last.weight.detach().real, last.weight.detach().imag
    (yr @ lr.T - yi @ li.T + last.bias.detach().real).sum().backward()  # the real part of the output
    torch.testing.assert_close(hidden.weight.grad, torch.complex(wr.grad, wi.grad), rtol=1e-4, atol=1e-6)


def test_the_package_namespace_is_its_public_api():
    """``import finer`` shows what ``__all__`` lists (and the version, the subpackages once imported),
    not the modules its own code uses."""
    import types

    names = {n for n in vars(finer) if not n.startswith("_")}
    modules = {n for n in names if isinstance(getattr(finer, n), types.ModuleType)}
    assert names - modules <= set(finer.__all__)
    assert all(getattr(finer, n).__name__ == f"finer.{n}" for n in modules)  # subpackages only
    for name in finer.__all__:
        assert getattr(finer, name) is not None
    import subprocess
    import sys

    fresh = subprocess.run([sys.executable, "-c", "import finer; print(sorted(set(finer.__all__) - set(dir(finer))))"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "[]"  # tab completion sees the lazily loaded names before their first use


def test_numpy_scalars_are_numbers():
    """A sweep over np.arange values builds as a sweep over Python numbers does."""
    import numpy as np

    net = build_model("finer", 2, 3, width=np.int64(16), first_omega=np.float32(30), seed=0)
    assert net.config.width == 16 and type(net.config.width) is int and net.config.first_omega == 30.0
    assert build_model("siren", np.int64(3), np.int32(1), width=8).layers[0].linear.in_features == 3
    import dataclasses
    import json

    from finer.nerf_run import NeRFRunConfig
    from finer.sdf_run import SDFRunConfig
    from finer.train import TrainConfig

    for cfg in (finer.ImageRunConfig(steps=np.int64(10), seed=np.uint32(3), model_options={"width": np.int64(8)}),
                SDFRunConfig(mesh="m.obj", steps=np.int64(5), resolution=np.int16(64)),
                NeRFRunConfig(scene="s", rays=np.int64(64), lr=np.float32(1e-3)),
                TrainConfig(steps=np.int64(3), lr=np.float64(1e-3))):
        json.dumps(dataclasses.asdict(cfg))  # recorded as JSON can (config.json)
        getattr(cfg, "validate", lambda: None)()


def test_a_seeded_build_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mpa", 2, 3, width=8, hidden_layers=1, seed=0)
    assert torch.equal(torch.rand(3), expected)
    a, b = (build_model("finer", 2, 3, width=8, seed=0) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name, seed, message", [(["finer"], 0, "unknown model"), ("finer", "a", "seed must be"),
                                                 ("finer", -1, "seed must be"), ("finer", 1.5, "seed must be")])
def test_a_bad_name_or_seed_is_a_config_error(name, seed, message):
    with pytest.raises(finer.ConfigError, match=message):
        build_model(name, 2, 3, seed=seed)


def test_a_network_too_large_for_the_memory_is_refused_before_it_is_allocated():
    with pytest.raises(finer.ConfigError, match="a 3 x 300000 network of about 2.7e\\+11 parameters needs about "
                                                ".* GiB for its weights, gradients and Adam's state, more than"):
        build_model("finer", 2, 3, width=300_000)
    with pytest.raises(finer.ConfigError, match="choose a smaller width or n_freqs"):
        build_model("pemlp", 2, 3, n_freqs=10**12)
