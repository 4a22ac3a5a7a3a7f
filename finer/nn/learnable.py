"""Activations with parameters or per-unit constants: thin modules around the pure functions.

Each is passed to :class:`~finer.nn.layers.Layer` as its activation, like a pure function, and
holds the pure function it evaluates as ``fn`` (:func:`finer.nn.fused.fuse` swaps in a compiled one).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from finer.nn import activations as A
from finer.nn.init import torch_bias, torch_weight


class LearnableActivation(nn.Module):
    """An activation module: parameters or buffers, and the pure function ``fn`` that uses them."""

    fn: Callable[..., Tensor]


class MetaSin(LearnableActivation):
    """``relu(z) + sum_k a_k sin(f_k z + p_k)``, one set of ``K`` sinusoids per layer.

    Init (an assumption, the MetaSin paper initialises by distillation): frequencies evenly spaced
    on ``[1, max_frequency]``, phases 0, amplitudes ``1 / K``.
    """

    def __init__(self, n_sines: int = 8, max_frequency: float = 30.0):
        super().__init__()
        self.amplitudes = nn.Parameter(torch.full((n_sines,), 1.0 / n_sines))
        self.frequencies = nn.Parameter(torch.linspace(1.0, max_frequency, n_sines))
        self.phases = nn.Parameter(torch.zeros(n_sines))
        self.fn = A.metasin

    def forward(self, z: Tensor) -> Tensor:
        return self.fn(z, self.amplitudes, self.frequencies, self.phases)


class SineComposition(LearnableActivation):
    """``z + sin(omega z)`` with fixed per-unit ``omega`` log-spaced over ``[omega_min, omega_max]``."""

    def __init__(self, units: int, omega_min: float = 10.0, omega_max: float = 100.0):
        super().__init__()
        omega = torch.logspace(math.log10(omega_min), math.log10(omega_max), units)
        self.register_buffer("omega", omega)
        self.fn = A.sine_composition

    def forward(self, z: Tensor) -> Tensor:
        return self.fn(z, self.omega)


class Modulator(nn.Module):
    """MPA's modulator: a ReLU MLP fed with a learned latent code; one amplitude vector per layer.

    ``m_0 = relu(V_0 c + e_0)``, ``m_i = relu(V_i [m_(i-1), c] + e_i)``; layer ``i`` of the synthesis
    network is scaled by ``m_i``. With one signal the latent is a single learned vector, so the
    amplitudes are constant over the coordinates.
    """

    def __init__(self, latent_dim: int, width: int, layers: int, generator: torch.Generator | None = None):
        super().__init__()
        self.latent = nn.Parameter(torch.empty(latent_dim))
        torch_bias(self.latent.data, 1, generator)  # U(-1, 1)
        sizes = [latent_dim] + [width + latent_dim] * (layers - 1)
        self.linears = nn.ModuleList(nn.Linear(n, width) for n in sizes)
        for lin in self.linears:
            torch_weight(lin.weight.data, generator=generator)
            torch_bias(lin.bias.data, lin.in_features, generator)

    def forward(self) -> list[Tensor]:
        out, h = [], None
        for lin in self.linears:
            h = torch.relu(lin(self.latent if h is None else torch.cat([h, self.latent])))
            out.append(h)
        return out


class ModulatedSine(LearnableActivation):
    """``m_index * sin(omega z)`` with the amplitudes from a shared :class:`Modulator`."""

    def __init__(self, modulator: Modulator, index: int, omega: float):
        super().__init__()
        self.modulator = modulator  # shared by every synthesis layer
        self.index = index
        self.omega = omega
        self.fn = A.modulated_sine

    def forward(self, z: Tensor) -> Tensor:
        return self.fn(z, self.modulator()[self.index], self.omega)
