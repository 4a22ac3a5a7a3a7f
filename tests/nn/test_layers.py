import functools

import torch

from finer.nn.activations import finer
from finer.nn.layers import Layer
from finer.nn.mlp import CoordinateMLP
from finer.nn.encodings import IdentityEncoding


def test_layer_applies_injected_activation():
    layer = Layer(2, 5, functools.partial(finer, omega=30.0), weight_init="siren", init_omega=30.0, is_first=True,
                  bias_range=3.0, generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 2)
    z = layer.linear(x)
    assert torch.allclose(layer(x), torch.sin(30 * (z.abs() + 1) * z))
    assert layer.linear.bias.abs().max() <= 3.0 and layer.linear.bias.abs().max() > 1.0
    assert "finer(omega=30.0" in repr(layer)


def test_complex_output_is_reduced_to_real_part():
    layers = [Layer(2, 4, lambda z: torch.exp(1j * z)), Layer(4, 1, complex_weights=True)]
    out = CoordinateMLP(IdentityEncoding(2), layers)(torch.rand(3, 2))
    assert out.dtype == torch.float32 and out.shape == (3, 1)
