"""Shaded pictures of triangle meshes with matplotlib (no display, no OpenGL)."""

from __future__ import annotations

import os

from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone
import numpy as np
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from finer.io import save_figure

VIEWS = ((20, -60), (20, 30), (20, 120))
"""(elevation, azimuth) in degrees of the default viewpoints."""


def _up(vertices: np.ndarray, up: str) -> np.ndarray:
    # cyclic permutation (keeps handedness) so that the mesh's y axis points up
    return vertices[:, [2, 0, 1]] if up == "y" else vertices


def _draw(ax, mesh, elev: float, azim: float, max_faces: int, up: str, box) -> None:
    faces = np.asarray(mesh.faces)
    vertices = _up(np.asarray(mesh.vertices), up)
    if len(faces) > max_faces:  # keep the picture quick; the metrics use the full mesh
        keep = np.random.default_rng(0).choice(len(faces), max_faces, replace=False)
        faces = faces[keep]
    tris = vertices[faces]
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    e, a = np.radians(elev), np.radians(azim)
    light = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    shade = 0.25 + 0.75 * np.abs(normals @ light)
    colors = np.clip(shade[:, None] * np.array([0.75, 0.78, 0.85]), 0, 1)
    ax.add_collection3d(Poly3DCollection(tris, facecolors=colors, edgecolors="none"))
    lo, hi = box
    c, r = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.view_init(elev=elev, azim=azim)
    ax.set_box_aspect((1, 1, 1))
    ax.axis("off")


def render_meshes(meshes: dict, path: str | os.PathLike, views=VIEWS, max_faces: int = 60_000, up: str = "y") -> None:
    """One row per mesh (e.g. ground truth and fit), one column per viewpoint, as a PNG.

    ``up`` is the mesh axis drawn upwards ("y" for the Stanford scans, or "z").
    """
    rows = [(label, m) for label, m in meshes.items() if m is not None]
    first = _up(np.asarray(rows[0][1].vertices), up)  # every row shares the first mesh's frame
    box = (first.min(0), first.max(0))
    fig = Figure(figsize=(3.2 * len(views), 3.2 * len(rows)), dpi=100)
    for r, (label, mesh) in enumerate(rows):
        for c, (elev, azim) in enumerate(views):
            ax = fig.add_subplot(len(rows), len(views), r * len(views) + c + 1, projection="3d")
            _draw(ax, mesh, elev, azim, max_faces, up, box)
            if c == 0:
                ax.set_title(label, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
