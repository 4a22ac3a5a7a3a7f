"""Neural tangent kernels: the empirical kernel of any model, and the supplement's Eq. (5).

The empirical NTK of a scalar network ``f(x; theta)`` on points ``x_1..x_N`` is
``K = J J^T`` with ``J[i, p] = d f(x_i) / d theta_p`` (supplement §4, Jacot et al. 2018).
Networks with several outputs get the sum of the per-output kernels.
"""

from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from finer.errors import ConfigError


def _selected(model: nn.Module, params: str) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    if params == "all":
        return named
    if params == "first":  # the supplement's shallow analysis varies only the first layer
        first = [n for n in named if n.startswith("layers.0.")]
        return {n: named[n] for n in first}
    raise ValueError(f"params must be 'all' or 'first', got {params!r}")


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without fused layers (:func:`finer.nn.fused.fuse`); the model is left as it is."""
    import copy

    from finer.nn.fused import unfuse

    twin = copy.deepcopy(model)  # (a deep copy keeps the fused layers: unfused below)
    unfuse(twin)
    return twin


def empirical_ntk(model: nn.Module, x: Tensor, *, params: str = "all", chunk: int = 256,
                  dtype: torch.dtype | None = torch.float64) -> Tensor:
    """``(N, N)`` kernel ``sum_p J_p J_p^T`` of ``model`` at the points ``x`` ``(N, in_features)``.

    Jacobians are computed with ``torch.func`` (vmap over points, reverse mode over the
    parameters), ``chunk`` points at a time; memory is the ``N x outputs x P`` Jacobian and the kernel.
    The model is measured on a copy: unfused (torch.func transforms do not see through the fused layers'
    hand-written backward passes) and in ``dtype`` (None: the model's own). Float64 by default: in float32
    the kernel's rounding, about 1e-7 of its largest entries, gives eigenvalues of up to about 1e-3 where
    the true ones are far smaller, and negative ones as large.
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    if not isinstance(x, Tensor) or x.dim() != 2:  # (a grid (H, W, 2) would sum each row's kernels as outputs)
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"x is a tensor of points (N, in_features), got {got}; flatten a grid with "
                          "x.reshape(-1, in_features)")
    model = plain_copy(model)
    if dtype is not None:
        model, x = model.to(dtype), x.to(dtype)
    selected = _selected(model, params)
    complex_names = {n for n, p in selected.items() if p.is_complex()}
    # complex weights (WIRE) count as two real parameters: differentiate their real views
    theta = {n: torch.view_as_real(p.detach()) if n in complex_names else p.detach() for n, p in selected.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in theta}
    buffers = dict(model.named_buffers())

    def f(th: dict[str, Tensor], xi: Tensor) -> Tensor:
        th = {n: torch.view_as_complex(v) if n in complex_names else v for n, v in th.items()}
        out = functional_call(model, {**frozen, **th, **buffers}, (xi[None],))
        return out.reshape(-1)  # (out_features,)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    blocks = []
    for start in range(0, x.shape[0], chunk):
        j = jac(theta, x[start : start + chunk])  # name -> (c, out, *shape)
        blocks.append(torch.cat([v.reshape(v.shape[0], v.shape[1], -1) for v in j.values()], dim=-1))
    J = torch.cat(blocks)  # (N, out, P)
    return torch.einsum("iop,jop->ij", J, J)


def explicit_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """``(N, P)`` Jacobian of a scalar model by one backward pass per point (slow; for checks). A complex
    parameter gives two columns per entry, the derivatives along its real and imaginary parts (PyTorch's
    gradient of a real output is ``dy/da + i dy/db``), as :func:`empirical_ntk` counts it."""
    rows = []
    for xi in x:
        model.zero_grad(set_to_none=True)
        model(xi[None]).sum().backward()
        rows.append(torch.cat([(torch.view_as_real(p.grad) if p.is_complex() else p.grad).reshape(-1)
                               for p in model.parameters()]))
    return torch.stack(rows)


def finer_derivative(z: Tensor, omega: float = 1.0) -> Tensor:
    """True derivative of ``sin(omega (|z|+1) z)``: ``omega (2|z|+1) cos(omega (|z|+1) z)`` (Eq. 2)."""
    return omega * (2 * z.abs() + 1) * torch.cos(omega * (z.abs() + 1) * z)


