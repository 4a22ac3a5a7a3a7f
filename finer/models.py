"""One config dataclass per method, the registry of methods, and :func:`build_model`.

Defaults are the papers' image-fitting defaults (from the official FINER and FINER++ code and each
baseline's own). Every config also carries
the method's default learning rate and the range its targets are scaled to, so a fit with
``finer fit image --model NAME`` uses the method as its authors ran it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from finer.errors import ConfigError
from finer.nn import activations as A
from finer.nn.encodings import IdentityEncoding, PositionalEncoding
from finer.nn.layers import Layer
from finer.nn.learnable import MetaSin, ModulatedSine, Modulator, SineComposition
from finer.nn.mlp import CoordinateMLP


@dataclass(frozen=True)
class LayerSpec:
    """How one activated layer is made: its activation and its initialisation."""

    activation: Callable
    weight_init: str = "torch"
    init_omega: float = 1.0
    bias_range: float | None = None


def table_layer(name: str, *, init_omega: float = 1.0, bias_range: float | None = None, **params) -> LayerSpec:
    """The layer of entry ``name`` of the activation table (:data:`finer.nn.activations.ACTIVATIONS`): its
    function with ``params`` (``omega=30``, ...) and the weight initialisation that goes with it."""
    entry = A.ACTIVATIONS[name]
    return LayerSpec(functools.partial(entry.fn, **params) if params else entry.fn, entry.init, init_omega, bias_range)


@dataclass
class MLPConfig:
    """Options common to every method.

    Depth: ``hidden_layers`` counts the hidden-to-hidden layers, so the paper's image network
    "3 x 256" is ``in -> 256``, three ``256 -> 256`` and a linear ``256 -> out``.
    """

    hidden_layers: int = 3
    """Number of hidden-to-hidden layers (the paper's image network: 3)."""
    width: int = 256
    """Hidden units per layer."""
    lr: float = 5e-4
    """Adam learning rate at step 0 (image fits decay it exponentially to 0.1x at the last step; SDF fits keep
    it constant, as the paper's protocol does; NeRF fits use their own ``--lr``)."""
    target_range: tuple[float, float] = (-1.0, 1.0)
    """The range signal values are scaled to before fitting."""

    complex_weights = False  # class constant: WIRE-family hidden layers are complex

    # -- what a method changes -------------------------------------------------------------
    def encoding(self, in_features: int) -> nn.Module:
        return IdentityEncoding(in_features)

    def layer(self, first: bool) -> LayerSpec:
        return table_layer("relu")

    def final(self) -> LayerSpec:
        """The output layer: linear, its weights initialised as the hidden layers' (SIREN's with their omega).
        (The hidden layer's spec is made only to read its init: for a learnable activation that is a small module
        made and dropped, once per network built.)"""
        hidden = self.layer(first=False)
        return LayerSpec(A.identity, hidden.weight_init, hidden.init_omega)

    def hidden_width(self) -> int:
        return self.width

    def build_context(self, generator: torch.Generator | None) -> Any:
        """Modules shared by several layers (MPA's modulator); None for most methods."""
        return None

    def layer_at(self, index: int, context: Any) -> LayerSpec:
        """The spec of activated layer ``index`` (0 = first)."""
        return self.layer(first=index == 0)

    # -- shared machinery ----------------------------------------------------------------------
    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_value(type(self).__name__, f.name, value, str(f.type))
        if self.hidden_width() < 1:  # WIRE's complex parity: width / sqrt(2) units
            raise ConfigError(f"{type(self).__name__}: width {self.width} leaves {self.hidden_width()} complex "
                              "units (width / sqrt(2), for parameter parity); give a width of at least 2")

    def build(self, in_features: int, out_features: int, generator: torch.Generator | None = None) -> CoordinateMLP:
        """Build the network ``(..., in_features) -> (..., out_features)``."""
        self.validate()
        encoding = self.encoding(in_features)
        width = self.hidden_width()
        sizes = [encoding.out_features] + [width] * (self.hidden_layers + 1)
        context = self.build_context(generator)
        layers = []
        for i in range(self.hidden_layers + 1):
            spec = self.layer_at(i, context)
            layers.append(self._make(sizes[i], sizes[i + 1], spec, i == 0, generator))
        layers.append(self._make(width, out_features, self.final(), False, generator))
        return CoordinateMLP(encoding, layers)

    def _make(self, n_in: int, n_out: int, spec: LayerSpec, first: bool, generator) -> Layer:
        return Layer(
            n_in,
            n_out,
            spec.activation,
            weight_init=spec.weight_init,
            init_omega=spec.init_omega,
            is_first=first,
            bias_range=spec.bias_range,
            complex_weights=self.complex_weights and not first,
            generator=generator,
        )


_POSITIVE = {"width", "lr", "first_omega", "hidden_omega", "omega", "omega_w", "scale", "n_sines",
             "max_frequency", "omega_min", "omega_max", "latent_dim"}
"""Numeric options that must be positive; the others (layer counts, bias ranges) may also be zero."""


def _check_value(owner: str, name: str, value: Any, kind: str) -> None:
    """Check one option's value against its declared type ``kind`` (``"bool"``, ``"int"``, ``"float | None"``,
    ...): an on/off option takes only ``true``/``false`` (``--option scale_grad=no`` must not read as on), a
    number is not a truth value, and ``None`` is taken only where the type allows it."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}.{name} is on or off: true or false, got {value!r}")
        return
    if name == "target_range":
        ok = (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            and value[0] < value[1]
        )
        if not ok:
            raise ConfigError(f"{owner}.target_range must be two finite numbers (low, high) with low < high, "
                              f"got {value!r}")
        return
    integer = kind.startswith("int")
    if value is None and "None" in kind:
        return
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{owner}.{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be a finite number, got {value!r}")
    if name in _POSITIVE and value <= 0:
        raise ConfigError(f"{owner}.{name} must be positive, got {value!r}")
    if value < 0:
        raise ConfigError(f"{owner}.{name} must be zero or positive, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}")


@dataclass
class SirenConfig(MLPConfig):
    """SIREN (Sitzmann et al. 2020): ``sin(omega z)`` with the SIREN initialisation."""

    first_omega: float = 30.0
    """omega of the first layer."""
    hidden_omega: float = 30.0
    """omega of the hidden layers (also scales the final layer's init)."""
    lr: float = 5e-4

    def layer(self, first: bool) -> LayerSpec:
        omega = self.first_omega if first else self.hidden_omega
        return table_layer("sine", init_omega=omega, omega=omega)


@dataclass
class FinerConfig(SirenConfig):
    """FINER: ``sin(omega (|z|+1) z)``; the first-layer bias range ``k`` tunes the spectral bias."""

    first_bias_scale: float | None = None
    """k: first-layer bias ~ U(-k, k); None keeps PyTorch's U(-1/sqrt(n_in), 1/sqrt(n_in))."""
    hidden_bias_scale: float | None = None
    """Bias range of the hidden layers; None keeps PyTorch's default."""
    scale_grad: bool = False
    """False: |z|+1 is detached as in the official code; True: the true derivative (Eq. 2)."""

    def layer(self, first: bool) -> LayerSpec:
        omega = self.first_omega if first else self.hidden_omega
        bias = self.first_bias_scale if first else self.hidden_bias_scale
        return table_layer("finer", init_omega=omega, bias_range=bias, omega=omega, detach=not self.scale_grad)


@dataclass
class GaussConfig(MLPConfig):
    """Gaussian activation ``exp(-(s z)^2)`` with PyTorch's initialisation."""

    scale: float = 30.0
    """s, the inverse width of the Gaussian."""
    lr: float = 5e-3

    def layer(self, first: bool) -> LayerSpec:
        return table_layer("gauss", scale=self.scale)


@dataclass
class WireConfig(MLPConfig):
    """WIRE (Saragadam et al. 2023): complex Gabor ``exp(i omega z - |s z|^2)``.

    The first layer has real weights, the others complex ones; the output is the real part.
    With ``complex_parity`` the hidden width is ``int(width / sqrt(2))`` (181 for 256), since a
    complex unit holds two real numbers; this matches the official code's parameter budget.
    """

    omega: float = 20.0
    """Frequency of the Gabor wavelet."""
    scale: float = 10.0
    """s, the inverse width of its envelope."""
    complex_parity: bool = True
    """Shrink the hidden width by sqrt(2) for parameter parity with real networks."""
    lr: float = 5e-3

    complex_weights = True

    def hidden_width(self) -> int:
        return int(self.width / math.sqrt(2)) if self.complex_parity else self.width

    def layer(self, first: bool) -> LayerSpec:
        return table_layer("gabor", omega=self.omega, scale=self.scale)


@dataclass
class PEMLPConfig(MLPConfig):
    """ReLU MLP on the NeRF positional encoding (10 frequencies ``2^j``, no pi); targets in [0, 1]."""

    n_freqs: int = 10
    """Number of octaves of the encoding (0: none, a plain ReLU MLP)."""
    lr: float = 1e-3
    target_range: tuple[float, float] = (0.0, 1.0)

    def encoding(self, in_features: int) -> nn.Module:
        return PositionalEncoding(in_features, self.n_freqs)


@dataclass
class GaussFinerConfig(MLPConfig):
    """FINER++ Gauss-FINER: ``exp(-(s u)^2)``, ``u = sin(omega (|z|+1) z)``; SIREN init with omega."""

    omega: float = 10.0
    """omega of the inner FINER sine."""
    scale: float = 3.0
    """s of the Gaussian."""
    first_bias_scale: float | None = 1.0
    """k: first-layer bias ~ U(-k, k); None keeps PyTorch's default."""
    scale_grad: bool = False
    """False: |z|+1 detached (official); True: the true derivative."""
    lr: float = 1e-3

    def layer(self, first: bool) -> LayerSpec:
        return table_layer("gauss_finer", init_omega=self.omega, bias_range=self.first_bias_scale if first else None,
                           omega=self.omega, scale=self.scale, detach=not self.scale_grad)


@dataclass
class WireFinerConfig(WireConfig):
    """FINER++ Wire-FINER: Gabor of the (complex) FINER sine; SIREN init with ``omega * omega_w``."""

    omega: float = 5.0
    """omega of the inner FINER sine."""
    omega_w: float = 4.0
    """Frequency of the Gabor wavelet."""
    scale: float = 2.0
    """s, the inverse width of its envelope."""
    first_bias_scale: float | None = 1.0
    """k: first-layer bias ~ U(-k, k); None keeps PyTorch's default."""
    scale_grad: bool = False
    """False: |z|+1 detached (official); True: the true derivative."""
    lr: float = 1e-3

    def layer(self, first: bool) -> LayerSpec:
        return table_layer("gabor_finer", init_omega=self.omega * self.omega_w,
                           bias_range=self.first_bias_scale if first else None, omega=self.omega,
                           omega_w=self.omega_w, scale=self.scale, detach=not self.scale_grad)


@dataclass
class MetaSinConfig(MLPConfig):
    """MS-MLP: a ReLU MLP whose activations are MetaSin, ``relu(z) + sum_k a_k sin(f_k z + p_k)``.

    *Unverified against the MetaSin code* (which we could not read): one learnable set of ``n_sines``
    sinusoids per layer, frequencies initialised on ``[1, max_frequency]``, PyTorch init.
    """

    n_sines: int = 8
    """K, the number of learnable sinusoids per layer."""
    max_frequency: float = 30.0
    """The highest initial frequency of the sinusoids."""
    lr: float = 1e-3

    def layer(self, first: bool) -> LayerSpec:
        return LayerSpec(MetaSin(self.n_sines, self.max_frequency))


@dataclass
class SCMLPConfig(MLPConfig):
    """SC-MLP: NeuRBF's sinusoidal composition ``z + sin(omega z)`` in the first layer of a ReLU MLP.

    ``omega`` is fixed per unit, log-spaced over ``[omega_min, omega_max]`` (NeuRBF);
    the first layer has no other non-linearity (an assumption), the others are ReLU.
    """

    omega_min: float = 10.0
    """Lowest composition frequency."""
    omega_max: float = 100.0
    """Highest composition frequency."""
    lr: float = 1e-3

    def layer(self, first: bool) -> LayerSpec:
        if first:
            return LayerSpec(SineComposition(self.width, self.omega_min, self.omega_max))
        return table_layer("relu")


@dataclass
class MPAConfig(MLPConfig):
    """MPA (Mehta et al. 2021): SIREN synthesis layers ``m_i * sin(omega (W_i h + b_i))`` whose amplitudes
    ``m_i`` come from a ReLU modulator fed with a learned latent code.

    *Unverified against the MPA code* (which we could not read): the auto-encoder is replaced by one learned
    latent per signal, the modulator is as wide as the synthesis network, SIREN init with omega 30.
    """

    omega: float = 30.0
    """omega of every synthesis layer."""
    latent_dim: int = 64
    """Size of the learned latent code."""
    lr: float = 5e-4

    def build_context(self, generator):
        return Modulator(self.latent_dim, self.width, self.hidden_layers + 1, generator)

    def layer_at(self, index: int, context) -> LayerSpec:
        return LayerSpec(ModulatedSine(context, index, self.omega), "siren", self.omega)

    def final(self) -> LayerSpec:  # (its layers come from layer_at, which needs the modulator)
        return LayerSpec(A.identity, "siren", self.omega)


MODELS: dict[str, type[MLPConfig]] = {
    "finer": FinerConfig,
    "siren": SirenConfig,
    "wire": WireConfig,
    "gauss": GaussConfig,
    "pemlp": PEMLPConfig,
    "gauss-finer": GaussFinerConfig,
    "wire-finer": WireFinerConfig,
    "mpa": MPAConfig,
    "metasin": MetaSinConfig,
    "sc-mlp": SCMLPConfig,
}


def _lookup(name: str) -> type[MLPConfig]:
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def _plain(value: Any) -> Any:
    """A NumPy (or other) integer or real scalar as a Python ``int`` or ``float``; anything else as it is."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def plain_numbers(config: Any) -> None:
    """Turn the NumPy (or other) integer and real scalars among a dataclass's fields into Python ``int`` and
    ``float``, in place: a config accepts ``np.int64(500)`` steps and records them as JSON can."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, dict):  # (model_options)
            value = {k: _plain(v) for k, v in value.items()}
        setattr(config, f.name, _plain(value))


def make_config(name: str, **overrides: Any) -> MLPConfig:
    """The config of method ``name`` with its paper defaults, except for ``overrides``, each checked
    (:class:`ConfigError` for an unknown option or a bad value; ``None`` only where the default is
    ``None``). NumPy scalars (``np.arange`` sweeps) count as Python numbers.
    """
    cls = _lookup(name)
    overrides = {key: _plain(value) for key, value in overrides.items()}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(names)}")
    if "target_range" in overrides and overrides["target_range"] is not None:
        overrides["target_range"] = tuple(overrides["target_range"])
    cfg = cls(**overrides)
    cfg.validate()
    return cfg


def models() -> dict[str, dict[str, Any]]:
    """Every registered method with its default options."""
    return {name: dataclasses.asdict(cls()) for name, cls in MODELS.items()}


def build_model(
    name: str, in_features: int, out_features: int, *, seed: int | None = None, **overrides: Any
) -> CoordinateMLP:
    """Build method ``name`` as an ``nn.Module`` mapping ``(..., in_features) -> (..., out_features)``.

    ``seed`` fixes the initialisation (drawn from its own generator, not the global one).
    The returned module carries ``.method`` (the name) and ``.config`` (the resolved config).

    >>> net = build_model("finer", 2, 3, width=64, first_bias_scale=5.0, seed=0)
    """
    in_features, out_features = _plain(in_features), _plain(out_features)
    for label, n in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"{label} must be a positive integer, got {n!r}")
    cfg = check_buildable(name, in_features, out_features, **overrides)
    return build_from_config(name, cfg, in_features, out_features, seed)


