"""finer-inr: FINER (variable-periodic activations) and its rivals as implicit neural representations.

Public API::

    import finer
    net = finer.build_model("finer", in_features=2, out_features=3, first_bias_scale=5.0, seed=0)
    finer.models()            # names and defaults
    finer.fit_image(finer.ImageRunConfig(image="photo.png", steps=500), out="runs/photo")
"""


import importlib as _importlib

from finer.errors import ConfigError, DivergedError, FinerError, FinerWarning, InterruptedRun

__version__ = "0.1.0"

_LAZY = {  # imported on first use, so that `finer --help` and the launcher do not load torch
    "MODELS": "finer.models", "build_model": "finer.models", "count_parameters": "finer.models",
    "make_config": "finer.models",
    "ImageRunConfig": "finer.runs", "fit_image": "finer.runs", "render_checkpoint": "finer.runs",
    "reconstruct_image": "finer.runs", "resume_image": "finer.runs", "load_checkpoint": "finer.io",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:
        return _importlib.import_module(f"finer.{name}")  # subpackages: finer.nn, finer.bench, ...
    except ModuleNotFoundError as exc:
        if exc.name != f"finer.{name}":
            raise
        raise AttributeError(f"module 'finer' has no attribute {name!r}") from None

def __dir__():
    """The public API too (for tab completion), before its lazy names are first used."""
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "MODELS",
    "ConfigError",
    "DivergedError",
    "FinerError",
    "FinerWarning",
    "ImageRunConfig",
    "InterruptedRun",
    "build_model",
    "count_parameters",
    "fit_image",
    "load_checkpoint",
    "make_config",
    "models",
    "reconstruct_image",
    "render_checkpoint",
    "resume_image",
]
