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


def test_complex_weights_follow_dtype_casts():
    """PyTorch's ``.double()`` leaves complex parameters complex64 (the next product then fails) and
    ``.to(torch.float64)`` drops their imaginary part; WIRE's layers cast them as complex128."""
    import warnings

    from finer.models import build_model
    from finer.nn.stacked import StackedMLP

    model = build_model("wire", 2, 1, width=16, hidden_layers=1, seed=0)
    x = torch.rand(20, 2)
    y32, weight = model(x), model.layers[1].linear.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "casting complex values to real discards the imaginary part"
        model.to(torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64, torch.complex128}
    assert torch.equal(model.layers[1].linear.weight.to(torch.complex64), weight)
    assert torch.allclose(model(x.double()), y32.double(), atol=1e-4)
    # float64 makes finite differences meaningful: the complex chain's gradients are right
    assert torch.autograd.gradcheck(model, x[:4].double().requires_grad_())
    model.float()
    assert torch.equal(model.layers[1].linear.weight, weight) and model(x).dtype == torch.float32
    model.half()  # no complex half product: the complex weights keep their values
    assert torch.equal(model.layers[1].linear.weight, weight) and model.layers[0].linear.weight.dtype == torch.half
    model.float()
    stack = StackedMLP([model, build_model("wire", 2, 1, width=16, hidden_layers=1, seed=1)]).double()
    assert stack.weights[1].dtype == torch.complex128
    assert torch.allclose(stack(x.double())[0], model.double()(x.double()))


def test_a_complex_activation_before_real_weights_is_named():
    import pytest

    from finer.errors import FinerError
    from finer.nn.activations import gabor

    net = CoordinateMLP(IdentityEncoding(2), [Layer(2, 8, gabor), Layer(8, 1)])  # the second needs complex weights
    with pytest.raises(FinerError, match="build the layers after it with complex_weights=True"):
        net(torch.rand(4, 2))
    fixed = CoordinateMLP(IdentityEncoding(2), [Layer(2, 8, gabor), Layer(8, 1, complex_weights=True)])
    assert fixed(torch.rand(4, 2)).dtype == torch.float32
