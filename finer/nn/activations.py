"""Activation functions as pure tensor functions, and the table that pairs each with its init.

Every function maps a pre-activation ``z`` (any shape, real or complex) to a tensor of the same
shape. Parameters are keyword arguments, so a layer receives ``functools.partial(fn, **params)``.

The FINER family (CVPR 2024, arXiv 2312.02434) scales the phase of a sine by ``alpha(z) = |z| + 1``:
``sin(omega * (|z| + 1) * z)``. The official code computes ``alpha`` without gradient, so backprop
sees ``omega * (|z| + 1) * cos(...)`` instead of the true derivative
``omega * (2|z| + 1) * cos(...)`` (supplement Eq. 2). ``detach=True`` reproduces the paper;
``detach=False`` gives the true derivative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def identity(z: Tensor) -> Tensor:
    """No activation (the final linear layer)."""
    return z


def relu(z: Tensor) -> Tensor:
    """max(z, 0), as in the positional-encoding MLP."""
    return torch.relu(z)


def sine(z: Tensor, omega: float = 30.0) -> Tensor:
    """SIREN: sin(omega * z)."""
    return torch.sin(omega * z)


def finer_alpha(z: Tensor, detach: bool = True) -> Tensor:
    """The variable-period factor |z| + 1 (constant to autograd when ``detach``)."""
    if detach:
        z = z.detach()
    return z.abs() + 1.0


def finer(z: Tensor, omega: float = 30.0, detach: bool = True) -> Tensor:
    """FINER: sin(omega * (|z| + 1) * z), real input."""
    return torch.sin(omega * finer_alpha(z, detach) * z)


def finer_complex(z: Tensor, omega: float = 30.0, detach: bool = True) -> Tensor:
    """FINER on a complex pre-activation, as FINER++ does for Wire-FINER.

    The real and imaginary parts are scaled separately, ``re*(|re|+1) + i*im*(|im|+1)``,
    then the complex sine is taken: ``sin(omega * that)``.
    """
    re, im = z.real, z.imag
    warped = torch.complex(finer_alpha(re, detach) * re, finer_alpha(im, detach) * im)
    return torch.sin(omega * warped)


def gauss(z: Tensor, scale: float = 30.0) -> Tensor:
    """Gaussian bump exp(-(scale * z)^2)."""
    return torch.exp(-((scale * z) ** 2))


def gabor(z: Tensor, omega: float = 20.0, scale: float = 10.0) -> Tensor:
    """WIRE's complex Gabor wavelet exp(i * omega * z - |scale * z|^2) (complex output)."""
    if not z.is_complex():
        z = z.to(torch.complex64 if z.dtype != torch.float64 else torch.complex128)
    return torch.exp(1j * omega * z - (scale * z).abs().square())


def gauss_finer(z: Tensor, omega: float = 10.0, scale: float = 3.0, detach: bool = True) -> Tensor:
    """FINER++ Gauss-FINER: exp(-(scale * u)^2) with u = finer(z, omega)."""
    return gauss(finer(z, omega, detach), scale)


def gabor_finer(
    z: Tensor, omega: float = 5.0, omega_w: float = 4.0, scale: float = 2.0, detach: bool = True
) -> Tensor:
    """FINER++ Wire-FINER: gabor(u, omega_w, scale) with u the (complex) FINER of z."""
    u = finer_complex(z, omega, detach) if z.is_complex() else finer(z, omega, detach)
    return gabor(u, omega_w, scale)


@dataclass(frozen=True)
class Activation:
    """One entry of the activation table: the function and the weight init that goes with it.

    ``init`` names the weight initialiser in :data:`finer.nn.init.WEIGHT_INITS`;
    ``complex_output`` says whether the activation returns a complex tensor (Gabor family).
    """

    fn: Callable[..., Tensor]
    init: str
    complex_output: bool = False


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(identity, "torch"),
    "relu": Activation(relu, "torch"),
    "sine": Activation(sine, "siren"),
    "finer": Activation(finer, "siren"),
    "gauss": Activation(gauss, "torch"),
    "gabor": Activation(gabor, "torch", complex_output=True),
    "gauss_finer": Activation(gauss_finer, "siren"),
    "gabor_finer": Activation(gabor_finer, "siren", complex_output=True),
}


def metasin(z: Tensor, amplitudes: Tensor, frequencies: Tensor, phases: Tensor) -> Tensor:
    """MetaSin: ``relu(z) + sum_k a_k sin(f_k z + p_k)`` with ``K`` learnable sinusoids (shapes ``(K,)``)."""
    waves = torch.sin(z[..., None] * frequencies + phases)  # (..., K)
    return torch.relu(z) + waves @ amplitudes


def sine_composition(z: Tensor, omega: Tensor) -> Tensor:
    """NeuRBF's sinusoidal composition ``z + sin(omega * z)``, ``omega`` fixed per unit (shape ``(units,)``)."""
    return z + torch.sin(omega * z)


def modulated_sine(z: Tensor, amplitude: Tensor, omega: float = 30.0) -> Tensor:
    """MPA synthesis activation ``amplitude * sin(omega z)``, ``amplitude`` per unit (shape ``(units,)``)."""
    return amplitude * torch.sin(omega * z)
