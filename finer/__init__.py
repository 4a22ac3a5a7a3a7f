"""finer-inr: FINER (variable-periodic activations) and its rivals as implicit neural representations.

Public API::

    import finer
    net = finer.build_model("finer", in_features=2, out_features=3, first_bias_scale=5.0, seed=0)
    finer.models()            # names and defaults
    finer.fit_image(finer.ImageRunConfig(image="photo.png", steps=500), out="runs/photo")
"""

from finer.errors import ConfigError, DivergedError, FinerError
from finer.models import MODELS, build_model, count_parameters, make_config, models
from finer.runs import ImageRunConfig, fit_image, render_checkpoint, resume_image

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "ConfigError",
    "DivergedError",
    "FinerError",
    "ImageRunConfig",
    "build_model",
    "count_parameters",
    "fit_image",
    "make_config",
    "models",
    "render_checkpoint",
    "resume_image",
]
