"""NeRF pieces against closed forms, and a tiny end-to-end run on a scene the test writes."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finer.cli import main
from finer.errors import FinerError
from finer.tasks import nerf as N

LEGO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nerf" / "lego"


def test_ray_directions_of_a_known_camera():
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    origins, dirs = N.camera_rays(3, 3, 2.0, pose)
    assert torch.allclose(origins, torch.tensor([1.0, 2.0, 3.0]).expand(9, 3))
    torch.testing.assert_close(dirs[4], torch.tensor([0.0, 0.0, -1.0]))  # the centre pixel looks down -z
    corner = torch.tensor([-1.0 / 2.0, 1.0 / 2.0, -1.0])  # top-left pixel centre: x left, y up
    torch.testing.assert_close(dirs[0], corner / corner.norm())
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    pose[:3, :3] = rot
    torch.testing.assert_close(N.camera_rays(3, 3, 2.0, pose)[1][0], rot @ (corner / corner.norm()))


def test_constant_density_slab_has_the_closed_form_transmittance():
    sigma_value, thickness = 1.7, 1.0

    def slab(points):  # density sigma_value for |z| < 0.5, red
        inside = (points[..., 2].abs() < thickness / 2).float()
        rgb = torch.tensor([1.0, 0.0, 0.0]).expand(*points.shape[:-1], 3)
        return sigma_value * inside, rgb

    origins = torch.tensor([[0.0, 0.0, 2.0], [0.3, -0.2, 2.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = N.render_rays(slab, origins, dirs, near=1.0, far=3.0, samples=4000)
    trans = math.exp(-sigma_value * thickness)
    torch.testing.assert_close(out["opacity"], torch.full((2,), 1 - trans), atol=2e-3, rtol=0)
    expected = torch.tensor([1.0, trans, trans])  # red behind the slab's transmittance, white background
    torch.testing.assert_close(out["rgb"], expected.expand(2, 3), atol=2e-3, rtol=0)
    # the expected depth of the slab's light: 1.5 + E[x | x in [0, 1]] under density sigma e^{-sigma x}
    mean_x = 1 / sigma_value - thickness * trans / (1 - trans)
    torch.testing.assert_close(out["depth"] / out["opacity"], torch.full((2,), 1.5 + mean_x), atol=5e-3, rtol=0)


def test_importance_samples_follow_the_weights():
    t = torch.linspace(2, 6, 65).expand(3, 65)
    weights = torch.zeros(3, 65)
    weights[:, 40] = 1.0  # all mass in one sample: its bin, around t[40] = 4.5
    fine = N.importance(t, weights, 128, perturb=True, generator=torch.Generator().manual_seed(0))
    assert fine.shape == (3, 128)
    inside = ((fine > 4.4375) & (fine < 4.5625)).float().mean()
    assert inside > 0.95


def test_orbit_cameras_look_at_the_origin():
    for pose in N.orbit_poses(5, radius=4.0, elevation_deg=30.0):
        eye, forward = pose[:3, 3], -pose[:3, 2]
        np.testing.assert_allclose(forward, -eye / np.linalg.norm(eye), atol=1e-6)
        assert np.linalg.norm(eye) == pytest.approx(4.0) and eye[2] == pytest.approx(2.0)
        np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-6)


def _scene(root: Path, size: int = 16) -> Path:
    """A Blender-format scene: a two-coloured ball seen by orbiting cameras (drawn analytically)."""
    angle = 0.69
    focal = 0.5 * size / math.tan(0.5 * angle)
    for split, count in (("train", 8), ("test", 2)):
        (root / split).mkdir(parents=True)
        frames = []
        for k, pose in enumerate(N.orbit_poses(count, 4.0, 20.0 + 10 * (split == "test"))):
            o, d = N.camera_rays(size, size, focal, torch.from_numpy(pose))
            b = (o * d).sum(-1)
            disc = b * b - ((o * o).sum(-1) - 0.8 ** 2)
            hit = (disc > 0).numpy()  # the ray meets a ball of radius 0.8
            x = (o + d * (-b - disc.clamp(min=0).sqrt())[:, None])[:, 0].numpy()  # where it meets it
            rgba = np.zeros((size * size, 4), np.uint8)
            rgba[hit & (x >= 0)] = (90, 120, 200, 255)  # blue half and orange half
            rgba[hit & (x < 0)] = (230, 140, 40, 255)
            Image.fromarray(rgba.reshape(size, size, 4), "RGBA").save(root / split / f"r_{k}.png")
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": pose.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return root


def test_loader_composites_on_white_and_spreads_views(tmp_path):
    scene = _scene(tmp_path / "ball")
    views = N.load_views(scene, "train", views=3)
    assert views.names == ["r_0", "r_4", "r_7"] and views.images.shape == (3, 16, 16, 3)
    assert views.focal == pytest.approx(0.5 * 16 / math.tan(0.345))
    assert views.images.max() == 1.0  # the transparent background became white
    assert N.load_views(scene, "train", downscale=2).images.shape == (8, 8, 8, 3)
    with pytest.raises(FinerError, match="not a Blender scene"):
        N.load_views(tmp_path, "train")
    with pytest.raises(FinerError, match="scene folder not found"):
        N.load_views(tmp_path / "nope", "train")


def test_a_frame_path_gets_png_appended_as_the_official_loaders_do(tmp_path):
    scene = _scene(tmp_path / "ball")
    meta = json.loads((scene / "transforms_train.json").read_text())
    (scene / "train" / "r_0.png").rename(scene / "train" / "r_0.v1.png")  # a dot in the name: not a suffix
    (scene / "train" / "r_1.png").rename(scene / "train" / "r_1.jpg.png")
    (scene / "train" / "r_2.png").rename(scene / "train" / "r_2.jpg")  # an image suffix: the file as named
    for i, path in ((0, "./train/r_0.v1"), (1, "./train/r_1.jpg.png"), (2, "./train/r_2.jpg")):
        meta["frames"][i]["file_path"] = path
    (scene / "transforms_train.json").write_text(json.dumps(meta))
    views = N.load_views(scene, "train", views=None)
    assert views.names[:4] == ["r_0.v1", "r_1.jpg", "r_2", "r_3"] == N.split_names(scene, "train")[:4]
    assert views.files[0] == scene / "train" / "r_0.v1.png" and views.files[2] == scene / "train" / "r_2.jpg"


def test_a_scene_inside_the_out_folder_is_not_written_over(tmp_path, capsys):
    """A scene folder named test/ inside --out holds test/r_0.png, as the run's own test pictures are named."""
    root = tmp_path / "ds"
    scene = _scene(root / "test")
    meta = json.loads((scene / "transforms_test.json").read_text())
    for frame in meta["frames"]:  # the views beside the transforms files, as some exports keep them
        name = Path(frame["file_path"]).name
        (scene / "test" / f"{name}.png").rename(scene / f"{name}.png")
        frame["file_path"] = f"./{name}"
    (scene / "transforms_test.json").write_text(json.dumps(meta))
    before = (scene / "r_0.png").read_bytes()
    assert main(["fit", "nerf", str(scene), "--views", "2", "--test-views", "2", "--steps", "1", "--rays", "16",
                 "--samples", "4", "--fine", "0", "--width", "8", "--out", str(root), "--overwrite", "--quiet"]) == 2
    assert "the run's test/r_0.png is the scene's" in capsys.readouterr().err
    assert (scene / "r_0.png").read_bytes() == before and not (root / "config.json").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.update(frames=[]), "lists no frames"),
    (lambda meta: meta["frames"][0].pop("file_path"), "frame 0 has no file_path"),
    (lambda meta: meta["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]), "transform_matrix of 4 x 4"),
    (lambda meta: meta["frames"][0].update(transform_matrix="eye"), "transform_matrix of 4 x 4"),
])
def test_malformed_scenes_are_named_in_one_line(tmp_path, edit, message, capsys):
    scene = _scene(tmp_path / "ball")
    meta = json.loads((scene / "transforms_train.json").read_text())
    edit(meta)
    (scene / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(FinerError, match=message):
        N.load_views(scene, "train", views=None)
    with pytest.raises(FinerError, match="leaves nothing of the 16x16 view"):
        N.load_views(_scene(tmp_path / "other"), "train", downscale=17)
    fit = ["fit", "nerf", str(scene), "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"]
    for option, hint in (("width=8", "(--width)"), ("lr=1", "(--lr)"), ("hidden_layers=2", "depths are fixed")):
        assert main([*fit, "--option", option]) == 2
        err = capsys.readouterr().err
        assert hint in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_few_training_steps_lower_the_loss_and_the_run_renders(tmp_path, capsys, monkeypatch):
    scene = _scene(tmp_path / "ball")
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(scene), "--model", "finer", "--views", "8", "--downscale", "1", "--steps", "300",
                 "--rays", "256", "--samples", "16", "--fine", "8", "--width", "32", "--lr", "2e-3",
                 "--test-views", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()  # stdout holds the result alone; the progress lines go to stderr
    assert json.loads(printed.out)["out"] == str(out) and "8 training views of 16x16" in printed.err
    curve = [float(line.split(",")[1]) for line in (out / "curve.csv").read_text().splitlines()[1:]]
    assert np.mean(curve[-10:]) < 0.5 * np.mean(curve[:5])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["views"]) == 2
    # named as the image and SDF records name them
    assert (metrics["steps"], metrics["steps_planned"], metrics["width"], metrics["seed"]) == (300, 300, 32, 0)
    assert metrics["seconds"] > 0 and "train_seconds" not in metrics
    assert "ground truth (right)" in metrics["pictures"]["test/VIEW.png"]  # the pictures say what they show
    # 16-pixel views (and maybe no LPIPS weights installed): no LPIPS, and the reason is recorded
    assert metrics["test_lpips"] is None and "LPIPS" in metrics["test_lpips_note"]
    test = N.load_views(scene, "test")
    white = np.mean([-10 * np.log10(np.mean((1.0 - im) ** 2)) for im in test.images])  # empty scene
    assert metrics["test_psnr"] > white + 2
    assert (out / "test" / "r_1.png").is_file() and (out / "test" / "r_1_depth.png").is_file()
    capsys.readouterr()
    assert main(["render", "nerf", str(out), "--frames", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "turntable" / n) for n in ("turntable.gif", "turntable_depth.gif")]
    gif = Image.open(out / "turntable" / "turntable.gif")
    assert gif.size == (16, 16) and gif.n_frames >= 2  # (Pillow merges identical frames)
    # a given --out folder's turntables are replaced only with --overwrite (the run's own turntable/ always)
    assert main(["render", "nerf", str(out), "--frames", "2", "--out", str(tmp_path / "tt"), "--quiet"]) == 0
    first = (tmp_path / "tt" / "turntable.gif").read_bytes()
    assert main(["render", "nerf", str(out), "--frames", "3", "--out", str(tmp_path / "tt"), "--quiet"]) == 2
    assert "holds an earlier turntable (turntable.gif, turntable_depth.gif)" in capsys.readouterr().err
    assert (tmp_path / "tt" / "turntable.gif").read_bytes() == first
    assert main(["render", "nerf", str(out), "--frames", "3", "--out", str(tmp_path / "tt"), "--overwrite",
                 "--quiet"]) == 0
    assert main(["render", "nerf", str(out), "--frames", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["render", "nerf", str(tmp_path), "--quiet"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["render", "nerf", str(out), "--out", str(tmp_path / "tt.gif"), "--quiet"]) == 2
    assert "it is the folder that gets turntable.gif" in capsys.readouterr().err
    assert main(["render", "nerf", str(out), "--elevation", "nan", "--quiet"]) == 2
    assert "elevation is in degrees" in capsys.readouterr().err
    assert main(["render", "nerf", str(out), "--scale", "100000", "--out", str(tmp_path / "big"), "--quiet"]) == 2
    assert "use a smaller --scale or fewer --frames" in capsys.readouterr().err and not (tmp_path / "big").exists()
    # a scale that rounds the size keeps the run's field of view: the focal follows the rounded width
    seen, render_view = [], N.Renderer.render_view
    monkeypatch.setattr(N.Renderer, "render_view", lambda self, h, w, focal, *rest: seen.append((h, w, focal))
                        or render_view(self, h, w, focal, *rest))
    assert main(["render", "nerf", str(out), "--scale", "0.3", "--frames", "1", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    focal = json.loads((out / "config.json").read_text())["focal"]
    assert seen == [(5, 5, pytest.approx(focal * 5 / 16))]  # (0.3 x 16 = 4.8 pixels, drawn as 5)


@pytest.mark.skipif(not LEGO.is_dir(), reason="the shared lego scene (../shared/data/nerf/lego) is absent")
def test_lego_cameras():
    views = N.load_views(LEGO, "train", views=25, downscale=2)
    assert views.images.shape == (25, 200, 200, 3)
    assert views.focal == pytest.approx(0.5 * 200 / math.tan(0.5 * 0.6911112070083618))
    radii = np.linalg.norm(views.poses[:, :3, 3], axis=1)
    np.testing.assert_allclose(radii, 4.0311, atol=1e-3)  # cameras on a sphere around the object


def test_overwrite_removes_the_earlier_runs_test_views_only_and_the_scene_is_not_an_out(tmp_path, capsys):
    scene = _scene(tmp_path / "ball")
    out = tmp_path / "run"
    fit = ["fit", "nerf", str(scene), "--views", "2", "--downscale", "1", "--steps", "2", "--rays", "32",
           "--samples", "4", "--fine", "0", "--width", "8", "--fused", "off", "--quiet"]
    assert main([*fit, "--test-views", "2", "--out", str(out)]) == 0
    assert "views_note" not in json.loads((out / "config.json").read_text())
    assert capsys.readouterr().err == ""
    (out / "test" / "mine.png").write_bytes(b"the user's")
    assert main([*fit, "--test-views", "1", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "test").iterdir()) == ["mine.png", "r_0.png", "r_0_depth.png"]
    # a pair of the user's that is not a view of the scene stays, beside readable records and without them
    for name in ("photo.png", "photo_depth.png"):
        (out / "test" / name).write_bytes(b"the user's")
    assert main([*fit, "--test-views", "1", "--out", str(out), "--overwrite"]) == 0
    mine = ["mine.png", "photo.png", "photo_depth.png"]
    assert sorted(p.name for p in (out / "test").iterdir()) == [*mine, "r_0.png", "r_0_depth.png"]
    # an earlier run whose records cannot be read: its views are known by their pairs (VIEW.png, VIEW_depth.png)
    for name in ("r_1.png", "r_1_depth.png"):
        (out / "test" / name).write_bytes(b"an earlier run's view")
    (out / "config.json").write_text("{damaged")
    (out / "metrics.json").unlink()
    assert main([*fit, "--test-views", "1", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "test").iterdir()) == [*mine, "r_0.png", "r_0_depth.png"]
    capsys.readouterr()
    assert main([*fit, "--out", str(scene), "--overwrite"]) == 2
    assert "is the scene folder" in capsys.readouterr().err
    assert sorted(p.name for p in (scene / "test").iterdir()) == ["r_0.png", "r_1.png"]
    (tmp_path / "filed").mkdir()
    (tmp_path / "filed" / "test").write_text("a file where the test views go")
    assert main([*fit, "--out", str(tmp_path / "filed"), "--overwrite"]) == 2  # said before training
    assert "filed/test exists and is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "filed").iterdir()) == ["test"]
    # more views than the splits have: all of them, said on stderr and in config.json
    assert main([*fit, "--views", "20", "--test-views", "5", "--out", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: views 20: the train split of {scene} has 8 views; using all of them",
                   f"warning: test-views 5: the test split of {scene} has 2 views; using all of them"]
    config = json.loads((out / "config.json").read_text())
    assert len(config["train_views"]) == 8 and "test-views 5" in config["views_note"]
    # more rays per step than the views hold: what was used is what the records say
    rays = ["--rays" if a == "--rays" else "1000000" if prev == "--rays" else a for prev, a in zip(["", *fit], fit)]
    assert main([*rays, "--out", str(out), "--overwrite"]) == 0
    held = json.loads((out / "config.json").read_text())["run"]["rays"]
    assert held < 1_000_000 and json.loads((out / "metrics.json").read_text())["rays_per_step"] == held
    assert f"--rays 1000000: the 2 training views hold {held} rays; using {held} per step" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["run"]["scene"] == str(scene.resolve())


def test_compositing_weights_of_three_samples_in_closed_form():
    sigma = torch.tensor([[0.5, 2.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 1.5, 3.0]], dtype=torch.float64)
    rgb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]], dtype=torch.float64)
    # the intervals: 0.5, 1.5, and the last sample's up to the far end of the ray, 4 - 3
    a0, a1, a2 = 1 - math.exp(-0.5 * 0.5), 1 - math.exp(-2.0 * 1.5), 1 - math.exp(-1.0 * 1.0)
    expected = [a0, (1 - a0) * a1, (1 - a0) * (1 - a1) * a2]  # T_0 = 1: nothing in front of the first sample
    out = N.composite(sigma, rgb, t, far=4.0, background=0.0)
    torch.testing.assert_close(out["weights"][0], torch.tensor(expected, dtype=torch.float64), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(out["rgb"][0], torch.tensor(expected, dtype=torch.float64), rtol=1e-8, atol=1e-9)
    assert out["depth"][0].item() == pytest.approx(sum(w * d for w, d in zip(expected, [1.0, 1.5, 3.0])), rel=1e-8)
    empty = N.composite(torch.zeros(1, 3, dtype=torch.float64), rgb, t, far=4.0, background=0.25)
    torch.testing.assert_close(empty["rgb"][0], torch.full((3,), 0.25, dtype=torch.float64))  # background only


@pytest.mark.parametrize("density", [1e-3, 0.1, 1.0])
def test_a_thin_black_medium_lets_the_white_background_through(density):
    """A constant black medium of density s over the ray [2, 6] transmits exp(-s L) of the white behind it,
    as the Beer-Lambert law says, L = 6 - t_0 the length the samples cover from the first one, in the
    centre of the first of the coarse bins (the renderer had made every ray opaque at its last sample,
    since the soft-plus density is never 0)."""
    origins, dirs = torch.zeros(4, 3, dtype=torch.float64), torch.tensor([[0.0, 0.0, 1.0]] * 4, dtype=torch.float64)

    def medium(points):
        return torch.full(points.shape[:-1], density, dtype=points.dtype), torch.zeros_like(points)

    for samples, fine in ((64, 0), (32, 32)):
        out = N.render_rays(medium, origins, dirs, near=2.0, far=6.0, samples=samples, fine=fine)
        covered = 6.0 - (2.0 + 0.5 * 4.0 / samples)
        torch.testing.assert_close(out["rgb"], torch.full((4, 3), math.exp(-density * covered), dtype=torch.float64),
                                   rtol=1e-8, atol=1e-8)


def test_a_diverging_nerf_fit_exits_3_like_the_other_tasks(tmp_path, capsys):
    scene = _scene(tmp_path / "ball")
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(scene), "--model", "pemlp", "--views", "2", "--downscale", "2", "--steps", "100",
                 "--rays", "64", "--samples", "4", "--fine", "0", "--width", "16", "--lr", "1e4", "--test-views", "1",
                 "--fused", "off", "--out", str(out), "--quiet"]) == 3
    assert f"kept in {out}" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"



def test_a_step_or_a_render_pass_too_large_for_memory_is_refused_before_training(tmp_path, capsys):
    from finer.nerf_run import NeRFRunConfig, fit_nerf

    scene = _scene(tmp_path / "ball")
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(scene), "--views", "2", "--rays", "64", "--samples", "10000000", "--width", "16",
                 "--out", str(out), "--quiet"]) == 2
    assert "a step of 64 rays x 10000064 samples needs about" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(FinerError, match="rendering 100000000000 rays x 8 samples at once needs about"):
        fit_nerf(NeRFRunConfig(scene=str(scene), views=2, test_views=2, rays=64, samples=4, fine=4, width=16,
                               chunk=10**11), out)
    assert not out.exists()


