"""Fused activations: the same functions as :mod:`finer.nn.activations`, at fewer passes over memory.

Eager PyTorch evaluates ``sin(omega * (|z| + 1) * z)`` as five elementwise kernels forward and
about as many backward, each reading and writing a tensor the size of the layer's output. Here
each activation is a *kernel*, a pure function ``z -> (y, dy/dz)`` that computes the output and
the derivative factor backward needs in one pass (compiled by ``torch.compile`` into one loop);
backward is then a single multiply, ``grad_z = grad_y * dy/dz``. The values and gradients are
those of the reference functions (``tests/nn/test_fused.py`` checks it), including FINER's
convention of a constant ``|z| + 1`` (``detach=True``) or the true derivative (``detach=False``).

The complex Gabor family (WIRE, Wire-FINER) has *complex kernels*: functions of the real and
imaginary parts ``(a, b)`` of the pre-activation that return the output's parts ``(y_r, y_i)`` and the
four entries of its real Jacobian ``d(y_r, y_i)/d(a, b)``; backward combines them with the incoming
gradient (PyTorch's convention for complex tensors: ``dL/da + i dL/db``). A real pre-activation (WIRE's
first layer) is the case ``b = 0``, and only ``dL/da`` goes back.

The activations with learned or per-unit parameters (MetaSin, MPA's modulated sine, SC-MLP's
sinusoidal composition) are modules holding a pure function; ``fuse(model, compile=True)`` hands
them the compiled version of that function (PyTorch derives a fused backward, parameter gradients
included), so they are fused only when compiling.

Where a layer has real weights and a real kernel (FINER, SIREN, Gauss, Gauss-FINER), ``fuse`` also
fuses the layer itself (:func:`fused_linear_apply`): the product ``x W^T``, then one pass adding
the bias and applying the activation; backward recomputes the derivative from the kept product in
one pass that also sums the bias gradient. When compiling, a layer of these fed with at most four
inputs that need no gradient (the first layer, fed with coordinates) computes even its product
inside that pass, and backward reduces straight into its weight gradient (:func:`_stem_kernels`).
Layers with a complex kernel (WIRE, Wire-FINER) are fused like the former, on the complex tensors'
memory (:func:`fused_complex_linear_apply`): one real product gives the pre-activation's parts
side by side, so the passes read them as contiguous runs.

``fuse(model)`` swaps the activation of every :class:`~finer.nn.layers.Layer` that has a kernel
(FINER, SIREN, Gauss, Gauss-FINER, WIRE, Wire-FINER, and the learnable ones when compiling) and
returns how many it swapped. Compilation happens on first use and is cached by PyTorch across
processes; if it fails (no C++ compiler, an unsupported device) the kernel runs eagerly instead,
with one warning. Only first derivatives are provided: differentiating a fused layer twice raises an error
that names :func:`unfuse`, which analyses that differentiate twice call first.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from finer.errors import FinerError, FinerWarning
from finer.nn import activations as A
from finer.nn.layers import FEW_INPUTS, autocast_context, autocast_off, handoff_dtype, product_autocast

Kernel = Callable[..., tuple[Tensor, Tensor]]


_LOG2_E = 1.4426950408889634


def _exp(x: Tensor) -> Tensor:
    """``exp(x)``; compiled for a CPU, as ``2^(x log2 e)``. There the compiler writes any value that holds
    an ``exp`` and is read twice to memory and reads it back (a heuristic of its own,
    ``should_realize_on_reuse``), where recomputing it in registers costs less; ``exp2`` is not on its
    list (Gauss's first-layer backward: 21-87 ms before, 15 ms after, ``scripts/pass-times.py``). The extra
    rounding of ``x log2 e`` (relative error up to ``2^-24 |x|``, 4e-6 at ``|x| = 87``) is within the rounding
    an ``x`` computed in float32 already carries: Gauss's and the Gabor kernel's largest errors against
    float64 are unchanged. Eagerly, and on other devices, whose compiler has no such rule, ``exp``."""
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        return torch.exp2(x * _LOG2_E)
    return torch.exp(x)


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
    y = _exp(-((scale * z) ** 2))
    return y, (-2.0 * scale * scale) * z * y


def gauss_finer_kernel(z: Tensor, omega: float = 10.0, scale: float = 3.0,
                       detach: bool = True) -> tuple[Tensor, Tensor]:
    u, du = finer_kernel(z, omega, detach)
    y, dy = gauss_kernel(u, scale)
    return y, dy * du


def gabor_kernel(a: Tensor, b: Tensor | None, omega: float = 20.0, scale: float = 10.0) -> tuple[Tensor, ...]:
    """WIRE's ``exp(i omega z - |s z|^2)`` of ``z = a + i b``: ``(y_r, y_i, dy_r/da, dy_r/db, dy_i/da, dy_i/db)``.

    ``b = None`` is a real pre-activation (``b = 0``).
    """
    if b is None:
        b = torch.zeros_like(a)
    s2 = scale * scale
    envelope = _exp(-omega * b - s2 * (a * a + b * b))
    yr = envelope * torch.cos(omega * a)
    yi = envelope * torch.sin(omega * a)
    da = -2.0 * s2 * a  # d log(envelope) / da
    db = -omega - 2.0 * s2 * b
    return yr, yi, da * yr - omega * yi, db * yr, da * yi + omega * yr, db * yi


def gabor_finer_kernel(a: Tensor, b: Tensor | None, omega: float = 5.0, omega_w: float = 4.0, scale: float = 2.0,
                       detach: bool = True) -> tuple[Tensor, ...]:
    """Wire-FINER: the Gabor of ``u = sin(omega w)``, ``w = a (|a|+1) + i b (|b|+1)``; parts and Jacobian."""
    if b is None:
        b = torch.zeros_like(a)
    ma, mb = a.abs(), b.abs()
    sa = ma + 1.0 if detach else 2.0 * ma + 1.0  # dw_r/da
    sb = mb + 1.0 if detach else 2.0 * mb + 1.0  # dw_i/db
    p, q = omega * (ma + 1.0) * a, omega * (mb + 1.0) * b
    sin_p, cos_p, sinh_q, cosh_q = torch.sin(p), torch.cos(p), torch.sinh(q), torch.cosh(q)
    ur, ui = sin_p * cosh_q, cos_p * sinh_q  # sin(p + i q)
    c1, c2 = omega * cos_p * cosh_q, -omega * sin_p * sinh_q  # omega cos(p + i q) = c1 + i c2 (holomorphic)
    yr, yi, k00, k01, k10, k11 = gabor_kernel(ur, ui, omega_w, scale)
    # chain rule: d(y)/d(u) [[c1, -c2], [c2, c1]] diag(sa, sb)
    return (yr, yi, (k00 * c1 + k01 * c2) * sa, (k01 * c1 - k00 * c2) * sb,
            (k10 * c1 + k11 * c2) * sa, (k11 * c1 - k10 * c2) * sb)


KERNELS: dict[Callable, Kernel] = {
    A.finer: finer_kernel,
    A.sine: sine_kernel,
    A.gauss: gauss_kernel,
    A.gauss_finer: gauss_finer_kernel,
}
COMPLEX_KERNELS: dict[Callable, Kernel] = {
    A.gabor: gabor_kernel,
    A.gabor_finer: gabor_finer_kernel,
}


PASS_CPU_OPTIONS = {"realize_reads_threshold": 64}
"""Compiler options for the fused layers' passes on a CPU. There the compiler writes a value that more
than one expression uses to memory, and reads it back, when computing it takes more than
``realize_reads_threshold`` (default 4) loads; the passes use a few such values (Wire-FINER's
``sin(omega w)``, a first layer's ``grad_z`` of about six loads) at every element, where recomputing them
in registers is cheaper than a write and a read of a tensor the size of the layer: Wire-FINER's
backward pass and FINER's first-layer backward run about twice as fast with the threshold raised on
the project's CPU (``scripts/pass-times.py``). Not measured on other devices, which keep the defaults."""


DEVICE_DYNAMIC: bool | None = True
"""``torch.compile``'s ``dynamic`` for the passes' version on devices other than the CPU: ``True``, sizes
symbolic from the first compilation (one version for every width, as on the CPU), or ``None``, sizes
fixed until a call brings new ones, then those made symbolic (a fixed width can give a GPU leaner
kernels: a constant row length to index the bias with). Read when a pass is first built. On an H200
the fused layers' eager step took 3.4 ms at commit 5521b37 and 5.7 ms at 8287108, whose changes
include making the width symbolic (biases passed detached, see :class:`_Compiled`); the ``eager``
stage of ``scripts/gpu-checks.sh`` times FINER with ``None`` beside the default to test that."""


def _plain_kernel(kernel: Callable) -> Callable:
    return kernel


class _Compiled:
    """A kernel (or any pure function) compiled on first use, eager if compilation is off or fails.

    Compiled with dynamic shapes, so one compiled version serves every width; the fused layers pass
    their weights and biases detached (their gradients are computed by hand), because the compiler
    keeps a parameter's shape static and would compile again for every width, up to its limit of
    8 versions per function, then run eagerly (seen with a sweep over widths in one process).

    ``cpu_options``: compiler options for the version that runs on CPU tensors (the fused layers' passes
    use :data:`PASS_CPU_OPTIONS`); other devices keep the compiler's defaults, with
    :data:`DEVICE_DYNAMIC`."""

    def __init__(self, kernel: Callable, compile: bool, cpu_options: dict | None = None):
        self.kernel = kernel
        self.__name__ = kernel.__name__
        self.compiled = torch.compile(kernel, dynamic=DEVICE_DYNAMIC) if compile else None
        self.compiled_cpu = (torch.compile(kernel, dynamic=True, options=cpu_options)
                             if compile and (cpu_options or DEVICE_DYNAMIC is not True) else self.compiled)

    def __reduce__(self):
        """Pickled as its plain kernel (compiled code stays in the process that compiled it)."""
        return _plain_kernel, (self.kernel,)

    def __deepcopy__(self, memo):
        """Shared by a deep copy (it holds no weights; pickling, above, gives the plain kernel)."""
        return self

    @property
    def is_compiled(self) -> bool:
        """Whether calls go to a compiled version (compilation on and not failed)."""
        return self.compiled is not None

    def __call__(self, *args, **params):
        if self.is_compiled:
            first = args[0] if args and isinstance(args[0], Tensor) else None
            compiled = self.compiled_cpu if first is None or first.device.type == "cpu" else self.compiled
            try:
                return compiled(*args, **params)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise  # inside a CUDA graph recording: the recording is broken, say so where it broke
                warnings.warn(f"torch.compile of {self.kernel.__name__} failed ({type(exc).__name__}: {exc}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
                self.compiled = self.compiled_cpu = None
        return self.kernel(*args, **params)


def _own_code(fn: Callable, name: str) -> Callable:
    """``fn``, named ``name``, with a code object of its own. torch.compile keeps its compiled versions
    per code object, at most ``torch._dynamo.config.recompile_limit`` (8) of them, and past that runs
    the function eagerly with a log line only; the closures one factory makes (the passes of every
    kernel, flat and stacked, training and evaluation) would share one code object and reach that
    limit in a process that trains a few methods."""
    fn.__code__ = fn.__code__.replace(co_name=name)
    fn.__name__ = fn.__qualname__ = name
    return fn


@functools.lru_cache(maxsize=None)
def _runner(kernel: Callable, compile: bool) -> _Compiled:
    return _Compiled(kernel, compile)


SECOND_DERIVATIVE = ("a fused layer gives first derivatives only; to differentiate twice (a loss on input "
                     "gradients, say), undo the fusion first with finer.nn.fused.unfuse(model), or train with "
                     "--fused off")


class _SecondDerivativeRefused(torch.autograd.Function):
    """The identity on a first derivative computed by a fused layer; differentiating it raises."""

    @staticmethod
    def forward(ctx, value, *anchors):
        return value.view_as(value)

    @staticmethod
    def backward(ctx, *grads):
        raise FinerError(SECOND_DERIVATIVE)


def _first_derivatives_only(backward: Callable) -> Callable:
    """A fused backward, run without a graph; under ``create_graph`` its results carry a node that
    refuses, naming ``unfuse``, to be differentiated (the kernels give first derivatives only, and
    a second derivative must fail loudly, not come out quietly wrong), or, where no tensor it depends
    on carries a graph to hang that node on, the backward itself refuses. As PyTorch's
    ``once_differentiable``, whose message names neither the layer nor the way out, and which returns
    a gradient without a graph in the second case (a later sum with another loss then drops its term)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            results = backward(ctx, *grads)
        if not torch.is_grad_enabled():  # (create_graph off)
            return results
        # what the true second derivative depends on: the incoming gradients and the saved inputs
        anchors = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, Tensor) and t.requires_grad]
        if not anchors:
            raise FinerError(SECOND_DERIVATIVE)
        return tuple(_SecondDerivativeRefused.apply(r, *anchors) if isinstance(r, Tensor) else r for r in results)

    return wrapper


def _combine(gr: Tensor, gi: Tensor, j0: Tensor, j1: Tensor) -> Tensor:
    return gr * j0 + gi * j1


_combine_runner = functools.partial(_runner, _combine)


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, runner, params):
        y, slope = runner(z, **params)
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    @_first_derivatives_only
    def backward(ctx, grad):
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


def _complex(real: Tensor, imag: Tensor) -> Tensor:
    """``real + i imag``; bfloat16 parts (mixed precision) become complex64, as there is no
    bfloat16 complex type."""
    if real.dtype not in (torch.float32, torch.float64):
        real, imag = real.float(), imag.float()
    return torch.complex(real, imag)


class _FusedComplexFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, runner, params):
        is_complex = z.is_complex()
        yr, yi, j00, j01, j10, j11 = runner(z.real, z.imag if is_complex else None, **params)
        ctx.is_complex, ctx.combine = is_complex, _combine_runner(runner.is_compiled)
        ctx.save_for_backward(*((j00, j10, j01, j11) if is_complex else (j00, j10)))
        return _complex(yr, yi)

    @staticmethod
    @_first_derivatives_only
    def backward(ctx, grad):
        gr, gi = grad.real, grad.imag
        jac = ctx.saved_tensors
        ga = ctx.combine(gr, gi, jac[0], jac[1])
        if not ctx.is_complex:
            return ga, None, None
        return _complex(ga, ctx.combine(gr, gi, jac[2], jac[3])), None, None


def _layer_kernels(kernel: Kernel) -> tuple[Callable, Callable]:
    """The two passes of a fused layer, built from ``kernel``.

    ``value(z, bias)``: the output ``f(z + b)``; ``grad(grad_y, z, bias)``: ``grad_z = grad_y f'(z + b)``
    and its sum over the points (the bias gradient). The derivative is recomputed from the product
    ``z`` kept for backward instead of being stored by forward: one tensor less to allocate and write
    per layer and step, the same arithmetic (the compiler drops the half of the kernel each pass
    does not use). ``out_dtype``: the type the output (``grad_z``) is written in, when it goes on to
    a product in that type (mixed precision); the bias gradient is summed before that rounding.
    """

    def value(z: Tensor, bias: Tensor, out_dtype: torch.dtype | None = None, **params) -> Tensor:
        y = kernel(z + bias, **params)[0]
        return y if out_dtype is None else y.to(out_dtype)

    def grad(grad_y: Tensor, z: Tensor, bias: Tensor, out_dtype: torch.dtype | None = None,
             **params) -> tuple[Tensor, Tensor]:
        grad_z = grad_y * kernel(z + bias, **params)[1]  # float32, also for a bfloat16 grad_y
        grad_bias = grad_z.sum(-2, keepdim=True)  # over the points (of each network, when stacked)
        return (grad_z if out_dtype is None else grad_z.to(out_dtype)), grad_bias

    return _own_code(value, f"{kernel.__name__}_value"), _own_code(grad, f"{kernel.__name__}_grad")


def _complex_parts(z: Tensor, real_weights: bool, out: int | None = None) -> tuple[Tensor, Tensor | None]:
    """``(a, b)`` of a complex layer's pre-activation in split layout ``[a | b]`` (``(..., 2 out)``), or
    ``(z, None)`` for a real one. ``out``: the layer's output width when known from another tensor of the
    pass (the output gradient): with dynamic shapes the compiler then knows that the parts have that
    tensor's size, and runs the whole pass as one loop (split at ``z.shape[-1] // 2`` it cannot tell,
    and wrote seven intermediate tensors to memory in Wire-FINER's backward)."""
    if real_weights:
        return z, None
    a, b = z.unflatten(-1, (2, -1 if out is None else out)).unbind(-2)
    return a, b


def _at_least_float32(z: Tensor) -> Tensor:
    """``z`` in float32 if it is of a narrower floating type."""
    return z.float() if z.dtype in (torch.bfloat16, torch.float16) else z


def _complex_layer_kernels(kernel: Kernel, real_weights: bool) -> tuple[Callable, Callable]:
    """The two passes of a fused layer with a complex kernel (WIRE's Gabor family), as
    :func:`_layer_kernels`'s: the pre-activation comes in split layout ``[a | b]`` (a real product,
    :func:`complex_as_real_weight`), or real for a layer with real weights, and the output goes out
    interleaved, ``(..., out, 2)``, the memory of a complex tensor (``torch.view_as_complex`` of it
    costs nothing). Backward takes the output's gradient in that layout (``view_as_real`` of PyTorch's
    ``dL/dy_r + i dL/dy_i``) and returns ``grad_z = [dL/da | dL/db]`` in the pre-activation's layout,
    so both products are real ``mm``. The pre-activation's parts are read as contiguous runs of a
    row: the compiler's CPU code reads the interleaved parts of a complex tensor (a stride of 2)
    several times slower, which was the cost of fusing the activation alone."""

    # A layer with real weights in a model cast to bfloat16 (no autocast: its bias is bfloat16 too) computes
    # its activation in float32, as the plain layer's complex64 one does (there is no bfloat16 complex type).
    def value(z: Tensor, bias: Tensor, **params) -> Tensor:
        yr, yi = kernel(*_complex_parts(_at_least_float32(z + bias), real_weights), **params)[:2]
        return torch.stack([yr, yi], -1)

    def grad(grad_y: Tensor, z: Tensor, bias: Tensor, **params) -> tuple[Tensor, Tensor]:
        zb = z + bias
        _, _, ra, rb, ia, ib = kernel(*_complex_parts(_at_least_float32(zb), real_weights, grad_y.shape[-2]),
                                      **params)
        gr, gi = grad_y[..., 0], grad_y[..., 1]
        grad_z = gr * ra + gi * ia
        if not real_weights:
            grad_z = torch.cat([grad_z, gr * rb + gi * ib], -1)
        return grad_z.to(zb.dtype), grad_z.sum(-2, keepdim=True)

    kind = "real" if real_weights else "complex"
    return _own_code(value, f"{kernel.__name__}_{kind}_value"), _own_code(grad, f"{kernel.__name__}_{kind}_grad")


def complex_as_real_weight(weight: Tensor) -> Tensor:
    """The real ``(2 out, 2 in)`` matrix ``M`` with ``view_as_real(x).flatten(-2) M^T = [Re(x W^T) | Im(x W^T)]``
    for a complex ``W (out, in)`` (or stacked ``(K, out, in)``): rows ``[Re W, -Im W]`` then ``[Im W, Re W]``,
    interleaved along the input to match the complex input's memory. Differentiable: autograd
    folds the real product's weight gradient back into ``W``'s."""
    parts = torch.view_as_real(weight)
    re, im = parts[..., 0], parts[..., 1]
    top = torch.stack([re, -im], -1).flatten(-2)
    bottom = torch.stack([im, re], -1).flatten(-2)
    return torch.cat([top, bottom], -2)


class _FusedLinearFunction(torch.autograd.Function):
    """``f(x W^T + b)``: forward one product and one pass; backward one pass for ``grad_z`` and the
    bias gradient, then the two products. ``x (N, in)``, ``W (out, in)``, ``b (out,)``, or K stacked
    networks: ``x (K, N, in)``, ``W (K, out, in)``, ``b (K, 1, out)`` (batched products). ``handoff``
    (real kernels): under mixed precision the passes write the output and ``grad_z`` in the type of
    the products they feed (:func:`~finer.nn.layers.handoff_dtype`), instead of a cast pass each."""

    @staticmethod
    def forward(ctx, x, weight, bias, runner, grad_runner, params, handoff):
        ctx.autocast = product_autocast(x)  # bf16 under mixed precision (float32 for few inputs)
        with autocast_context(ctx.autocast):
            z = x @ weight.transpose(-1, -2)
        ctx.grad_runner, ctx.params = grad_runner, params
        ctx.grad_out = {}
        out = {}
        if handoff:
            out = {"out_dtype": handoff_dtype(x.device.type, weight.shape[-2])}
            ctx.grad_out = {"out_dtype": ctx.autocast["dtype"] if ctx.autocast and ctx.autocast["enabled"] else None}
        ctx.save_for_backward(x, weight, bias, z)
        return runner(z, bias.detach(), **out, **params)  # detached: see _Compiled

    @staticmethod
    @_first_derivatives_only
    def backward(ctx, grad):
        x, weight, bias, z = ctx.saved_tensors
        grad_z, grad_bias = ctx.grad_runner(grad, z, bias.detach(), **ctx.grad_out, **ctx.params)
        # the products in the forward's precision, also when backward runs under autocast
        with autocast_context(ctx.autocast or autocast_off(x.device.type)):
            grad_x = grad_z @ weight if ctx.needs_input_grad[0] else None
            grad_w = weight_grad(grad_z, x) if ctx.needs_input_grad[1] else None
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, grad_bias.reshape(bias.shape).to(bias.dtype), None, None, None, None


PER_NETWORK_WEIGHT_GRAD_POINTS = 65536
"""On a CUDA device, K stacked layers reducing over at least this many points per network get their
weight gradients from one ``mm`` per network instead of one batched product (:func:`weight_grad`)."""


def splits_weight_grad(grad_z: Tensor) -> bool:
    """Whether :func:`weight_grad` computes these stacked layers' weight gradients one ``mm`` per network."""
    return grad_z.dim() == 3 and grad_z.is_cuda and grad_z.shape[-2] >= PER_NETWORK_WEIGHT_GRAD_POINTS


def weight_grad(grad_z: Tensor, x: Tensor, per_network: bool | None = None) -> Tensor:
    """``grad_z^T x``, the weight gradient of a layer: ``(N, out), (N, in) -> (out, in)``, or for K
    stacked layers ``(K, N, out), (K, N, in) -> (K, out, in)``.

    Stacked, this is one batched product whose reduction runs over all N points of a network into a
    small ``out x in`` result. A GPU spreads a batched product over its output tiles, and only a single
    ``mm`` is split along its reduction (the CUTLASS maintainers describe the limit for a small batch and
    a long reduction, NVIDIA/cutlass issue 1033): two stacked 512^2 images kept a handful of an H200's
    multiprocessors busy (43 ms per step for the pair against 9.3 ms for one image alone, see
    docs/results/README.md). ``per_network`` (default: stacked, on CUDA, at least
    :data:`PER_NETWORK_WEIGHT_GRAD_POINTS` points) computes the K products one ``mm`` each instead; on
    the CPU both take the same time (measured at 2 x 262,144 x 256 and 16 x 16,384 x 128), so it stays
    one product there."""
    if per_network is None:
        per_network = splits_weight_grad(grad_z)
    if per_network and grad_z.dim() == 3:
        return torch.stack([g.transpose(0, 1) @ xk for g, xk in zip(grad_z, x)])
    return grad_z.transpose(-1, -2) @ x


STEM_MAX_IN = FEW_INPUTS
"""A layer with at most this many inputs (the coordinates of an image, a shape, a ray point) computes
its product inside the activation's pass (:func:`_stem_kernels`) instead of calling ``mm``."""


def _stem_product(x: Tensor, weight_t: Tensor, bias: Tensor) -> Tensor:
    """``x W^T + b`` term by term, from the transposed weight ``W^T``: ``x (N, in), W^T (in, out)`` or stacked
    ``x (K, N, in), W^T (K, in, out)``. Each term reads a contiguous row of ``W^T`` along the outputs, the
    pass's vectorised dimension: read as a column of ``W`` (stride ``in``), the compiler counts strided loads
    and, in a pass as short as SIREN's or Gauss's, declines to vectorise it (several times slower on a CPU,
    ``scripts/pass-times.py``)."""
    z = bias + x[..., 0:1] * weight_t[..., None, 0, :]
    for i in range(1, weight_t.shape[-2]):
        z = z + x[..., i:i + 1] * weight_t[..., None, i, :]
    return z


def _stem_kernels(kernel: Kernel) -> tuple[Callable, Callable]:
    """The two passes of a fused first layer with few inputs, built from ``kernel``.

    Its product ``x W^T`` has a handful of terms per output, so it is computed inside the pass and
    never written: ``value(x, W^T, b) = f(x W^T + b)``; ``grad(grad_y, x, W^T, b)`` recomputes the
    derivative from ``x`` and reduces ``grad_z = grad_y f'`` straight into the (transposed) weight
    gradient ``x^T grad_z`` and the bias gradient (its column sums) without writing ``grad_z``. Both take
    the weight transposed, ``(in, out)``, see :func:`_stem_product`. A plain product
    would spend a pass over memory writing ``z`` and one reading ``grad_z``, about as long as the pass itself.
    """

    def value(x: Tensor, weight_t: Tensor, bias: Tensor, out_dtype: torch.dtype | None = None, **params) -> Tensor:
        y = kernel(_stem_product(x, weight_t, bias), **params)[0]
        return y if out_dtype is None else y.to(out_dtype)

    def grad(grad_y: Tensor, x: Tensor, weight_t: Tensor, bias: Tensor, **params) -> tuple[Tensor, Tensor]:
        grad_z = grad_y * kernel(_stem_product(x, weight_t, bias), **params)[1]
        grad_w_t = torch.stack([(grad_z * x[..., i:i + 1]).sum(-2) for i in range(weight_t.shape[-2])], dim=-2)
        return grad_w_t, grad_z.sum(-2, keepdim=True)

    return _own_code(value, f"{kernel.__name__}_stem_value"), _own_code(grad, f"{kernel.__name__}_stem_grad")


def _transposed(weight: Tensor) -> Tensor:
    return weight.detach().transpose(-1, -2).contiguous()


class _FusedStemFunction(torch.autograd.Function):
    """``f(x W^T + b)`` for an ``x`` with few columns that needs no gradient: one pass forward, one
    pass backward (weight and bias gradients only). Shapes as :class:`_FusedLinearFunction`'s."""

    @staticmethod
    def forward(ctx, x, weight, bias, runner, grad_runner, params, handoff):
        ctx.grad_runner, ctx.params = grad_runner, params
        weight_t = _transposed(weight)  # detached: see _Compiled; transposed (a few hundred numbers): see _stem_product
        ctx.save_for_backward(x, weight_t, bias)
        out_dtype = handoff_dtype(x.device.type, weight.shape[-2]) if handoff else None
        return runner(x, weight_t, bias.detach(), out_dtype=out_dtype, **params)

    @staticmethod
    @_first_derivatives_only
    def backward(ctx, grad):
        x, weight_t, bias = ctx.saved_tensors
        grad_w_t, grad_bias = ctx.grad_runner(grad, x, weight_t, bias.detach(), **ctx.params)
        return None, grad_w_t.transpose(-1, -2), grad_bias.reshape(bias.shape), None, None, None, None


def fused_linear_apply(x: Tensor, weight: Tensor, bias: Tensor, *, runner: _Compiled, grad_runner: _Compiled,
                       stem: tuple[_Compiled, _Compiled] | None = None, handoff: bool = False, **params) -> Tensor:
    """``activation(x W^T + b)`` with real ``x``, ``W``, ``b``: :class:`~finer.nn.layers.Layer`'s fused forward
    (for a complex kernel through :func:`fused_complex_linear_apply`, the output then ``(..., out, 2)``).

    Unlike ``nn.Linear`` (``addmm``, which first copies the bias into the output), the bias is added
    inside the activation's pass, and its gradient is summed in the same pass as ``grad_z``.
    A 3-D ``weight (K, out, in)`` with ``bias (K, 1, out)`` applies K stacked layers to
    ``x (K, N, in)`` (:class:`~finer.nn.stacked.StackedMLP`); otherwise ``x`` may have any leading shape.
    ``stem``: the passes of :func:`_stem_kernels`, used for a layer of at most :data:`STEM_MAX_IN`
    inputs whose input needs no gradient. ``handoff`` (the passes of :func:`_layer_kernels` and
    :func:`_stem_kernels`): under mixed precision the output is written in the type of the next product
    (:func:`~finer.nn.layers.handoff_dtype`): the values it would be rounded to there, without a cast
    pass. :func:`fuse` sets it for the layers of a coordinate MLP, whose outputs feed the next layer;
    a layer whose output goes elsewhere under autocast (a residual sum, a loss) must not have it.
    """
    stacked = weight.dim() == 3
    lead = x.shape[:-1]
    x2 = x if stacked else x.reshape(-1, x.shape[-1])
    flat = x2.dim() - 1  # the output's dimensions beyond the points: (out,) or (out, 2) for a complex kernel
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)
    if stem is not None and not x.requires_grad and x.shape[-1] <= STEM_MAX_IN:
        if grad:
            y = _FusedStemFunction.apply(x2, weight, bias, *stem, params, handoff)
        else:
            out_dtype = handoff_dtype(x2.device.type, weight.shape[-2]) if handoff else None
            y = stem[0](x2, _transposed(weight), bias.detach(), out_dtype=out_dtype, **params)
    elif grad:
        y = _FusedLinearFunction.apply(x2, weight, bias, runner, grad_runner, params, handoff)
    else:
        with autocast_context(product_autocast(x2)):
            z = x2 @ weight.transpose(-1, -2)
        out = {"out_dtype": handoff_dtype(x2.device.type, weight.shape[-2])} if handoff else {}
        y = runner(z, bias.detach(), **out, **params)
    return y if stacked else y.reshape(*lead, *y.shape[flat:])


def fused_complex_linear_apply(x: Tensor, weight: Tensor, bias: Tensor, **passes) -> Tensor:
    """``activation(x W^T + b)`` with a complex kernel (WIRE, Wire-FINER): the layer's fused forward.

    A complex layer becomes a real one on the tensors' memory: the input as ``view_as_real`` (its
    parts interleaved), the weight as :func:`complex_as_real_weight`, the bias as ``[Re b | Im b]``;
    one real product gives the pre-activation in split layout and :func:`_complex_layer_kernels`'s
    passes do the rest (:func:`fused_linear_apply`). A layer with real weights (WIRE's first) keeps
    its real product. The output is complex. Under mixed precision the products of complex weights
    stay float32, as the plain layers' complex64 products do (autocast leaves complex products alone);
    a layer with real weights follows :func:`~finer.nn.layers.product_autocast`, as the plain one.
    """
    if not weight.is_complex():  # a real product: the plain layers' precision rule (product_autocast)
        return torch.view_as_complex(fused_linear_apply(x, weight, bias, **passes))
    if not x.is_complex():
        x = x.to(weight.dtype)
    x = torch.view_as_real(x.resolve_conj().contiguous()).flatten(-2)
    weight = complex_as_real_weight(weight)
    bias = torch.cat([bias.real, bias.imag], -1)
    with autocast_context(autocast_off(x.device.type)):
        y = fused_linear_apply(x, weight, bias, **passes)
    return torch.view_as_complex(y)


@functools.lru_cache(maxsize=None)
def _complex_linear_runners(kernel: Kernel, real_weights: bool, compile: bool) -> tuple[_Compiled, _Compiled]:
    value, grad = _complex_layer_kernels(kernel, real_weights)
    return _Compiled(value, compile, PASS_CPU_OPTIONS), _Compiled(grad, compile, PASS_CPU_OPTIONS)


@functools.lru_cache(maxsize=None)
def _linear_runners(kernel: Kernel, compile: bool) -> tuple[_Compiled, _Compiled]:
    value, grad = _layer_kernels(kernel)
    return _Compiled(value, compile, PASS_CPU_OPTIONS), _Compiled(grad, compile, PASS_CPU_OPTIONS)


@functools.lru_cache(maxsize=None)
def _stem_runners(kernel: Kernel, compile: bool) -> tuple[_Compiled, _Compiled]:
    value, grad = _stem_kernels(kernel)
    return _Compiled(value, compile, PASS_CPU_OPTIONS), _Compiled(grad, compile, PASS_CPU_OPTIONS)


def fused_apply(z: Tensor, *, reference: Callable, runner: _Compiled, **params) -> Tensor:
    """The activation ``reference(z, **params)`` through its fused kernel."""
    if reference in COMPLEX_KERNELS:
        if not (torch.is_grad_enabled() and z.requires_grad):
            yr, yi = runner(z.real, z.imag if z.is_complex() else None, **params)[:2]
            return _complex(yr, yi)
        return _FusedComplexFunction.apply(z, runner, params)
    if not (torch.is_grad_enabled() and z.requires_grad):
        return runner(z, **params)[0]  # inference: no derivative kept
    return _FusedFunction.apply(z, runner, params)


def kernel_call(activation: Callable) -> tuple[Callable, dict] | None:
    """``(fn, params)`` of an activation ``fn`` or ``partial(fn, omega=30, ...)`` whose ``fn`` has a kernel,
    the parameters it leaves out at ``fn``'s defaults; ``None`` otherwise, and for a partial with
    positional arguments, which would take the place of the pre-activation."""
    fn, keywords = activation, {}
    if isinstance(activation, functools.partial):
        if activation.args:
            return None
        fn, keywords = activation.func, activation.keywords
    if not any(fn is kernel for kernel in (*KERNELS, *COMPLEX_KERNELS)):  # (by identity: fn may not be hashable)
        return None
    bound = inspect.signature(fn).bind(None, **keywords)  # (the first parameter is z)
    bound.apply_defaults()
    return fn, dict(list(bound.arguments.items())[1:])


def fused_version(activation: Callable, compile: bool = True) -> Callable | None:
    """The fused equivalent of ``activation`` (``fn`` or ``partial(fn, ...)``; ``None`` when ``fn`` has no kernel)."""
    call = kernel_call(activation)
    return None if call is None else _fused_activation(*call, compile)


def _fused_activation(fn: Callable, params: dict, compile: bool) -> Callable:
    return functools.partial(fused_apply, reference=fn, runner=_runner({**KERNELS, **COMPLEX_KERNELS}[fn], compile),
                             **params)


def fuse(model: nn.Module, compile: bool = True) -> int:
    """Give every layer of ``model`` whose activation has a kernel its fused version; returns the count.
    An activation is recognised as ``fn`` or ``partial(fn, omega=30, ...)`` for ``fn`` in :data:`KERNELS` or
    :data:`COMPLEX_KERNELS` (see :func:`kernel_call`); a partial of such an ``fn`` with positional
    arguments is left as it is, with a warning, and so are other activations.
    Layers fused before (perhaps in the other ``compile`` mode) are fused anew."""
    from finer.nn.layers import Layer
    from finer.nn.learnable import LearnableActivation
    from finer.nn.stacked import StackedMLP

    if isinstance(model, StackedMLP):  # (its layers are batched weights: it takes its networks' fused forms)
        warnings.warn("fuse() does not reach into a StackedMLP: fuse its networks, then stack them", FinerWarning,
                      stacklevel=2)
        return 0
    unfuse(model)
    count = 0
    for module in model.modules():
        if isinstance(module, Layer):
            if isinstance(module.activation, LearnableActivation):
                if compile and not isinstance(module.activation.fn, _Compiled):
                    module.activation.fn = _runner(module.activation.fn, True)
                    count += 1
                continue
            act = module.activation
            call = kernel_call(act)
            if call is None and isinstance(act, functools.partial) and act.args and any(
                    act.func is kernel for kernel in (*KERNELS, *COMPLEX_KERNELS)):
                warnings.warn(f"not fused: {act!r} passes positional arguments, which take the place of the "
                              f"pre-activation; write partial({act.func.__name__}, omega=...) to fuse it",
                              FinerWarning, stacklevel=2)
            if call is not None:
                fn, params = call
                if fn in KERNELS and not module.linear.weight.is_complex():
                    runner, grad_runner = _linear_runners(KERNELS[fn], compile)
                    # only when compiling: run eagerly, the term-by-term product is slower than mm
                    stem = (_stem_runners(KERNELS[fn], True)
                            if compile and module.linear.in_features <= STEM_MAX_IN else None)
                    module.fused_forward = functools.partial(fused_linear_apply, runner=runner, grad_runner=grad_runner,
                                                             stem=stem, handoff=True, **params)
                elif fn in COMPLEX_KERNELS:
                    runner, grad_runner = _complex_linear_runners(COMPLEX_KERNELS[fn],
                                                                  not module.linear.weight.is_complex(), compile)
                    module.fused_forward = functools.partial(fused_complex_linear_apply, runner=runner,
                                                             grad_runner=grad_runner, **params)
                module.activation = _fused_activation(fn, params, compile)
                count += 1
    return count


def unfuse(model: nn.Module) -> int:
    """Undo :func:`fuse` (e.g. before a double-backward analysis), also in a
    :class:`~finer.nn.stacked.StackedMLP` (the fused forms its networks gave it); returns the count."""
    from finer.nn.layers import Layer, plain_activation
    from finer.nn.stacked import StackedMLP

    count = 0
    for module in model.modules():
        if isinstance(module, StackedMLP):
            count += sum(f is not None for f in module.fused_forwards)
            module.fused_forwards = [None] * len(module.fused_forwards)
            module.activations = [plain_activation(a) for a in module.activations]
            continue
        act = getattr(module, "activation", None)
        if isinstance(module, Layer) and isinstance(getattr(act, "fn", None), _Compiled):
            act.fn = act.fn.kernel
            count += 1
        elif isinstance(module, Layer) and isinstance(act, functools.partial) and act.func is fused_apply:
            params = {k: v for k, v in act.keywords.items() if k not in ("reference", "runner")}
            module.activation = functools.partial(act.keywords["reference"], **params)
            module.fused_forward = None
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
