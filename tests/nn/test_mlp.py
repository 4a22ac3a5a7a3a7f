"""The coordinate MLP and its stack refuse coordinates they cannot take, saying what to pass."""

import numpy as np
import pytest
import torch

from finer import build_model
from finer.errors import FinerError
from finer.nn.stacked import StackedMLP


@pytest.mark.parametrize("name", ["finer", "pemlp", "wire"])
def test_model_refuses_coordinates_it_cannot_take(name):
    torch.manual_seed(0)
    model = build_model(name, 2, 3, hidden_layers=1, width=8)
    stack = StackedMLP([model, build_model(name, 2, 3, hidden_layers=1, width=8)])
    for net in (model, stack):
        with pytest.raises(FinerError, match=r"must be a torch.Tensor, got numpy.ndarray .*torch.as_tensor"):
            net(np.zeros((4, 2), np.float32))
        with pytest.raises(FinerError, match=r"2 values in the last axis \(\.\.\., 2\), got shape \(4, 5\)"):
            net(torch.zeros(4, 5))
        with pytest.raises(FinerError, match="must be floating point, got torch.int64"):
            net(torch.zeros(4, 2, dtype=torch.int64))
        with pytest.raises(FinerError, match=r"got shape \(\)"):
            net(torch.tensor(0.5))
    assert model(torch.zeros(5, 4, 2)).shape == (5, 4, 3)  # any leading axes
    assert stack(torch.zeros(4, 2)).shape == (2, 4, 3)
