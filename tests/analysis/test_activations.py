import numpy as np
import pytest
import torch

from finer.analysis.activations import layer_statistics
from finer.analysis.neurons import neuron_grid, radial_spectrum
from finer.models import build_model


@pytest.mark.parametrize("scale_grad", [False, True])
def test_local_frequency_matches_finite_differences(scale_grad):
    """The frequency in x is the function's: the same whether training detaches |z|+1 (the default, as the
    official code) or not, and equal to omega (2|z|+1) |grad_x z| with the gradient by central differences."""
    net = build_model("finer", 2, 3, width=8, hidden_layers=2, seed=0, first_bias_scale=2.0,
                      scale_grad=scale_grad).double()
    coords = (torch.rand(5, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    stats = layer_statistics(net, coords, layers=3)
    w = net.layers[0].linear.weight
    z1 = net.layers[0].linear(coords)
    expected1 = 30 * (2 * z1.abs() + 1) * w.norm(dim=1)
    torch.testing.assert_close(stats[0]["freq_x"], expected1.detach().flatten())

    def pre_activation(x, depth):  # z of layer ``depth`` (0 = first)
        h = x
        for layer in list(net.layers)[:depth]:
            h = layer(h)
        return net.layers[depth].linear(h)

    eps = 1e-6
    with torch.no_grad():
        for depth in (1, 2):
            z = pre_activation(coords, depth)
            grad = torch.stack([(pre_activation(coords + eps * e, depth) - pre_activation(coords - eps * e, depth))
                                / (2 * eps) for e in torch.eye(2, dtype=torch.float64)], -1)
            expected = 30 * (2 * z.abs() + 1) * grad.norm(dim=-1)
            torch.testing.assert_close(stats[depth]["freq_x"], expected.flatten(), rtol=1e-6, atol=1e-6)


def test_radial_spectrum_peaks_at_the_sinusoid_frequency():
    h = w = 32
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    outputs = np.stack([np.sin(2 * np.pi * 5 * xx / w), np.cos(2 * np.pi * 5 * yy / h)])
    freq, power = radial_spectrum(outputs)
    assert freq[np.argmax(power)] == 5
    # summed a unit at a time, as over all at once
    mixed = np.random.default_rng(0).standard_normal((5, 12, 10))
    np.testing.assert_allclose(radial_spectrum(mixed, chunk=2)[1], radial_spectrum(mixed, chunk=5)[1], rtol=1e-12)


def test_neuron_grid_tiles_normalised_images():
    grid = neuron_grid(np.random.default_rng(0).normal(size=(5, 4, 4)), count=5)
    assert grid.shape == (3 * 6, 3 * 6) and grid.min() >= 0 and grid.max() <= 1


def test_statistics_refuse_other_activations_and_see_through_fused_layers():
    import finer
    from finer.analysis.activations import layer_statistics
    from finer.nn.fused import fuse
    from finer.tasks.image import coordinate_grid

    coords = coordinate_grid(8, 8)
    for name in ("siren", "pemlp", "gauss-finer"):  # FINER's omega(2|z|+1) is not their local frequency
        with pytest.raises(finer.ConfigError, match="measures FINER's local frequency"):
            layer_statistics(finer.build_model(name, 2, 1, width=8, hidden_layers=1, seed=0), coords, layers=1)
    net = finer.build_model("finer", 2, 1, width=8, hidden_layers=1, seed=0)
    with pytest.raises(finer.ConfigError, match="layers must be 1 to 2"):
        layer_statistics(net, coords, layers=3)
    plain = layer_statistics(net, coords, layers=2)
    fuse(net, compile=False)
    fused = layer_statistics(net, coords, layers=2)
    for a, b in zip(plain, fused):
        assert all(torch.allclose(a[k], b[k]) for k in a)


def test_statistics_of_a_finer_first_layer_before_other_layers():
    """FINER's first layer, SIREN after it (a hand-built network, its activation the bare function at
    omega 30): the first layer is measured, the second refused."""
    import functools

    import finer
    from finer.nn import activations as A
    from finer.nn.encodings import IdentityEncoding
    from finer.nn.layers import Layer
    from finer.nn.mlp import CoordinateMLP

    torch.manual_seed(0)
    net = CoordinateMLP(IdentityEncoding(2), [Layer(2, 8, A.finer, weight_init="siren", is_first=True, bias_range=2.0),
                                              Layer(8, 8, functools.partial(A.sine, omega=30.0)), Layer(8, 1)])
    coords = torch.rand(5, 2) * 2 - 1
    (stats,) = layer_statistics(net, coords, layers=1)
    z = net.layers[0].linear(coords)
    expected = 30 * (2 * z.abs() + 1) * net.layers[0].linear.weight.norm(dim=1)  # the function's omega, 30
    torch.testing.assert_close(stats["freq_x"], expected.detach().flatten())
    with pytest.raises(finer.ConfigError, match="layer 2 of this 'CoordinateMLP' network has another activation"):
        layer_statistics(net, coords, layers=2)
