"""3-D signed-distance fields of meshes: loading, sampling, ground truth, extraction, metrics.

Conventions (the paper's SDF protocol, from its official code): a mesh is normalised into
``[-0.45, 0.45]^3`` (its longest side spans 0.9) and the field is learned on ``[-0.5, 0.5]^3``; the
transform is kept so outputs can be put back in the mesh's own units. Signed distances are negative inside.

Ground truth: distance to the nearest of a dense set of surface samples. Close to the surface
(within two sample spacings) the point-to-plane distance along that sample's face normal is used,
so the fine samples (noise scale 1e-3) are not limited by the sample spacing.

The sign: near the surface (in a shell of voxels around the samples, on a 256^3 grid over the
box) from the nearest sample's face normal, as the official code does everywhere; away from it,
from a flood fill of that grid from the box's border (scipy's ``binary_fill_holes``), which the
normals cannot fool. The official normal test alone mislabels far points whose nearest sample lies
on a small inner component or a non-manifold fold: on the Stanford dragon (1,473 components) it
called 6,611 of 258,253 far grid points inside that the flood fill puts outside, which the network
then dutifully learned as tubes and blobs; on the watertight bunny both agree on every point.
A region the fill finds enclosed only by surfaces within the solid (nested) takes the side that the normals
of the samples nearest its border give by majority: the cavity of a hollow solid (an inner surface facing
into it) is outside, which the fill alone called inside; the regions next to the outer surfaces stay inside
whatever their normals (see :meth:`SurfaceIndex._sided`; a cavity behind a wall thinner than the shell too).
A mesh of bodies that overlap is read as
given: near a surface buried inside another body the sign is that surface's own (the union's surface would
take a mesh boolean).
An open surface (nothing enclosed) is all outside away from its shell. The shell is grown by two
sample spacings, and wider where that leaves gaps the fill would leak through (sparse samples); a
closed mesh whose fill still leaks is refused (see :meth:`SurfaceIndex._flood_fill`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from finer.errors import FinerError

SIGN_METHOD = ("near the surface: normal of the nearest surface sample (official approach); "
               "away from it: flood fill of a 256^3 voxel grid from the border, a region nested within the "
               "solid on the side the normals along its border give by majority")
OCCUPANCY_RESOLUTION = 256
HALF_EXTENT = 0.45
BOUND = 0.5


def load_mesh(path: str | os.PathLike, orient: bool = True):
    """Read any mesh trimesh reads (OBJ, PLY, STL, OFF, ...); clear errors for non-meshes. Corners at one
    position are merged, and a closed mesh's faces wound one way, facing out (:func:`_oriented`; ``orient``
    False: as they are, for a check that needs only the surface, such as its area)."""
    import trimesh

    path = Path(path)
    if not path.exists():
        raise FinerError(f"mesh file not found: {path}")
    if path.is_dir():
        raise FinerError(f"expected a mesh file, got a directory: {path}")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many kinds for a bad file
        raise FinerError(f"cannot read mesh {path}: {exc}") from None
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
        loaded = trimesh.util.concatenate(parts) if parts else trimesh.Trimesh()
    if isinstance(loaded, trimesh.PointCloud):
        raise FinerError(f"{path} is a point cloud (no faces); a surface mesh is needed")
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.vertices) == 0:
        raise FinerError(f"{path} is empty or not a mesh (no vertices read)")
    if len(loaded.faces) == 0:
        raise FinerError(f"{path} has vertices but no faces (a point cloud?); a surface mesh is needed")
    faces = np.asarray(loaded.faces)
    if faces.min() < 0 or faces.max() >= len(loaded.vertices):
        bad = faces.min() if faces.min() < 0 else faces.max()
        raise FinerError(f"cannot read mesh {path}: a face refers to vertex {bad}, and there are "
                         f"{len(loaded.vertices)} (numbered from 0)")
    used = np.asarray(loaded.vertices)[np.unique(faces)]
    bad = ~np.isfinite(used).all(axis=1)
    if bad.any():
        raise FinerError(f"{path} has {int(bad.sum())} vertices of its faces with non-finite coordinates (NaN or "
                         "infinite); repair the mesh")
    if np.abs(used).max() > 1e100:  # areas and normals overflow (their squares) long before float64's end
        raise FinerError(f"{path} has vertex coordinates up to {np.abs(used).max():.3g}, too large to compute with; "
                         "repair or rescale the mesh")
    if not loaded.area > 0:
        raise FinerError(f"{path} has zero surface area")
    # STL repeats each corner per face, OBJ per texture coordinate or normal: merged by position only,
    # a closed mesh is watertight. Positions equal to 8 digits of the mesh's size (trimesh's own tolerance,
    # 1e-8, is absolute: it merged a mesh a few 1e-8 across into a handful of vertices)
    extent = float(np.ptp(used, axis=0).max())
    loaded.merge_vertices(merge_tex=True, merge_norm=True, digits_vertex=8 - math.floor(math.log10(extent)))
    return _oriented(loaded, path) if orient else loaded


def _oriented(mesh, path: Path):
    """``mesh``, closed, with its faces wound one way (where they were not) and each body that lies in the solid
    of no other facing out (where its volume is negative: inside out); a body facing in within the solid is
    left as it is, a cavity. Each repair is said in a warning: the signs
    of the ground truth come from the face normals. An open mesh is left as it is (rewound from an arbitrary
    first face, a piece can come out all facing in, and nothing tells which way is out), with a warning where
    its faces disagree."""
    import warnings

    import trimesh

    from finer.errors import FinerWarning

    consistent = mesh.is_winding_consistent
    if not mesh.is_watertight:
        if not consistent:
            warnings.warn(f"{path}: its faces are not all wound the same way (their normals disagree across edges) "
                          "and it is not closed, so which way is out is unknown; left as it is: near each face the "
                          "sign follows that face's normal", FinerWarning, stacklevel=3)
        return mesh
    if not consistent:
        trimesh.repair.fix_winding(mesh)
    turned, untested = _turn_outer_bodies_out(mesh)
    if not consistent:
        warnings.warn(f"{path}: its faces were not all wound the same way (their normals disagree across "
                      "edges); rewound to agree with their neighbours, facing outward", FinerWarning, stacklevel=3)
    elif turned:
        warnings.warn(f"{path}" + (" is inside out (its faces face inward: negative volume)" if turned == "all" else
                                   f": {turned} of its bodies face inward (negative volume) and lie inside no other")
                      + "; turned to face outward", FinerWarning, stacklevel=3)
    if untested:
        warnings.warn(f"{path}: {untested} of its bodies face inward (negative volume) and were too many to test "
                      "for lying inside another (a cavity) or not (inside out): left as they are", FinerWarning,
                      stacklevel=3)
    return mesh


WINDING_BUDGET = 60_000_000
"""Triangle evaluations :func:`_turn_outer_bodies_out` may spend (about ten seconds on one core): the bodies
facing inward are tested largest first while it lasts; the rest are left as they are, and the warning says
how many."""


def _turn_outer_bodies_out(mesh) -> tuple[str | int, int]:
    """Invert the bodies (connected pieces) of a closed ``mesh`` whose volume is negative and which do not lie in
    the solid of the others (the others' winding number, median over up to 16 of the body's vertices, below
    1/2): an inside-out body, where a body facing in within the solid is a cavity and stays. Returns
    (``"all"`` where that was the whole mesh, else how many were turned; how many were left untested)."""
    import trimesh

    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    volumes = np.bincount(labels, weights=np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6)
    if volumes.sum() < 0:  # inside out as a whole (a hollow solid too: its cavity then faces in again)
        mesh.invert()
        volumes = -volumes
        if not (volumes < 0).any():
            return "all", 0
        tri = np.asarray(mesh.triangles, dtype=np.float64)  # (the others' winding numbers: of the turned faces)
    inward = np.flatnonzero(volumes < 0)
    if len(inward) == 0:
        return 0, 0
    faces = np.asarray(mesh.faces).copy()
    turned = untested = spent = 0
    for body in inward[np.argsort(volumes[inward])]:  # the largest (most negative) first
        mine = labels == body
        corners = np.unique(faces[mine])
        probe = np.asarray(mesh.vertices)[corners[:: max(1, len(corners) // 16)]]
        cost = len(probe) * int((~mine).sum())
        if spent + cost > WINDING_BUDGET:
            untested += 1
            continue
        spent += cost
        if np.median(_winding_numbers(probe, tri[~mine])) < 0.5:
            faces[mine] = faces[mine][:, ::-1]
            turned += 1
    if turned:
        mesh.faces = faces
    return turned, untested


def _winding_numbers(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """The winding number of a closed surface of ``triangles (F, 3, 3)`` around each of ``points (N, 3)``: +-1
    inside (the sign its orientation's), 0 outside (the solid angles of its triangles, van Oosterom and
    Strackee's formula, summed over 4 pi)."""
    out = np.empty(len(points))
    for i, p in enumerate(points):
        a, b, c = (triangles - p).transpose(1, 0, 2)
        la, lb, lc = (np.linalg.norm(v, axis=1) for v in (a, b, c))
        det = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", a, c) * lb \
            + np.einsum("ij,ij->i", b, c) * la
        out[i] = np.arctan2(det, den).sum() / (2 * np.pi)
    return out


@dataclass
class Normalization:
    """``unit = (mesh_units - center) * scale``; the inverse puts results back in mesh units."""

    center: list[float]
    scale: float

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - np.asarray(self.center)) * self.scale

    def to_mesh(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) / self.scale + np.asarray(self.center)


