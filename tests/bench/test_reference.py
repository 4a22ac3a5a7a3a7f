"""The library's FINER equals the eager reference of the official code, values and gradients."""

import torch

from finer.bench.reference import OfficialFiner
from finer.models import build_model


def test_library_finer_matches_the_official_formulation():
    ours = build_model("finer", 2, 3, width=32, hidden_layers=2, seed=0)
    ref = OfficialFiner(2, 3, width=32, hidden_layers=2)
    linears = [m for m in ref.net.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer, lin in zip(ours.layers, linears):
            lin.weight.copy_(layer.linear.weight)
            lin.bias.copy_(layer.linear.bias)
    x = torch.rand(50, 2) * 2 - 1
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for layer, lin in zip(ours.layers, linears):
        torch.testing.assert_close(layer.linear.weight.grad, lin.weight.grad)
