"""Shared fixtures: small real images (scikit-image's samples) and the optional ../shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
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


class CallingRecorder:
    """A stand-in for CUDA-graph recording on the CPU: "recording" runs nothing and every replay
    runs the step's Python again, so the loop's bookkeeping around a recorded step (warm-up count,
    the learning rate as a tensor, the loss copied out of the replayed output) can be checked here."""

    records = 0

    def __init__(self, device):
        self.device = device

    def warmup(self, fn):
        return fn()

    def record(self, fn):
        CallingRecorder.records += 1
        out = torch.zeros(())
        return (lambda: out.copy_(fn())), out


@pytest.fixture
def cpu_recorder(monkeypatch):
    from finer import train

    monkeypatch.setitem(train.GRAPH_RECORDERS, "cpu", CallingRecorder)
    CallingRecorder.records = 0
    return CallingRecorder
