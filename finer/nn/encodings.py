"""Input encodings: modules that map coordinates ``(..., in_features)`` to ``(..., out_features)``.

Each reports its ``out_features`` so the first layer can be sized from it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IdentityEncoding(nn.Module):
    """Coordinates passed through unchanged (FINER, SIREN, WIRE, Gauss)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = self.out_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class PositionalEncoding(nn.Module):
    """NeRF positional encoding ``[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(n-1) x), cos(2^(n-1) x)]``.

    As in the official FINER PE-MLP baseline, the frequencies are ``2^j`` with no factor of pi.
    Shapes: ``(..., d) -> (..., d * (1 + 2 * n_freqs))``.
    """

    def __init__(self, in_features: int, n_freqs: int = 10):
        super().__init__()
        self.in_features = in_features
        self.n_freqs = n_freqs
        self.out_features = in_features * (1 + 2 * n_freqs)
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        scaled = x[..., None, :] * self.freqs[:, None]  # (..., n, d)
        waves = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # (..., n, 2, d)
        return torch.cat([x, waves.flatten(-3)], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_freqs={self.n_freqs}"
