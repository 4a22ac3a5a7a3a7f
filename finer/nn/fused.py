"""Fused activations: the same functions as :mod:`finer.nn.activations`, at fewer passes over memory.

Eager PyTorch evaluates ``sin(omega * (|z| + 1) * z)`` as five elementwise kernels forward and
about as many backward, each reading and writing a tensor the size of the layer's output. Here
each activation is a *kernel*, a pure function ``z -> (y, dy/dz)`` that computes the output and
the derivative factor backward needs in one pass (compiled by ``torch.compile`` into one loop);
backward is then a single multiply, ``grad_z = grad_y * dy/dz``. The values and gradients are
those of the reference functions (``tests/nn/test_fused.py`` checks it), including FINER's
convention of a constant ``|z| + 1`` (``detach=True``) or the true derivative (``detach=False``).

``fuse(model)`` swaps the activation of every :class:`~finer.nn.layers.Layer` that has a kernel
(FINER, SIREN, Gauss, Gauss-FINER; the complex Gabor family keeps eager autograd) and returns how
many it swapped. Compilation happens on first use and is cached by PyTorch across processes; if it
fails (no C++ compiler, an unsupported device) the kernel runs eagerly instead, with one warning.
Only first derivatives are provided: analyses that differentiate twice use the plain functions.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from finer.nn import activations as A

Kernel = Callable[..., tuple[Tensor, Tensor]]


def finer_kernel(z: Tensor, omega: float = 30.0, detach: bool = True) -> tuple[Tensor, Tensor]:
    """``sin(omega (|z|+1) z)`` and its derivative (``omega (|z|+1) cos`` when ``detach``)."""
    mag = z.abs()
    scale = omega * (mag + 1.0)
    phase = scale * z
    slope = scale if detach else omega * (2.0 * mag + 1.0)
    return torch.sin(phase), torch.cos(phase) * slope


def sine_kernel(z: Tensor, omega: float = 30.0) -> tuple[Tensor, Tensor]:
    phase = omega * z
    return torch.sin(phase), omega * torch.cos(phase)


def gauss_kernel(z: Tensor, scale: float = 30.0) -> tuple[Tensor, Tensor]:
    y = torch.exp(-((scale * z) ** 2))
    return y, (-2.0 * scale * scale) * z * y


def gauss_finer_kernel(z: Tensor, omega: float = 10.0, scale: float = 3.0, detach: bool = True) -> tuple[Tensor, Tensor]:
    u, du = finer_kernel(z, omega, detach)
    y, dy = gauss_kernel(u, scale)
    return y, dy * du


KERNELS: dict[Callable, Kernel] = {
    A.finer: finer_kernel,
    A.sine: sine_kernel,
    A.gauss: gauss_kernel,
    A.gauss_finer: gauss_finer_kernel,
}


class _Compiled:
    """A kernel compiled on first use, eager if compilation is off or fails."""

    def __init__(self, kernel: Kernel, compile: bool):
        self.kernel = kernel
        self.compiled = torch.compile(kernel, dynamic=True) if compile else None

    def __call__(self, z: Tensor, **params) -> tuple[Tensor, Tensor]:
        if self.compiled is not None:
            try:
                return self.compiled(z, **params)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
                warnings.warn(f"torch.compile of {self.kernel.__name__} failed ({type(exc).__name__}: {exc}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.kernel(z, **params)


@functools.lru_cache(maxsize=None)
def _runner(kernel: Kernel, compile: bool) -> _Compiled:
    return _Compiled(kernel, compile)


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, runner, params):
        y, slope = runner(z, **params)
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx, grad):
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


def fused_apply(z: Tensor, *, reference: Callable, runner: _Compiled, **params) -> Tensor:
    """The activation ``reference(z, **params)`` through its fused kernel."""
    if not (torch.is_grad_enabled() and z.requires_grad):
        return runner(z, **params)[0]  # inference: no derivative kept
    return _FusedFunction.apply(z, runner, params)


def fused_version(activation: Callable, compile: bool = True) -> Callable | None:
    """The fused equivalent of ``partial(fn, **params)`` (or ``None`` when ``fn`` has no kernel)."""
    if isinstance(activation, functools.partial) and activation.func in KERNELS and not activation.args:
        fn = activation.func
        runner = _runner(KERNELS[fn], compile)
        fused = functools.partial(fused_apply, reference=fn, runner=runner, **activation.keywords)
        return fused
    return None


def fuse(model: nn.Module, compile: bool = True) -> int:
    """Give every layer of ``model`` whose activation has a kernel its fused version; returns the count."""
    from finer.nn.layers import Layer

    count = 0
    for module in model.modules():
        if isinstance(module, Layer):
            fused = fused_version(module.activation, compile)
            if fused is not None:
                module.activation = fused
                count += 1
    return count


def unfuse(model: nn.Module) -> int:
    """Undo :func:`fuse` (e.g. before a double-backward analysis); returns the count."""
    from finer.nn.layers import Layer

    count = 0
    for module in model.modules():
        act = getattr(module, "activation", None)
        if isinstance(module, Layer) and isinstance(act, functools.partial) and act.func is fused_apply:
            params = {k: v for k, v in act.keywords.items() if k not in ("reference", "runner")}
            module.activation = functools.partial(act.keywords["reference"], **params)
            count += 1
    return count


FUSED_MODES = ("auto", "compile", "eager", "off")
COMPILE_MIN_STEPS = 500
"""``auto`` compiles for runs at least this long (compilation costs seconds, once per process)."""


def apply_fused(model: nn.Module, mode: str, steps: int) -> dict:
    """Apply a ``--fused`` mode to ``model``; returns what was done, for the run's records.

    ``compile``: fused kernels compiled by torch.compile; ``eager``: fused kernels run eagerly;
    ``off``: plain autograd; ``auto``: ``compile`` for runs of at least :data:`COMPILE_MIN_STEPS`
    steps, ``off`` for shorter ones. A model with no fusable activation reports ``off``.
    """
    from finer.errors import FinerError

    if mode not in FUSED_MODES:
        raise FinerError(f"unknown fused mode {mode!r}; choose one of: {', '.join(FUSED_MODES)}")
    if mode == "auto":
        mode = "compile" if steps >= COMPILE_MIN_STEPS else "off"
    layers = 0 if mode == "off" else fuse(model, compile=mode == "compile")
    return {"fused": mode if layers else "off", "fused_layers": layers}  # "off": nothing had a kernel
