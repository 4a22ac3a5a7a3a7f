"""The one layer class: a linear map, its initialisation, and an injected activation."""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from finer.errors import FinerError
from finer.nn import init as inits
from finer.nn.activations import identity


FEW_INPUTS = 4
"""A layer fed with at most this many inputs (the coordinates of an image, a shape, a ray point)
computes in float32 under mixed precision: a few multiply-adds per output, and the coordinates'
precision sets the finest detail the network can place."""


def product_autocast(x: Tensor) -> dict | None:
    """The autocast settings for the matrix products of a layer fed with ``x``: ``None`` when no autocast
    is in force (plain float32, the common case), else those in force (bfloat16 under ``--precision
    bf16``), switched off for layers of at most :data:`FEW_INPUTS` inputs (float32)."""
    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        return None
    if x.shape[-1] > FEW_INPUTS:
        return {"device_type": kind, "dtype": torch.get_autocast_dtype(kind), "enabled": True}
    return {"device_type": kind, "enabled": False}


def handoff_dtype(device_type: str, out_features: int) -> torch.dtype | None:
    """The type a fused layer writes its output in: under autocast, the autocast type (bfloat16) when
    the layer has more than :data:`FEW_INPUTS` outputs, since the product of the layer it feeds rounds
    its input to that type anyway (:func:`product_autocast`); the same values, written at half the
    size and without a separate cast pass. ``None`` (float32, as computed) otherwise. This holds for a
    layer whose output feeds a product (the layers of a coordinate MLP, which is how :func:`finer.nn.fused.fuse`
    uses it), not for one whose output is used as it is under autocast."""
    if out_features > FEW_INPUTS and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_off(device_type: str) -> dict | None:
    """Settings that switch autocast off where it is on (``None`` where it is off already): products
    that must stay float32 whatever context they run in."""
    return {"device_type": device_type, "enabled": False} if torch.is_autocast_enabled(device_type) else None


def autocast_context(settings: dict | None):
    """A context applying :func:`product_autocast`'s settings (nothing for ``None``)."""
    return contextlib.nullcontext() if settings is None else torch.autocast(**settings)


def affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x W^T + b`` for ``W (out, in)``, ``b (out,)``, or K stacked layers ``W (K, out, in)``, ``b (K, 1, out)``
    on ``x (K, N, in)``. Without autocast this is ``nn.Linear``'s (``baddbmm``'s) arithmetic. Under
    autocast (mixed precision) the product runs in the autocast type (float32 for layers with few
    inputs, see :func:`product_autocast`) and the bias is added in float32, as the fused layers do, so
    the activation that follows sees a float32 pre-activation. Complex (WIRE) layers are left to
    autocast, which does not touch complex products."""
    stacked = weight.dim() == 3
    if x.is_complex() and not weight.is_complex():
        raise FinerError("a complex input (a complex activation's output, such as WIRE's gabor) reaches real "
                         "weights: build the layers after it with complex_weights=True")
    settings = product_autocast(x)
    if weight.is_complex() or settings is None:
        return torch.baddbmm(bias, x, weight.transpose(1, 2)) if stacked else F.linear(x, weight, bias)
    if not settings["enabled"]:
        x = x.to(weight.dtype)
    with torch.autocast(**settings):
        z = torch.bmm(x, weight.transpose(1, 2)) if stacked else F.linear(x, weight)
    return z.float() + bias


def plain_activation(activation: Callable) -> Callable:
    """The reference function behind a fused activation (:func:`finer.nn.fused.fused_apply`), or
    ``activation`` itself."""
    if isinstance(activation, functools.partial) and "reference" in activation.keywords:
        params = {k: v for k, v in activation.keywords.items() if k not in ("reference", "runner")}
        return functools.partial(activation.keywords["reference"], **params)
    return activation


def keeping_complex(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A conversion of :meth:`torch.nn.Module._apply` (``.double()``, ``.to(dtype)``, device moves, ...) that
    converts complex tensors too, through their real view: ``.double()`` and ``.to(torch.float64)`` make
    complex64 weights complex128 and ``.float()`` complex64 again, where PyTorch would leave them as they
    are (``.double()``) or silently drop their imaginary part (``.to(torch.float64)``). Half types, which
    complex products do not support, leave them complex64 with their values (only a device move applies)."""

    def convert(t: Tensor) -> Tensor:
        if not t.is_complex():
            return fn(t)
        real = fn(torch.view_as_real(t))
        return torch.view_as_complex(real) if real.dtype in (torch.float32, torch.float64) else t.to(real.device)

    return convert


