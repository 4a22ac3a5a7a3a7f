"""Shared fixtures: small real images (scikit-image's samples) and the optional ../shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def astronaut_small() -> np.ndarray:
    """scikit-image's astronaut (ships with the package) downscaled to 24x24 RGB in [0, 1]."""
    from finer.tasks.image import load_image

    return load_image(None, size=24)


@pytest.fixture
def png_path(tmp_path, astronaut_small) -> Path:
    """A small real RGB PNG on disk."""
    path = tmp_path / "astronaut24.png"
    Image.fromarray((astronaut_small * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def shared_images() -> Path:
    path = SHARED / "images" / "div2k_train"
    if not path.is_dir():
        pytest.skip(f"real-image data not present ({path}); it lives in the project's shared data folder")
    return path