def check_buildable(name: str, in_features: int, out_features: int, **overrides: Any) -> MLPConfig:
    """The config :func:`build_model` would build, with its refusals (unknown method or option, a value out of
    range, a network too large for the memory), without building it: a grid checks every network it will
    train before it trains the first."""
    cfg = make_config(name, **overrides)
    _check_network_memory(cfg, in_features, out_features)
    return cfg


def _check_network_memory(cfg: MLPConfig, in_features: int, out_features: int) -> None:
    """Refuse, before allocating it, a network whose weights with their gradients and Adam's two moments
    would not fit in the memory a run may use (a mistyped --width or n_freqs)."""
    from finer.tasks.image import memory_budget

    width, layers = cfg.hidden_width(), cfg.hidden_layers
    first = in_features * (1 + 2 * getattr(cfg, "n_freqs", 0))  # (PE-MLP's encoding widens the first layer)
    params = first * width + layers * width * width + width * out_features
    need = params * 4 * (2 if cfg.complex_weights else 1) * 4
    budget = memory_budget(torch.device("cpu"))
    if need > budget:
        raise ConfigError(f"a {cfg.hidden_layers} x {width} network of about {params:.3g} parameters needs about "
                          f"{need / 2**30:.1f} GiB for its weights, gradients and Adam's state, more than the "
                          f"{budget / 2**30:.1f} GiB a run may use; choose a smaller width"
                          + (" or n_freqs" if hasattr(cfg, "n_freqs") else ""))


