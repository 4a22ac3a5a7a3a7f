"""Building blocks: activations, initialisers, encodings, the layer and the MLP."""

from finer.nn.activations import ACTIVATIONS, Activation
from finer.nn.encodings import IdentityEncoding, PositionalEncoding
from finer.nn.layers import Layer
from finer.nn.mlp import CoordinateMLP

__all__ = ["ACTIVATIONS", "Activation", "CoordinateMLP", "IdentityEncoding", "Layer", "PositionalEncoding"]
