"""An eager re-implementation of the official FINER image network, kept as a reference.

Written from a description of the official code (github.com/liuzhen0212/FINER; not copied from it): separate
``nn.Linear`` layers, PyTorch's default init overwritten in place by the SIREN bounds, and the
activation ``sin(omega * (|z|+1) * z)`` evaluated op by op with ``|z|+1`` under ``no_grad``.
It draws its initialisation from the global RNG, as the official code does.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _OfficialFinerLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, omega: float, first: bool, bias_scale: float | None):
        super().__init__()
        self.omega = omega
        self.linear = nn.Linear(n_in, n_out)
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / omega
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            if first and bias_scale is not None:
                self.linear.bias.uniform_(-bias_scale, bias_scale)

    def forward(self, x):
        z = self.linear(x)
        with torch.no_grad():
            scale = torch.abs(z) + 1
        return torch.sin(self.omega * scale * z)


class OfficialFiner(nn.Module):
    """``in -> width``, ``hidden_layers`` x ``width -> width`` (FINER), linear ``width -> out``."""

    lr = 5e-4
    target_range = (-1.0, 1.0)

    def __init__(self, in_features: int, out_features: int, width: int = 256, hidden_layers: int = 3,
                 first_omega: float = 30.0, hidden_omega: float = 30.0, first_bias_scale: float | None = None):
        super().__init__()
        layers = [_OfficialFinerLayer(in_features, width, first_omega, True, first_bias_scale)]
        layers += [_OfficialFinerLayer(width, width, hidden_omega, False, None) for _ in range(hidden_layers)]
        final = nn.Linear(width, out_features)
        with torch.no_grad():
            bound = math.sqrt(6.0 / width) / hidden_omega
            final.weight.uniform_(-bound, bound)
        self.net = nn.Sequential(*layers, final)

    def forward(self, coords):
        return self.net(coords)
