"""The one coordinate MLP: an encoding followed by a stack of :class:`~finer.nn.layers.Layer`."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from finer.nn.layers import Layer


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
        h = self.encoding(coords)
        for layer in self.layers:
            h = layer(h)
        return h.real if h.is_complex() else h