def test_depth_pictures_show_empty_space_as_far():
    """A ray through nothing has expected depth 0 with opacity 0: drawn black (far), not white (near);
    an opaque surface at the near plane is white, one halfway grey."""
    from finer.nerf_run import _depth_picture

    origins = torch.zeros(3, 3)
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    walls = [None, 2.0, 4.0]  # a wall of high density from depth 2 (near) or 4 (halfway), or nothing

    def field(points):
        z = points[..., 2]
        wall = torch.tensor([w or 1e9 for w in walls])[:, None]
        return torch.where(z >= wall, 1e4, 0.0), torch.ones(*z.shape, 3)

    out = N.render_rays(field, origins, dirs, near=2.0, far=6.0, samples=400)
    picture = _depth_picture({"depth": out["depth"], "opacity": out["opacity"]}, 2.0, 6.0)[:, 0]
    np.testing.assert_allclose(picture, [0.0, 1.0, 0.5], atol=0.02)


def test_sigterm_while_training_stops_without_rendering_the_test_views(tmp_path, monkeypatch, capsys):
    """A stop during training ends the run after the current step: the test views (minutes at real sizes)
    are not rendered, and the records say the run is interrupted and unscored."""
    import os
    import signal

    scene = _scene(tmp_path / "ball")
    real_batch = N.NeRFTask.batch

    def batch(self, step):
        if step == 3:  # a scheduler's stop, mid-run
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(self, step)

    def no_rendering(*args, **kwargs):
        raise AssertionError("an interrupted run rendered its test views")

    monkeypatch.setattr(N.NeRFTask, "batch", batch)
    monkeypatch.setattr(N.Renderer, "render_view", no_rendering)
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(scene), "--model", "siren", "--views", "2", "--steps", "50", "--rays", "16",
                 "--samples", "4", "--fine", "0", "--width", "8", "--test-views", "2", "--fused", "off",
                 "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 3 <= metrics["steps"] < 50 and metrics["test_psnr"] is None
    assert metrics["width"] == 8 and metrics["seed"] == 0 and metrics["params"] > 0  # as a complete run records
    assert f"keeps the network of step {metrics['steps']}" in err and "unscored" in err
    assert (out / "checkpoint.pt").is_file() and not list((out / "test").glob("*.png"))