def deepcopy_sharing(module: nn.Module, memo: dict, shared: tuple[str, ...]) -> nn.Module:
    """A deep copy of ``module`` whose attributes named in ``shared`` are the original's objects (functions
    and compiled kernels, which hold no weights), for a ``__deepcopy__`` that bypasses ``__getstate__``."""
    twin = module.__class__.__new__(module.__class__)
    memo[id(module)] = twin
    for key, value in module.__dict__.items():
        twin.__dict__[key] = value if key in shared else copy.deepcopy(value, memo)
    return twin


class Layer(nn.Module):
    """``y = activation(W x + b)`` with ``W`` of shape ``(out_features, in_features)``.

    Args:
        activation: a pure function of the pre-activation (e.g. ``partial(finer, omega=30)``);
            the default identity makes this the final linear layer.
        weight_init: a key of :data:`finer.nn.init.WEIGHT_INITS` (``"siren"`` or ``"torch"``).
        init_omega: the frequency factor the SIREN init divides by (ignored by ``"torch"``).
        is_first: use the SIREN first-layer bound ``1/n_in`` instead.
        bias_range: ``k`` for a ``U(-k, k)`` bias (FINER's knob); ``None`` keeps PyTorch's default.
        complex_weights: complex64 weights (WIRE hidden and final layers).
        generator: the random generator the initialisers draw from.
    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Callable[[Tensor], Tensor] = identity,
        *,
        weight_init: str = "torch",
        init_omega: float = 1.0,
        is_first: bool = False,
        bias_range: float | None = None,
        complex_weights: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        dtype = torch.complex64 if complex_weights else torch.float32
        self.linear = nn.Linear(in_features, out_features, dtype=dtype)
        self.activation = activation
        self.fused_forward: Callable | None = None
        """``(x, weight, bias) -> y``, the whole layer in fewer passes (set by :func:`finer.nn.fused.fuse`)."""
        inits.WEIGHT_INITS[weight_init](
            self.linear.weight, omega=init_omega, is_first=is_first, generator=generator
        )
        if bias_range is None:
            inits.torch_bias(self.linear.bias, in_features, generator)
        else:
            inits.range_bias(self.linear.bias, bias_range, generator)

    def __getstate__(self):
        """Pickled (``torch.save(model)``, a worker process) as the plain layer: fused kernels are built in
        the process that runs them (:func:`finer.nn.fused.fuse` again after loading)."""
        state = self.__dict__.copy()
        if "activation" in state:  # (a learnable activation is a child module, pickled as one)
            state["activation"] = plain_activation(state["activation"])
        state["fused_forward"] = None
        return state

    def __deepcopy__(self, memo):
        """``copy.deepcopy``: a copy as it is, fused or not (pickling, above, gives the plain layer); the
        fused forward and a function activation are shared, as they hold no weights."""
        return deepcopy_sharing(self, memo, ("fused_forward",) + (
            () if isinstance(self.activation, nn.Module) else ("activation",)))

    def _apply(self, fn, recurse=True):
        return super()._apply(keeping_complex(fn), recurse)  # WIRE's complex weights follow dtype casts

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_forward is not None:
            return self.fused_forward(x, self.linear.weight, self.linear.bias)
        return self.activation(affine(x, self.linear.weight, self.linear.bias))

    def extra_repr(self) -> str:
        act = self.activation
        if isinstance(act, nn.Module):
            return ""  # shown as a child module
        if isinstance(act, functools.partial):
            fused = "reference" in act.keywords  # finer.nn.fused.fused_apply
            name = act.keywords["reference"].__name__ if fused else act.func.__name__
            params = ", ".join(f"{k}={v}" for k, v in act.keywords.items() if k not in ("reference", "runner"))
            return f"activation={'fused ' if fused else ''}{name}({params})"
        return f"activation={getattr(act, '__name__', repr(act))}"
