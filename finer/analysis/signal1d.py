"""A 1-D signal fitted by the NTK study's networks, to see convergence next to the kernel."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_FREQUENCIES = (1.0, 3.0, 6.0, 10.0)
"""Cycles per unit length of the components of the default signal on [0, 1)."""


def sum_of_sines(x: Tensor, frequencies=DEFAULT_FREQUENCIES) -> Tensor:
    """``mean_f sin(2 pi f x)``: equal-amplitude components from low to high frequency."""
    return torch.stack([torch.sin(2 * math.pi * f * x) for f in frequencies]).mean(0)


def fit_curve(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 1000, lr: float = 1e-3) -> list[float]:
    """Full-batch Adam on MSE at a constant learning rate; the loss after every step: ``steps + 1`` values,
    the first of the untrained network, the one at index ``t`` after ``t`` updates."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.mean((model(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    with torch.no_grad():
        losses.append(torch.mean((model(x) - y) ** 2))
    return torch.stack(losses).tolist()
