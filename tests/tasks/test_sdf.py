"""SDF pipeline on meshes made by trimesh: distances, sampling, extraction, metrics, errors."""

import warnings

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.distance import cdist

from finer.errors import FinerError, FinerWarning
from finer.tasks import sdf as S


class SphereField(torch.nn.Module):
    """The exact SDF of a sphere, standing in for a trained network."""

    def __init__(self, radius):
        super().__init__()
        self.radius = radius

    def forward(self, x):
        return x.norm(dim=-1, keepdim=True) - self.radius


@pytest.fixture(scope="module")
def box():
    return trimesh.creation.box(extents=(0.4, 0.6, 0.8))


def test_signed_distance_of_known_points(box):
    index = S.SurfaceIndex(box, 100_000, seed=0)
    q = np.array([[0, 0, 0], [0.3, 0, 0], [0.2005, 0.1, 0.1], [0, 0, 0.5], [0, -0.29, 0]])
    expected = [-0.2, 0.1, 0.0005, 0.1, -0.01]
    np.testing.assert_allclose(index.signed_distance(q), expected, atol=2e-3)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    pts = np.random.default_rng(0).uniform(-0.45, 0.45, (500, 3))
    got = S.SurfaceIndex(sphere, 200_000).signed_distance(pts)
    np.testing.assert_allclose(got, np.linalg.norm(pts, axis=1) - 0.3, atol=3e-3)


def test_far_signs_are_not_fooled_by_a_stray_component():
    """A sphere plus a small detached sphere with inward-facing normals (as scans have): the
    normal of the nearest sample calls a whole region around the stray piece inside; the flood fill
    does not."""
    big = trimesh.creation.icosphere(subdivisions=4, radius=0.25)
    stray = trimesh.creation.icosphere(subdivisions=2, radius=0.03)
    stray.apply_translation([0.38, 0.0, 0.0])
    stray.invert()
    mesh = trimesh.util.concatenate([big, stray])
    index = S.SurfaceIndex(mesh, 100_000, seed=0)
    pts = S.grid_points(40)
    d_big = np.linalg.norm(pts, axis=1) - 0.25
    d_stray = np.linalg.norm(pts - [0.38, 0, 0], axis=1) - 0.03
    far = (np.abs(d_big) > 0.03) & (np.abs(d_stray) > 0.03)
    truth = (d_big < 0) | (d_stray < 0)
    got = S.inside(index, pts, near=6.0 / 39)
    assert np.array_equal(got[far], truth[far])
    sdf = index.signed_distance(pts[far])
    assert np.array_equal(sdf < 0, truth[far])
    by_normal = np.einsum("ij,ij->i", pts[far] - index.points[index.nearest(pts[far])[1]],
                          index.normals[index.nearest(pts[far])[1]]) < 0
    assert (by_normal != truth[far]).sum() > 100  # the official test alone gets these wrong


@pytest.mark.parametrize("inside_out", [False, True], ids=["facing-out", "all-faces-reversed"])
def test_the_cavity_of_a_hollow_solid_is_outside(tmp_path, inside_out):
    """A ball with a spherical cavity (an inner surface whose normals face into it): the flood fill alone
    called the cavity inside, as enclosed; its region takes the side its bounding normals give (the inner
    body lies in the outer one's solid: not turned as the mesh is read; with every face reversed, the mesh
    is turned as a whole, the cavity facing in again)."""
    inner_radius = 0.2
    outer = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    inner = trimesh.creation.icosphere(subdivisions=4, radius=inner_radius)
    inner.invert()
    hollow = trimesh.util.concatenate([outer, inner])
    if inside_out:
        hollow.invert()
    hollow.export(tmp_path / "hollow.obj")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if inside_out else "error")  # (turned, and said so)
        index = S.SurfaceIndex(S.load_mesh(tmp_path / "hollow.obj"), 100_000, seed=0)
    pts = np.random.default_rng(2).uniform(-0.45, 0.45, (6000, 3))
    r = np.linalg.norm(pts, axis=1)
    true = np.maximum(r - 0.4, inner_radius - r)  # the shell between the spheres is the solid
    clear = np.abs(true) > 0.03
    assert (true[clear & (r < inner_radius)] > 0).sum() > 100
    np.testing.assert_allclose(index.signed_distance(np.zeros((1, 3))), [inner_radius], atol=3e-3)
    assert np.array_equal(index.signed_distance(pts[clear]) < 0, true[clear] < 0)
    assert np.array_equal(S.inside(index, pts[clear], near=0.05), true[clear] < 0)