def normalize(mesh, half_extent: float = HALF_EXTENT):
    """A copy of ``mesh`` centred on its bounding box, longest side scaled to ``2 * half_extent``."""
    lo, hi = mesh.bounds
    center = (lo + hi) / 2
    scale = 2 * half_extent / float((hi - lo).max())
    norm = Normalization([float(c) for c in center], float(scale))
    unit = mesh.copy()
    unit.vertices = norm.to_unit(mesh.vertices)
    return unit, norm


def _workers() -> int:
    """Threads of a KD-tree query: PyTorch's (what the process was given; a benchmark's worker
    processes share the cores)."""
    return torch.get_num_threads()


class SurfaceIndex:
    """Dense surface samples with normals in a KD-tree: signed distance of any point."""

    def __init__(self, mesh, samples: int = 500_000, seed: int = 0):
        import trimesh

        points, faces = trimesh.sample.sample_surface(mesh, samples, seed=seed)
        self.points = np.asarray(points, dtype=np.float64)
        self.normals = np.asarray(mesh.face_normals[faces], dtype=np.float64)
        self.tree = cKDTree(self.points)
        self.spacing = math.sqrt(mesh.area / samples)
        # every k-th sample: far from the surface it is accurate enough on its own (see nearest)
        self.coarse_step = max(1, samples // 50_000)
        self.coarse = cKDTree(self.points[:: self.coarse_step])
        self.coarse_spacing = math.sqrt(mesh.area / len(self.coarse.data))
        self._flood_fill(OCCUPANCY_RESOLUTION, mesh, seed)
        self._check_enclosed(mesh)

    def _flood_fill(self, resolution: int, mesh, seed: int) -> None:
        """Voxels of the ``[-BOUND, BOUND]^3`` box: the shell around the samples (dilated enough to
        close gaps between samples and small holes) and the interior it encloses.

        The shell is grown by twice the mean sample spacing (6-connected steps). Where that leaves it
        open, which sparse samples do (their gaps are wider than the mean spacing, and 6-connected steps
        reach only ``1 / sqrt(3)`` as far diagonally), the flood fill leaks and points just inside the
        surface come out outside: the shell is then grown again, to the surface's largest distance
        from its samples in every direction. A closed mesh whose inside is still not found is refused."""
        self.resolution = resolution
        voxel = 2 * BOUND / resolution
        grow = max(1, math.ceil(2 * self.spacing / voxel))
        self._fill(grow)
        self.leaks = self._leaks(grow)
        if self.leaks:
            wider = math.ceil(math.sqrt(3) * self._cover(mesh, seed) / voxel)
            if wider > grow:
                self._fill(wider)
                self.leaks = self._leaks(wider)

    def _cover(self, mesh, seed: int) -> float:
        """The largest distance from the surface to its nearest sample, estimated on fresh samples."""
        import trimesh

        fresh, _ = trimesh.sample.sample_surface(mesh, min(len(self.points), 100_000), seed=seed + 7)
        return float(self.tree.query(np.asarray(fresh), workers=_workers())[0].max())

    def _fill(self, grow: int) -> None:
        from scipy import ndimage

        shell = np.zeros((self.resolution,) * 3, dtype=bool)
        shell[tuple(self._voxels(self.points).T)] = True
        self.grow = grow
        self.shell = ndimage.binary_dilation(shell, iterations=grow)
        self.enclosed = ndimage.binary_fill_holes(self.shell) & ~self.shell
        self.interior = self._sided(self.enclosed)

    def _sided(self, enclosed: np.ndarray, most: int = 200_000) -> np.ndarray:
        """The voxels of ``enclosed`` (cut off from the border by the shell) that are inside.

        A region that touches a piece of the shell the outside touches is inside, as the fill says, whatever
        the normals: the solid of a body, also of bodies that overlap (a plate pierced by pins: the buried
        surfaces' normals face into it), of an open scan's folds and inner pieces, of a double-sided surface.
        A region nested within the solid takes the side that the normals of the samples nearest to its voxels
        along the shell give by majority (``most`` of those voxels at most): the cavity of a hollow solid (an
        inner surface facing into it) is outside, a body within a body inside. A cavity behind a wall thinner
        than the shell touches the outer piece of shell, and is inside, as with the fill alone."""
        from scipy import ndimage

        labels, count = ndimage.label(enclosed)
        if count == 0:
            return enclosed
        outside = ~(enclosed | self.shell)  # (the fill's outside: reached from the border)
        pieces, _ = ndimage.label(self.shell)
        outer = np.isin(pieces, np.unique(pieces[ndimage.binary_dilation(outside) & self.shell]))
        nested = np.ones(count + 1, dtype=bool)
        nested[np.unique(labels[ndimage.binary_dilation(outer) & enclosed])] = False
        nested[0] = False
        if not nested.any():
            return enclosed
        rim = np.flatnonzero(nested[labels] & ndimage.binary_dilation(self.shell))
        rim = rim[:: max(1, math.ceil(len(rim) / most))]
        centres = (np.stack(np.unravel_index(rim, enclosed.shape), -1) + 0.5) * (2 * BOUND / self.resolution) - BOUND
        _, idx = self.nearest(centres)
        along = np.einsum("ij,ij->i", centres - self.points[idx], self.normals[idx])
        region = labels.ravel()[rim]
        votes = np.bincount(region, weights=(along < 0).astype(np.float64), minlength=count + 1)
        seen = np.bincount(region, minlength=count + 1)
        cavity = nested & (votes < seen / 2)
        return enclosed & ~cavity[labels]

    def _leaks(self, grow: int) -> bool:
        """Whether points just past the shell on the inner side of the samples (along their normals) are
        more often outside the fill than in what it enclosed: the fill leaked (or the surface encloses nothing).
        (What it enclosed, not the inside: behind a wall thinner than the shell lies a cavity.)"""
        step = max(1, len(self.points) // 4000)
        q = self.points[::step] - self.normals[::step] * ((grow + 1.5) * 2 * BOUND / self.resolution)
        enclosed, shell = self._look_up(q, self.enclosed), self._look_up(q, self.shell)
        return np.count_nonzero(~enclosed & ~shell) > np.count_nonzero(enclosed)

    def _check_enclosed(self, mesh) -> None:
        """A closed mesh whose fill still leaks (points just inside its samples come out outside more often
        than inside) was not sampled densely enough to close its shell: its ground truth would be wrong, so
        it is refused."""
        if self.leaks and mesh.is_watertight:
            raise FinerError(f"the inside of this closed mesh was not found: {len(self.points)} surface samples leave "
                             "gaps the flood fill leaks through; use more surface samples (--surface-samples)")

    def _voxels(self, q: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((q + BOUND) / (2 * BOUND) * self.resolution).astype(np.int64), 0, self.resolution - 1)

    def flood_fill_answer(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For points ``q``: whether the flood fill puts them inside (in an interior voxel) and whether they
        lie in the shell of voxels around the surface samples, where it cannot tell (both False outside the box)."""
        return self._look_up(q, self.interior), self._look_up(q, self.shell)

    def _look_up(self, q: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """The voxel values of ``grid`` at points ``q`` (False outside the box)."""
        v = self._voxels(q)
        return grid[v[:, 0], v[:, 1], v[:, 2]] & np.all(np.abs(q) <= BOUND, axis=1)

    def is_inside(self, q: np.ndarray, idx: np.ndarray, along: np.ndarray | None = None) -> np.ndarray:
        """Inside test of points ``q`` whose nearest sample index is ``idx`` (see the module doc): in the shell
        by the side of that sample's plane (``along``: the offsets along its normal, if already known),
        elsewhere by the flood fill."""
        filled, shell = self.flood_fill_answer(q)
        if along is None:
            along = np.einsum("ij,ij->i", q - self.points[idx], self.normals[idx])
        return np.where(shell, along < 0, filled)

    def nearest(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest dense sample of each point (distance, index).

        Points farther than 10 coarse spacings (50,000-sample subset; about 0.06 in the normalised
        frame) keep the subset's nearest sample, a small error that far out (on the bunny: median
        1e-4, at most 5 % of the distance); closer points search all dense samples, bounded by the
        subset's distance. Far points are coarse training samples (weight 1e-2) or occupancy queries.
        """
        dist, cidx = self.coarse.query(q, workers=_workers())
        idx = cidx * self.coarse_step
        near = np.flatnonzero(dist < 10 * self.coarse_spacing)
        if len(near):
            ub = dist[near].max() * (1 + 1e-9) + 1e-12
            dist[near], idx[near] = self.tree.query(q[near], distance_upper_bound=ub, workers=_workers())
        return dist, idx

    def signed_distance(self, query: np.ndarray, chunk: int = 262_144) -> np.ndarray:
        """Signed distance of ``(N, 3)`` points (negative inside), in the mesh's units."""
        query = np.asarray(query, dtype=np.float64)
        out = np.empty(len(query))
        for s in range(0, len(query), chunk):
            q = query[s : s + chunk]
            dist, idx = self.nearest(q)
            along = np.einsum("ij,ij->i", q - self.points[idx], self.normals[idx])
            sign = np.where(self.is_inside(q, idx, along), -1.0, 1.0)
            close = (dist < 2 * self.spacing) & (np.sign(along) == sign)
            out[s : s + chunk] = np.where(close, along, sign * dist)
        return out


def inside(index: "SurfaceIndex", query: np.ndarray, near: float) -> np.ndarray:
    """Occupancy of many points (e.g. a 128^3 grid), :meth:`SurfaceIndex.is_inside` at a fraction of its cost.

    Only points in the shell take their sign from a nearest sample (the others' comes from the flood
    fill): those within ``near`` of the dense samples from the nearest dense sample, the rest, whose
    nearest sample is far anyway, from the index's coarse subset.
    """
    query = np.asarray(query, dtype=np.float64)
    result, shell = index.flood_fill_answer(query)
    shell = np.flatnonzero(shell)
    if len(shell):
        q = query[shell]
        dist, idx = index.tree.query(q, distance_upper_bound=near, workers=_workers())
        far = ~np.isfinite(dist)
        if far.any():
            idx[far] = index.coarse.query(q[far], workers=_workers())[1] * index.coarse_step
        result[shell] = np.einsum("ij,ij->i", q - index.points[idx], index.normals[idx]) < 0
    return result


def training_pool(mesh, index: SurfaceIndex, size: int, seed: int = 0,
                  scales: tuple[float, float] = (0.1, 1e-3)) -> tuple[np.ndarray, np.ndarray]:
    """Points and signed distances: half surface samples + Laplace(``scales[0]``) noise (coarse),
    half + Laplace(``scales[1]``) noise (fine); all clipped to the ``[-0.5, 0.5]^3`` box.

    Returns ``points (size, 3)`` and ``sdf (size,)``; the first half is the coarse set.
    """
    import trimesh

    rng = np.random.default_rng(seed)
    half = size // 2
    base, _ = trimesh.sample.sample_surface(mesh, 2 * half, seed=seed + 1)
    noise = np.concatenate([rng.laplace(scale=scales[0], size=(half, 3)), rng.laplace(scale=scales[1], size=(half, 3))])
    points = np.clip(base + noise, -BOUND, BOUND)
    return points, index.signed_distance(points)


class SDFTask:
    """Each step: ``batch_size`` points, half coarse (loss weight ``coarse_weight``) and half fine,
    drawn from a precomputed pool; the loss is the weighted mean squared SDF error."""

    def __init__(self, points: np.ndarray, sdf: np.ndarray, device: torch.device, *, batch_size: int = 10_000,
                 coarse_weight: float = 1e-2, seed: int = 0):
        half = len(points) // 2
        if half == 0:
            raise FinerError(f"an SDF pool needs coarse and fine points (at least 2), got {len(points)}")
        self.points = torch.as_tensor(points, dtype=torch.float32, device=device)
        self.sdf = torch.as_tensor(sdf, dtype=torch.float32, device=device)[:, None]
        self.half, self.batch_size, self.device = half, batch_size, device
        weights = torch.cat([torch.full((batch_size // 2, 1), coarse_weight),
                             torch.ones((batch_size - batch_size // 2, 1))])
        self.weights = weights.to(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        n = self.batch_size // 2
        coarse = torch.randint(0, self.half, (n,), device=self.device, generator=self.generator)
        fine = torch.randint(self.half, 2 * self.half, (self.batch_size - n,), device=self.device,
                             generator=self.generator)
        idx = torch.cat([coarse, fine])
        return self.points[idx], torch.cat([self.sdf[idx], self.weights], dim=1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return torch.mean(target[:, 1:] * (pred - target[:, :1]) ** 2)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Mean absolute SDF error on (up to) 65,536 fine points of the pool."""
        idx = torch.arange(self.half, min(2 * self.half, self.half + 65_536), device=self.device)
        err = (model(self.points[idx]) - self.sdf[idx]).abs().mean()
        return {"sdf_mae_near_surface": float(err)}


def grid_slab(resolution: int, z0: int, z1: int, dtype=np.float64) -> np.ndarray:
    """The points of z-slices ``[z0, z1)`` of the ``resolution^3`` lattice (see :func:`grid_points`),
    ``(resolution^2 * (z1 - z0), 3)`` in x-y-z order (x slowest)."""
    axis = np.linspace(-BOUND, BOUND, resolution, dtype=dtype)
    return np.stack(np.meshgrid(axis, axis, axis[z0:z1], indexing="ij"), -1).reshape(-1, 3)


def slab_depth(resolution: int, points: int = 1 << 22, most: int = 32) -> int:
    """Grid slices handled at once so that a slab holds about ``points`` points (1 to ``most``)."""
    return max(1, min(most, points // resolution**2))


@torch.no_grad()
def evaluate_grid(model, resolution: int, device, z_range: tuple[int, int] | None = None,
                  chunk: int | None = None) -> np.ndarray:
    """Field values on the ``resolution^3`` grid of ``[-0.5, 0.5]^3`` (optionally z-slices ``[z0, z1)``),
    evaluated ``chunk`` points at a time (default: :func:`finer.tasks.points_per_pass`), with the
    coordinates of a slab of slices at a time (so that the values are all the memory a whole grid takes);
    returns ``(X, Y, Z)`` float32."""
    from finer.tasks import points_per_pass

    chunk = chunk or points_per_pass(device)
    z0, z1 = z_range or (0, resolution)
    out = np.empty((resolution, resolution, z1 - z0), dtype=np.float32)
    depth = slab_depth(resolution)
    for a in range(z0, z1, depth):
        b = min(a + depth, z1)
        coords = torch.from_numpy(grid_slab(resolution, a, b, np.float32))
        part = torch.empty(coords.shape[0])
        for s in range(0, coords.shape[0], chunk):
            part[s : s + chunk] = model(coords[s : s + chunk].to(device)).reshape(-1).float().cpu()
        out[:, :, a - z0 : b - z0] = part.reshape(resolution, resolution, b - a).numpy()
    return out


def grid_iou(model, index: "SurfaceIndex", resolution: int, device, values: np.ndarray | None = None,
             slab: int | None = None, progress: bool = False) -> float:
    """Occupancy IoU of the network (SDF < 0) and the mesh (:func:`inside`) on the ``resolution^3``
    grid, a slab of z-slices at a time so that memory stays bounded at any resolution.
    ``values``: the network's whole grid, if already evaluated; ``slab``: slices at a time;
    ``progress``: a bar over the slabs."""
    from tqdm.auto import tqdm

    near = 6.0 / (resolution - 1)
    both = either = 0
    depth = slab or slab_depth(resolution)
    for z0 in tqdm(range(0, resolution, depth), desc=f"IoU {resolution}^3", disable=not progress, leave=False):
        z1 = min(z0 + depth, resolution)
        part = values[:, :, z0:z1] if values is not None else evaluate_grid(model, resolution, device, (z0, z1))
        pred = part.reshape(-1) < 0
        true = inside(index, grid_slab(resolution, z0, z1), near)
        both += int(np.count_nonzero(pred & true))
        either += int(np.count_nonzero(pred | true))
    return both / either if either else 1.0


def _slab_surface(values: np.ndarray, z0: int, step: float):
    """Marching cubes of one slab of grid values starting at slice ``z0``; None if no crossing."""
    from skimage.measure import marching_cubes

    if values.min() > 0 or values.max() < 0:
        return None
    v, f, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step))
    v[:, 2] += z0 * step
    return v - BOUND, f


def shares_grid(resolution: int, iou_resolution: int) -> bool:
    """Whether measuring evaluates the network once on one whole grid for both measures (equal grids,
    at most 512^3: 512 MB of values)."""
    return resolution == iou_resolution <= 512


class SurfaceTooLarge(FinerError):
    """An extracted surface that would outgrow the memory a run may use (see :func:`extract_surface`)."""


SURFACE_BYTES_PER_VERTEX = 600
"""Host memory an extracted surface takes at its peak, per vertex with its faces (the slabs' pieces, their
concatenation, and trimesh merging them; measured: a noisy fit's 3.9 M vertices, a process peak of 2.6 GB)."""


def measuring_memory(resolution: int, iou_resolution: int, area: float) -> int:
    """Bytes of host memory that measuring a fit takes at its peak, about: the larger of one slab of
    the marching-cubes grid, one slab of the IoU grid, and the extracted surface, which marching
    cubes makes of about ``1.5 * area * resolution^2`` vertices (``area`` in the unit frame; measured on
    spheres) taken twice over, since a fit that is not yet smooth has more surface than the mesh;
    :data:`SURFACE_BYTES_PER_VERTEX` a vertex with its faces, while trimesh merges them. A fit that is
    far from smooth can have many times more (up to about one vertex a grid cell): :func:`extract_surface`
    stops such a surface when it outgrows the memory a run may use, rather than refusing every grid in
    advance."""
    mc_slab = resolution**2 * (slab_depth(resolution, 1 << 23) + 1) * 48  # coordinates, values, scikit-image's copy
    iou_slab = max(1 << 22, iou_resolution**2) * 120  # float64 points, nearest samples, masks
    surface = 2 * 1.5 * area * resolution**2 * SURFACE_BYTES_PER_VERTEX
    shared = resolution**3 * 4 if shares_grid(resolution, iou_resolution) else 0  # the whole grid's values
    return int(max(mc_slab + surface, iou_slab) + shared)


def extract_surface(model, resolution: int, device, slab: int | None = None, values: np.ndarray | None = None,
                    progress: bool = False, max_bytes: int | None = None):
    """Marching cubes (scikit-image) of the zero level set, slab by slab along z so a 512^3 field
    is never in memory at once; returns a trimesh in unit coordinates (None if no surface).
    ``values``: the whole grid, if already evaluated (small resolutions). ``progress``: a bar over
    the slabs (a 1024^3 grid takes a CPU many minutes). ``max_bytes``: the memory the surface may take
    (:data:`SURFACE_BYTES_PER_VERTEX` a vertex); a surface that outgrows it, as a fit that is not yet
    smooth can (up to about one vertex per grid cell, where a smooth one has ``1.5 * area * resolution^2``),
    stops the extraction with an error instead of the process running out of memory."""
    import trimesh
    from tqdm.auto import tqdm

    step = 2 * BOUND / (resolution - 1)
    slab = slab or slab_depth(resolution, 1 << 23)  # 32 slices up to 512^3, fewer above
    starts = range(0, resolution - 1, slab)
    verts, faces, offset = [], [], 0
    for done, z0 in enumerate(tqdm(starts, desc=f"surface {resolution}^3", disable=not progress, leave=False), 1):
        z1 = min(z0 + slab + 1, resolution)  # one shared slice with the next slab
        part = values[:, :, z0:z1] if values is not None else evaluate_grid(model, resolution, device, (z0, z1))
        found = _slab_surface(part, z0, step)
        if found is None:
            continue
        verts.append(found[0])
        faces.append(found[1] + offset)
        offset += len(found[0])
        if max_bytes is not None and offset * SURFACE_BYTES_PER_VERTEX > max_bytes:
            raise SurfaceTooLarge(f"the fitted surface is too large to extract on the {resolution}^3 grid: "
                             f"{offset:,} vertices after {done} of {len(starts)} slabs would take about "
                             f"{offset * SURFACE_BYTES_PER_VERTEX / 2**30:.1f} GiB, more than the "
                             f"{max_bytes / 2**30:.1f} GiB a run may use (a fit that is not yet smooth has far "
                             "more surface than the mesh)")
    if not verts:
        return None
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    mesh.merge_vertices()
    return mesh


def chamfer_distance(a, b, samples: int = 300_000, seed: int = 0) -> float:
    """Mean squared nearest-neighbour distance from ``a``'s surface samples to ``b``'s, plus the
    reverse (the paper's definition), with ``samples`` uniform samples of each surface."""
    import trimesh

    pa, _ = trimesh.sample.sample_surface(a, samples, seed=seed)
    pb, _ = trimesh.sample.sample_surface(b, samples, seed=seed + 1)
    d_ab, _ = cKDTree(pb).query(pa, workers=_workers())
    d_ba, _ = cKDTree(pa).query(pb, workers=_workers())
    return float(np.mean(d_ab**2) + np.mean(d_ba**2))


def occupancy_iou(pred_inside: np.ndarray, true_inside: np.ndarray) -> float:
    """Intersection over union of two boolean occupancy grids."""
    union = np.logical_or(pred_inside, true_inside).sum()
    return float(np.logical_and(pred_inside, true_inside).sum() / union) if union else 1.0


def grid_points(resolution: int) -> np.ndarray:
    """The ``resolution^3`` lattice points spanning ``[-0.5, 0.5]^3``, both faces included.

    Returns ``(resolution^3, 3)`` in x-y-z order (x slowest), spaced ``1 / (resolution - 1)``.
    """
    axis = np.linspace(-BOUND, BOUND, resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