@pytest.mark.parametrize("spoil, message", [
    (lambda meta, root: meta.update(camera_angle_x=0.0), "camera_angle_x is the horizontal field of view"),
    (lambda meta, root: meta.update(camera_angle_x=4.0), "between 0 and pi; got 4.0"),
    (lambda meta, root: meta["frames"][1].update(transform_matrix=[[0, 0, 0, 1]] * 3 + [[0, 0, 0, 1]]),
     "frame 1 (./train/r_1) has a transform_matrix whose rotation"),
    (lambda meta, root: Image.new("RGBA", (8, 8)).save(root / "train" / "r_2.png"),
     "r_2.png is 8x8, the split's first view 16x16"),
    (lambda meta, root: meta["frames"][1].update(file_path="./other/r_0"), "several views are named r_0"),
    (lambda meta, root: meta["frames"][1].update(  # flattened along z: singular whatever its overall scale
        transform_matrix=[[1e-3, 0, 0, 1], [0, 1e-3, 0, 0], [0, 0, 1e-9, 4], [0, 0, 0, 1]]),
     "rotation (the upper-left 3 x 3) is singular"),
])
def test_a_spoiled_scene_is_refused_naming_what_is_wrong(tmp_path, spoil, message):
    scene = _scene(tmp_path / "ball")
    (scene / "other").mkdir()
    Image.open(scene / "train" / "r_0.png").save(scene / "other" / "r_0.png")
    meta = json.loads((scene / "transforms_train.json").read_text())
    spoil(meta, scene)
    (scene / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(FinerError, match=re.escape(message)):
        N.load_views(scene, "train")


def test_16_bit_grey_views_are_scaled_by_their_format(tmp_path):
    """A 16-bit PNG view reads as the 8-bit one would (65535 is white), not saturated to white."""
    scene = _scene(tmp_path / "ball")
    grey8 = np.asarray(Image.open(scene / "train" / "r_0.png").convert("L"))
    Image.fromarray(grey8.astype(np.uint16) * 257).save(scene / "train" / "r_0.png")  # I;16: same greys
    assert Image.open(scene / "train" / "r_0.png").mode.startswith("I")
    view = N.load_views(scene, "train", views=1).images[0]
    np.testing.assert_allclose(view, np.repeat(grey8[..., None] / 255.0, 3, -1), atol=1e-6)
    assert view.min() < 0.9  # the ball is there, not a white picture


def test_a_scaled_camera_rotation_is_accepted(tmp_path):
    """Non-singularity is judged scale-free: a rotation scaled by 0.01 (det 1e-6) gives the same rays."""
    scene = _scene(tmp_path / "ball")
    meta = json.loads((scene / "transforms_train.json").read_text())
    pose = np.array(meta["frames"][0]["transform_matrix"])
    pose[:3, :3] *= 0.01
    meta["frames"][0]["transform_matrix"] = pose.tolist()
    (scene / "transforms_train.json").write_text(json.dumps(meta))
    views = N.load_views(scene, "train", views=1)
    np.testing.assert_allclose(views.poses[0][:3, :3], pose[:3, :3], rtol=1e-6)
