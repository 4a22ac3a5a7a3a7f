"""The pictures a run writes say what they show."""

import numpy as np
from PIL import Image

from finer.plots import error_map


def test_error_map_draws_each_pixel_once_beside_its_scale(tmp_path):
    target = np.zeros((160, 320, 3))
    pred = target.copy()
    pred[:, 160:] = 0.5  # the right half wrong by 0.5, the left half exact
    error_map(pred, target, tmp_path / "e.png", vmax=0.5)
    picture = np.asarray(Image.open(tmp_path / "e.png").convert("RGB")).astype(int)
    assert picture.shape[0] == 160 and picture.shape[1] > 320 + 40  # one pixel per pixel, and a colour bar
    left, right = picture[5:-5, 5:155], picture[5:-5, 165:315]
    assert (left.sum(axis=-1) < 30).all()  # inferno's bottom: near black
    assert (right.sum(axis=-1) > 600).all()  # its top: pale yellow
    assert len(np.unique(picture[:, 330:].reshape(-1, 3), axis=0)) > 50  # the bar's gradient and its labels


def test_the_library_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend (here: svg) stays when the library draws its figures."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import matplotlib; matplotlib.use('svg'); import numpy as np\n"
            "import finer.runs, finer.plots, finer.analysis.run, finer.bench.report, finer.bench.images, "
            "finer.render3d\n"
            "finer.plots.psnr_curve([{'step': 1, 'train_psnr': 10.0}], 'c.png', title='t')\n"
            "print(matplotlib.get_backend())")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
