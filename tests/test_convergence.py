"""Convergence on a real photograph (DIV2K crop from the shared data; skipped when absent)."""

import torch

from finer.models import build_model
from finer.tasks.image import ImageTask, load_image
from finer.train import TrainConfig, fit


def test_finer_fits_a_real_crop_above_30_db(shared_images):
    image = load_image(shared_images / "00.png", crop=256, size=48)
    net = build_model("finer", 2, 3, width=64, hidden_layers=2, seed=0)
    task = ImageTask(image, (-1.0, 1.0), torch.device("cpu"))
    state = fit(net, task, TrainConfig(steps=300, lr=net.config.lr, eval_every=300), progress=False)
    assert state.history[-1]["eval_psnr"] > 30.0