@pytest.mark.parametrize("case", ["double-sided", "inverted-body", "body-in-body"])
def test_a_body_keeps_its_inside_whatever_its_normals(case, tmp_path):
    """A surface whose every face is also there reversed (an open mesh to trimesh: its outer regions are inside
    as the fill says); a separate body facing inward (turned out as the mesh is read); a body within a body,
    both facing out (inside: not a cavity)."""
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.25)
    if case == "double-sided":
        mesh = trimesh.Trimesh(ball.vertices, np.concatenate([ball.faces, ball.faces[:, ::-1]]), process=False)
        centres, radii = [np.zeros(3)], [0.25]
    elif case == "inverted-body":
        small = trimesh.creation.icosphere(subdivisions=4, radius=0.1).apply_translation([0.33, 0, 0])
        small.invert()
        trimesh.util.concatenate([ball.copy().apply_translation([-0.1, 0, 0]), small]).export(tmp_path / "two.obj")
        with pytest.warns(FinerWarning, match="two.obj: 1 of its bodies face inward .* and lie inside no other"):
            mesh = S.load_mesh(tmp_path / "two.obj")
        centres, radii = [np.array([-0.1, 0, 0]), np.array([0.33, 0, 0])], [0.25, 0.1]
    else:  # a ball inside a larger one, both facing out: nothing there is a cavity
        big = trimesh.creation.icosphere(subdivisions=4, radius=0.42)
        mesh = trimesh.util.concatenate([big, ball])
        centres, radii = [np.zeros(3)], [0.42]
    index = S.SurfaceIndex(mesh, 100_000, seed=0)
    pts = np.random.default_rng(4).uniform(-0.45, 0.45, (6000, 3))
    true = np.min([np.linalg.norm(pts - c, axis=1) - r for c, r in zip(centres, radii)], axis=0)
    near = np.min([np.abs(np.linalg.norm(pts - c, axis=1) - r) for c, r in zip(centres, radii)]
                  + ([np.abs(np.linalg.norm(pts, axis=1) - 0.25)] if case == "body-in-body" else []), axis=0)
    clear = near > 0.03
    assert (true[clear] < 0).sum() > 100
    assert np.array_equal(S.inside(index, pts[clear], near=0.05), true[clear] < 0)


def test_a_ball_in_a_cavity_facing_in_is_turned_out_and_the_cavity_stays(tmp_path, monkeypatch):
    """A hollow ball (its inner surface facing into the cavity) with a small ball floating in the cavity that
    faces in: the small one lies in no solid (the others' winding numbers cancel there), so it is turned out;
    the cavity's surface lies in the outer ball's solid, so it stays."""
    outer = trimesh.creation.icosphere(subdivisions=4, radius=0.45)
    cavity = trimesh.creation.icosphere(subdivisions=4, radius=0.35)
    cavity.invert()
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    ball.invert()
    trimesh.util.concatenate([outer, cavity, ball]).export(tmp_path / "nest.obj")
    with pytest.warns(FinerWarning, match="nest.obj: 1 of its bodies face inward"):
        mesh = S.load_mesh(tmp_path / "nest.obj")
    index = S.SurfaceIndex(mesh, 100_000, seed=0)
    q = np.array([[0, 0, 0], [0.2, 0, 0], [0.4, 0, 0]])
    np.testing.assert_allclose(index.signed_distance(q), [-0.1, 0.1, -0.05], atol=4e-3)
    monkeypatch.setattr(S, "WINDING_BUDGET", 0)  # a mesh of too many bodies facing in to test them all
    with pytest.warns(FinerWarning, match="2 of its bodies face inward .* too many to test .* left as they are"):
        S.load_mesh(tmp_path / "nest.obj")