def eq5_monte_carlo(
    x: Tensor, *, k: float, omega: float = 1.0, weight_bound: float = 1.0, samples: int = 100_000,
    generator: torch.Generator | None = None, batch: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Supplement Eq. (5) by Monte Carlo over the first-layer initialisation.

    ``K(x_i, x_j) = (x_i x_j + 1) E[sigma'(w x_i + b) sigma'(w x_j + b)]`` for 1-D points ``x``
    ``(N,)``, ``w ~ U(-weight_bound, weight_bound)``, ``b ~ U(-k, k)`` and ``sum_k c_k^2 = 1``.
    Returns ``(kernel, standard_error)``, both ``(N, N)``.
    """
    x = x.reshape(-1).double()
    total = torch.zeros(x.numel(), x.numel(), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < samples:
        m = min(batch, samples - done)
        w = (torch.rand(m, generator=generator, dtype=torch.float64) * 2 - 1) * weight_bound
        b = (torch.rand(m, generator=generator, dtype=torch.float64) * 2 - 1) * k
        d = finer_derivative(w[:, None] * x[None, :] + b[:, None], omega)  # (m, N)
        total += d.T @ d
        total_sq += (d.T**2) @ (d**2)
        done += m
    mean = total / samples
    var = (total_sq / samples - mean**2).clamp_min(0)
    scale = x[:, None] * x[None, :] + 1
    return scale * mean, scale * (var / samples).sqrt()


def diag_dominance(kernel: Tensor) -> float:
    """Mean absolute diagonal entry over mean absolute off-diagonal entry."""
    n = kernel.shape[0]
    diag = kernel.diagonal().abs().mean()
    off = (kernel.abs().sum() - kernel.diagonal().abs().sum()) / (n * n - n)
    return float(diag / off)


def eigenvalues(kernel: Tensor) -> Tensor:
    """Eigenvalues of a symmetric kernel, largest first."""
    sym = 0.5 * (kernel + kernel.T)
    return torch.linalg.eigvalsh(sym.double()).flip(0)


def resolved(eigs: Tensor, kernel_dtype: torch.dtype = torch.float64) -> Tensor:
    """The leading eigenvalues (largest first) that the kernel's rounding does not hide: those above
    ``N x eps x`` the largest, ``eps`` the machine epsilon of the dtype the kernel was computed in (the
    size of the errors of a computed eigenvalue); the rest are noise, some negative."""
    floor = eigs.numel() * torch.finfo(kernel_dtype).eps * float(eigs[0])
    return eigs[eigs > floor]


def count_large(eigs: Tensor, threshold: float) -> int:
    """Number of eigenvalues above ``threshold``."""
    return int((eigs > threshold).sum())


def shallow_network(model: str, k: float | None, *, width: int = 256, omega: float = 1.0, seed: int = 0):
    """The supplement's network: 1-D input, one activated layer of ``width``, linear output.

    As in the official NTK notebook: first-layer omega 1, final-layer init with omega 30, first-layer
    bias ``U(-k, k)`` for the FINER family; zero for SIREN and PE-MLP, and for FINER with ``k`` None, as the
    notebook's SIREN, FINER without a bias range, MLP and Fourier-feature networks start theirs (haiku's
    default); the other methods keep their own initialisation.
    """
    from finer.models import build_model, make_config

    options: dict = {"width": width, "hidden_layers": 0}
    fields = set(make_config(model).__dataclass_fields__)
    if "first_omega" in fields:
        options.update(first_omega=omega, hidden_omega=30.0)
    with_k = k is not None and "first_bias_scale" in fields
    if with_k:
        options["first_bias_scale"] = k
    net = build_model(model, 1, 1, seed=seed, **options)
    if not with_k and model in ZERO_BIAS:
        with torch.no_grad():
            net.layers[0].linear.bias.zero_()
    return net


ZERO_BIAS = ("siren", "pemlp", "finer")
"""The methods whose first-layer bias the notebook starts at zero (FINER: when given no bias range)."""


def ntk_grid(n: int = 1024) -> Tensor:
    """The official notebook's points: ``linspace(0, 1, n + 1)[:-1]`` as ``(n, 1)``."""
    return torch.linspace(0, 1, n + 1)[:-1, None]




def first_layer_kernel_net(k: float, width: int, seed: int = 0):
    """Shallow FINER with the true derivative and fixed output weights ``c = +-1/sqrt(n)``.

    Its first-layer empirical NTK is a ``width``-sample estimate of Eq. (5).
    """
    net = shallow_network_true_grad(k, width, seed)
    g = torch.Generator().manual_seed(seed + 1)
    signs = torch.randint(0, 2, (1, width), generator=g).float() * 2 - 1
    with torch.no_grad():
        net.layers[-1].linear.weight.copy_(signs / width**0.5)
    return net


def shallow_network_true_grad(k: float, width: int, seed: int):
    from finer.models import build_model

    return build_model("finer", 1, 1, seed=seed, width=width, hidden_layers=0, first_omega=1.0,
                       hidden_omega=30.0, first_bias_scale=k, scale_grad=True)
