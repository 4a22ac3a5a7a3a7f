"""Initialisers: pure functions that fill a tensor in place from an explicit generator.

Bounds (supplement and the official code, github.com/liuzhen0212/FINER):
- SIREN first layer ``U(-1/n_in, 1/n_in)``; other layers ``U(-sqrt(6/n_in)/omega, +sqrt(6/n_in)/omega)``.
- PyTorch's ``nn.Linear`` default: weight and bias ``U(-1/sqrt(n_in), 1/sqrt(n_in))``.
- FINER's first-layer bias range ``k``: ``U(-k, k)``.
Complex tensors get independent draws for their real and imaginary parts.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


@torch.no_grad()
def uniform_(t: Tensor, bound: float, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``t`` with U(-bound, bound) (real and imaginary parts independently if complex)."""
    real = torch.view_as_real(t) if t.is_complex() else t
    # Draw on the CPU so the same seed gives the same network on every device.
    draw = torch.rand(real.shape, generator=generator, dtype=torch.float64)
    real.copy_((2.0 * draw - 1.0) * bound)
    return t


def siren_weight(weight: Tensor, *, omega: float, is_first: bool, generator=None) -> Tensor:
    """SIREN init of a ``(out, in)`` weight; ``omega`` is the layer's frequency factor."""
    fan_in = weight.shape[-1]
    bound = 1.0 / fan_in if is_first else math.sqrt(6.0 / fan_in) / omega
    return uniform_(weight, bound, generator)


def torch_weight(weight: Tensor, *, omega: float = 1.0, is_first: bool = False, generator=None) -> Tensor:
    """PyTorch's default ``nn.Linear`` weight init, U(-1/sqrt(n_in), 1/sqrt(n_in))."""
    return uniform_(weight, 1.0 / math.sqrt(weight.shape[-1]), generator)


def torch_bias(bias: Tensor, fan_in: int, generator=None) -> Tensor:
    """PyTorch's default ``nn.Linear`` bias init, U(-1/sqrt(n_in), 1/sqrt(n_in))."""
    return uniform_(bias, 1.0 / math.sqrt(fan_in), generator)


def range_bias(bias: Tensor, k: float, generator=None) -> Tensor:
    """FINER's bias init U(-k, k): k selects the supported frequency band."""
    return uniform_(bias, float(k), generator)


WEIGHT_INITS: dict[str, Callable[..., Tensor]] = {
    "siren": siren_weight,
    "torch": torch_weight,
}