@pytest.mark.parametrize("samples", [3_000, 20_000])
def test_sparse_samples_still_enclose_the_inside(samples):
    """Few surface samples leave gaps wider than their mean spacing; a shell grown by the spacing alone
    leaked there, and the whole inside of the mesh came out outside (wrong ground truth, wrong IoU)."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    index = S.SurfaceIndex(sphere, samples, seed=0)
    pts = np.random.default_rng(1).uniform(-0.45, 0.45, (4000, 3))
    true = np.linalg.norm(pts, axis=1) - 0.3
    clear = np.abs(true) > 0.05  # off the shell, where the fill answers
    assert (true[clear] < 0).sum() > 200
    assert np.array_equal(index.signed_distance(pts[clear]) < 0, true[clear] < 0)
    assert np.array_equal(S.inside(index, pts[clear], near=0.05), true[clear] < 0)


def test_a_closed_mesh_whose_inside_is_not_found_is_refused(monkeypatch):
    monkeypatch.setattr(S.SurfaceIndex, "_cover", lambda self, mesh, seed: 0.0)  # no second, wider shell
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    with pytest.raises(FinerError, match="inside of this closed mesh was not found: 3000 surface samples .* "
                                         "use more surface samples"):
        S.SurfaceIndex(sphere, 3_000, seed=0)
    monkeypatch.undo()
    # closed parts that overlap (their volumes add up to more than their union's): found, not refused
    parts = [trimesh.creation.icosphere(subdivisions=3, radius=0.3).apply_translation([dx, 0, 0])
             for dx in (-0.02, 0.0, 0.02)]
    index = S.SurfaceIndex(trimesh.util.concatenate(parts), 50_000, seed=0)
    assert index.signed_distance(np.zeros((1, 3)))[0] < -0.25


def test_fast_occupancy_agrees_with_signed_distance(box):
    index = S.SurfaceIndex(box, 50_000)
    grid = S.grid_points(24)
    fast = S.inside(index, grid, near=6 / 23)
    truth = np.all(np.abs(grid) < np.array([0.2, 0.3, 0.4]), axis=1)
    assert (fast == truth).mean() > 0.99
    # the shortcuts (flood fill alone off the shell, a coarse subset far from the samples) change nothing
    # against the full test with every point's exact nearest sample
    torus = S.SurfaceIndex(trimesh.creation.torus(0.3, 0.1), 50_000)
    for idx, q in ((index, grid), (torus, S.grid_points(40))):
        assert np.array_equal(S.inside(idx, q, near=6 / 23), idx.is_inside(q, idx.tree.query(q)[1]))


def test_normalisation_round_trip(box):
    moved = box.copy()
    moved.apply_translation([5, -3, 2])
    moved.apply_scale(40)
    unit, norm = S.normalize(moved)
    assert np.allclose(unit.bounds.max(), 0.45) and np.isclose((unit.bounds[1] - unit.bounds[0]).max(), 0.9)
    np.testing.assert_allclose(norm.to_mesh(unit.vertices), moved.vertices, atol=1e-9)


def test_training_pool_statistics(box):
    unit, _ = S.normalize(box)
    index = S.SurfaceIndex(unit, 100_000)
    points, sdf = S.training_pool(unit, index, 20_000, seed=0)
    coarse, fine = np.abs(sdf[:10_000]), np.abs(sdf[10_000:])
    assert np.all(np.abs(points) <= 0.5)
    # Laplace noise of scale b has mean |x| = b per axis: distances of order 1e-3 and 1e-1
    assert 3e-4 < np.median(fine) < 3e-3
    assert 0.03 < np.median(coarse) < 0.2


def test_task_batches_half_coarse_half_fine(box):
    points = np.random.rand(100, 3)
    task = S.SDFTask(points, np.arange(100.0), torch.device("cpu"), batch_size=10, coarse_weight=0.01)
    x, target = task.batch(0)
    assert x.shape == (10, 3) and target.shape == (10, 2)
    assert torch.all(target[:5, 0] < 50) and torch.all(target[5:, 0] >= 50)
    assert torch.allclose(target[:, 1], torch.tensor([0.01] * 5 + [1.0] * 5))
    loss = task.loss(torch.zeros(10, 1), target)
    assert loss.item() == pytest.approx(float((target[:, 1] * target[:, 0] ** 2).mean()))


def test_extraction_in_slabs_matches_the_analytic_sphere():
    field = SphereField(0.3)
    mesh = S.extract_surface(field, 48, "cpu", slab=8)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.3).max() < 1 / 47  # within one grid step
    assert mesh.is_watertight  # the slabs are stitched
    assert S.extract_surface(SphereField(0.9), 16, "cpu") is None  # no zero crossing inside the box


def test_chamfer_against_brute_force():
    a = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    b = a.copy()
    b.apply_translation([0.02, 0, 0])
    pa, _ = trimesh.sample.sample_surface(a, 800, seed=5)
    pb, _ = trimesh.sample.sample_surface(b, 800, seed=6)
    d = cdist(pa, pb)
    expected = (d.min(1) ** 2).mean() + (d.min(0) ** 2).mean()
    assert S.chamfer_distance(a, b, samples=800, seed=5) == pytest.approx(expected, rel=1e-9)
    assert S.chamfer_distance(a, a, samples=800) < S.chamfer_distance(a, b, samples=800)


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert S.occupancy_iou(a, b) == pytest.approx(4 / 12)
    assert S.occupancy_iou(a, a) == 1.0


def test_grid_values_in_slabs_are_the_field_on_the_lattice():
    """40 slices go in two slabs (32 + 8); any z-range gives the same values as the whole grid."""
    field, r = SphereField(0.3), 40
    whole = S.evaluate_grid(field, r, "cpu")
    expected = (np.linalg.norm(S.grid_points(r), axis=1) - 0.3).reshape(r, r, r)
    np.testing.assert_allclose(whole, expected, atol=1e-6)
    np.testing.assert_array_equal(S.evaluate_grid(field, r, "cpu", (5, 39)), whole[:, :, 5:39])


def test_grid_iou_in_slabs_matches_the_whole_grid_and_the_analytic_overlap(box):
    """A sphere field against the box mesh: slab by slab (4 slices, a ragged last slab) gives the
    whole-grid count exactly, and both are close to the exact volumes' IoU."""
    index = S.SurfaceIndex(box, 100_000, seed=0)
    field, r = SphereField(0.25), 30
    whole = S.occupancy_iou(S.evaluate_grid(field, r, "cpu").reshape(-1) < 0,
                            S.inside(index, S.grid_points(r), near=6.0 / (r - 1)))
    assert S.grid_iou(field, index, r, "cpu", slab=4) == whole
    assert S.grid_iou(field, index, r, "cpu", values=S.evaluate_grid(field, r, "cpu")) == whole
    # sphere (radius 0.25) inside the box's 0.2 x 0.3 x 0.4 half-extents except two caps beyond |x| = 0.2
    cap = np.pi * 0.05**2 * (3 * 0.25 - 0.05) / 3
    sphere, cube = 4 / 3 * np.pi * 0.25**3, 0.4 * 0.6 * 0.8
    both = sphere - 2 * cap
    assert whole == pytest.approx(both / (sphere + cube - both), abs=0.03)