def build_from_config(
    name: str, cfg: MLPConfig, in_features: int, out_features: int, seed: int | None = None
) -> CoordinateMLP:
    """Build a network from an already resolved config (used when loading checkpoints)."""
    if seed is None:  # PyTorch's global generator draws the initialisation
        model = cfg.build(in_features, out_features, None)
    else:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
            raise ConfigError(f"seed must be an integer from 0 to 2^64 - 1, got {seed!r}")
        with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global generator first
            model = cfg.build(in_features, out_features, torch.Generator().manual_seed(int(seed)))
    model.method = name
    model.config = cfg
    return model


def network_shape(config: MLPConfig) -> dict[str, Any]:
    """The hidden layers and units a network was built with, as run records state them: ``width`` as asked
    (``--width``, the bench tables' column), ``hidden_width`` as built; where they differ (WIRE's complex
    parity), a note says why."""
    shape: dict[str, Any] = {"width": config.width, "hidden_layers": config.hidden_layers,
                             "hidden_width": config.hidden_width()}
    if shape["hidden_width"] != config.width:
        shape["hidden_width_note"] = (f"{shape['hidden_width']} complex units for width {config.width}: a complex "
                                      "unit holds two real numbers (parameter parity with real networks)")
    return shape


def count_parameters(model: nn.Module) -> int:
    """Real-valued parameter count (a complex weight counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())


class _CallableModule(types.ModuleType):
    """This module, callable: ``finer.models()`` lists the methods (:func:`models`), while
    ``import finer.models as fm`` and ``from finer.models import FinerConfig`` see the module."""

    def __call__(self) -> dict[str, dict[str, Any]]:
        return models()


sys.modules[__name__].__class__ = _CallableModule
