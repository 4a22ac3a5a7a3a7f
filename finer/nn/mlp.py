"""The one coordinate MLP: an encoding followed by a stack of :class:`~finer.nn.layers.Layer`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from finer.errors import FinerError
from finer.nn.layers import Layer


def check_coordinates(coords, in_features: int) -> None:
    """Refuse, with a message that says what to pass, coordinates that are not a floating tensor with
    ``in_features`` in the last axis (PyTorch's own errors name a missing attribute or a matrix product)."""
    if not isinstance(coords, Tensor):
        raise FinerError(f"coordinates must be a torch.Tensor, got {type(coords).__module__}.{type(coords).__name__} "
                         "(torch.as_tensor(x, dtype=torch.float32) converts an array)")
    if not torch.is_floating_point(coords):
        raise FinerError(f"coordinates must be floating point, got {coords.dtype} (coords.float())")
    if coords.dim() == 0 or coords.shape[-1] != in_features:
        raise FinerError(f"coordinates must have {in_features} values in the last axis (..., {in_features}), "
                         f"got shape {tuple(coords.shape)}")


class CoordinateMLP(nn.Module):
    """``coords (..., in_features) -> values (..., out_features)``.

    Depth words: the image network "3 hidden layers x 256" is ``2 -> 256``, three
    ``256 -> 256``, then a linear ``256 -> 3``; that is 4 activated layers and 5 layers in all.
    A complex output (WIRE family) is reduced to its real part.
    """

    def __init__(self, encoding: nn.Module, layers: Sequence[Layer]):
        super().__init__()
        self.encoding = encoding
        self.layers = nn.ModuleList(layers)
        self.in_features = encoding.in_features
        self.out_features = layers[-1].linear.out_features

    def forward(self, coords: Tensor) -> Tensor:
        check_coordinates(coords, self.in_features)
        h = self.encoding(coords)
        for layer in self.layers:
            h = layer(h)
        return h.real if h.is_complex() else h