def test_bad_meshes(tmp_path):
    trimesh.PointCloud(np.random.rand(20, 3)).export(tmp_path / "cloud.ply")
    with pytest.raises(FinerError, match="point cloud"):
        S.load_mesh(tmp_path / "cloud.ply")
    (tmp_path / "text.obj").write_text("not a mesh\n")
    with pytest.raises(FinerError, match="empty or not a mesh"):
        S.load_mesh(tmp_path / "text.obj")
    with pytest.raises(FinerError, match="not found"):
        S.load_mesh(tmp_path / "missing.stl")


def test_a_face_that_names_a_missing_vertex_is_refused(tmp_path):
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    (tmp_path / "bad.ply").write_text(header + "element face 1\nproperty list uchar int vertex_indices\n"
                                      "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 50\n")
    with pytest.raises(FinerError, match="cannot read mesh .*bad.ply: a face refers to vertex 50, and there are 3"):
        S.load_mesh(tmp_path / "bad.ply")


@pytest.mark.parametrize("size", [3e-8, 1e-9, 1e6])
def test_a_mesh_in_any_units_keeps_its_vertices(tmp_path, size):
    """Corners are merged to 8 digits of the mesh's size (trimesh's 1e-8 is absolute: a sphere 3e-8 across
    lost three quarters of its vertices and was no longer closed; 1e-9 across failed with a division by 0)."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=size / 2)
    sphere.export(tmp_path / "small.stl")  # STL: every corner repeated, to be merged
    mesh = S.load_mesh(tmp_path / "small.stl")
    assert len(mesh.vertices) == len(sphere.vertices) and mesh.is_watertight


def test_a_mesh_inside_out_or_wound_both_ways_is_turned_to_face_out(tmp_path):

    inverted = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    inverted.invert()
    inverted.export(tmp_path / "inverted.obj")
    mixed = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    mixed.faces[::2] = mixed.faces[::2, ::-1]  # every other face the other way round
    mixed.export(tmp_path / "mixed.obj")
    with pytest.warns(FinerWarning, match="inverted.obj is inside out .* turned to face outward"):
        a = S.load_mesh(tmp_path / "inverted.obj")
    with pytest.warns(FinerWarning, match="mixed.obj: its faces were not all wound the same way .*, facing outward"):
        b = S.load_mesh(tmp_path / "mixed.obj")
    for mesh in (a, b):
        assert mesh.is_winding_consistent and mesh.volume == pytest.approx(4 / 3 * np.pi * 0.3**3, rel=0.05)
        index = S.SurfaceIndex(mesh, 20_000, seed=0)
        pts = np.random.default_rng(3).uniform(-0.45, 0.45, (2000, 3))
        true = np.linalg.norm(pts, axis=1) - 0.3
        clear = np.abs(true) > 0.02
        assert np.array_equal(index.signed_distance(pts[clear]) < 0, true[clear] < 0)


def test_an_open_mesh_wound_both_ways_is_left_as_it_is(tmp_path):
    """Rewound from an arbitrary first face, an open piece could come out all facing in (one flipped face of a
    sphere with a hole turned the whole solid into outside); it is left, with a warning, and keeps its inside."""

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    faces = np.delete(sphere.faces, 0, axis=0)
    faces[63] = faces[63, ::-1]
    trimesh.Trimesh(sphere.vertices, faces, process=False).export(tmp_path / "open.obj")
    with pytest.warns(FinerWarning, match="open.obj: its faces are not all wound the same way .* left as it is"):
        mesh = S.load_mesh(tmp_path / "open.obj")
    assert np.array_equal(mesh.faces, faces)
    index = S.SurfaceIndex(mesh, 50_000, seed=0)
    np.testing.assert_allclose(index.signed_distance(np.array([[0, 0, 0], [0.15, 0, 0], [0, 0.42, 0]])),
                               [-0.3, -0.15, 0.12], atol=5e-3)


def test_a_closed_mesh_whose_file_repeats_corners_is_watertight(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.stl")  # STL stores three corners per face
    assert not trimesh.load(tmp_path / "box.stl", process=False).is_watertight
    mesh = S.load_mesh(tmp_path / "box.stl")
    assert mesh.is_watertight and len(mesh.vertices) == 8 and len(mesh.faces) == 12
    corners = [f"v {x} {y} {z}" for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    quads = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]
    faces = [f"f {a}/{k * 4 + 1} {b}/{k * 4 + 2} {c}/{k * 4 + 3}\nf {a}/{k * 4 + 1} {c}/{k * 4 + 3} {d}/{k * 4 + 4}"
             for k, (a, b, c, d) in enumerate(quads)]  # each face its own texture corners: seams in OBJ
    uvs = [f"vt {u} {v}" for _ in quads for u, v in ((0, 0), (1, 0), (1, 1), (0, 1))]
    (tmp_path / "box.obj").write_text("\n".join(corners + uvs + faces) + "\n")
    assert not trimesh.load(tmp_path / "box.obj").is_watertight
    assert S.load_mesh(tmp_path / "box.obj").is_watertight


def test_evaluation_of_the_exact_field_scores_near_perfectly_and_its_inverse_near_zero(tmp_path):
    from finer.sdf_run import evaluate_sdf

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=2.0)
    unit, norm = S.normalize(mesh)
    radius = float(np.linalg.norm(unit.vertices, axis=1).mean())
    index = S.SurfaceIndex(unit, 40_000, seed=0)
    common = dict(resolution=48, iou_resolution=32, chamfer_samples=5000, device="cpu", out=tmp_path)
    exact = evaluate_sdf(SphereField(radius), index, unit, norm, **common)
    assert exact["iou"] > 0.9 and exact["chamfer"] < 1e-3
    exported = trimesh.load(tmp_path / "mesh.ply")  # written back in the mesh's own units
    assert np.abs(np.linalg.norm(exported.vertices, axis=1) - 2.0).max() < 0.1

    class Inverted(SphereField):
        def forward(self, x):
            return -super().forward(x)

    assert evaluate_sdf(Inverted(radius), index, unit, norm, **common)["iou"] < 0.2  # inside is where SDF < 0
