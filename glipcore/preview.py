"""Preview mosaics of a CT volume with its hinge points, for people to look at.

Four panels sampled by trilinear interpolation on planes in LPS mm (any volume geometry):
axial and coronal through the annulus centre, the oblique annulus plane through the three
hinge points (seen from the feet, patient's left on the image's right, posterior down), and
a long-axis plane containing the annulus normal. CT window W 800 / L 200 by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import map_coordinates

from glipcore import LANDMARKS
from glipcore.geometry import FloatArray, lps_to_ijk, plane_through
from glipcore.volume import Volume

_COLOURS = {"RCC": "#ff5a5a", "LCC": "#5ad2ff", "NCC": "#ffd24a"}


@dataclass(frozen=True)
class PlaneView:
    """A square view: centre (LPS), unit in-plane axes (columns ``u``, rows ``v`` pointing
    down the image), half-width (mm) and title."""

    center: FloatArray
    u: FloatArray
    v: FloatArray
    half_mm: float
    title: str

    @property
    def normal(self) -> FloatArray:
        return np.asarray(np.cross(self.u, self.v), dtype=np.float64)


def sample_plane(
    vol: Volume, view: PlaneView, step_mm: float, fill: float = -1000.0
) -> NDArray[np.float32]:
    """The volume resampled on the view's plane (rows along v, columns along u)."""
    n = round(2.0 * view.half_mm / step_mm) + 1
    t = np.linspace(-view.half_mm, view.half_mm, n)
    pts = view.center + t[None, :, None] * view.u + t[:, None, None] * view.v
    ijk = lps_to_ijk(vol.affine, pts.reshape(-1, 3))
    zyx = ijk[:, ::-1].T
    out = map_coordinates(vol.array.astype(np.float32, copy=False), zyx, order=1, cval=fill)
    return np.asarray(out, dtype=np.float32).reshape(n, n)


def _unit(v: ArrayLike) -> FloatArray:
    a = np.asarray(v, dtype=np.float64)
    return np.asarray(a / np.linalg.norm(a), dtype=np.float64)


def _in_plane(axis: ArrayLike, normal: FloatArray) -> FloatArray:
    a = np.asarray(axis, dtype=np.float64)
    return _unit(a - float(a @ normal) * normal)


def standard_views(landmarks_lps: ArrayLike, center: ArrayLike | None = None) -> list[PlaneView]:
    """Axial, coronal, annulus-plane and long-axis views around the hinge points."""
    lm = np.asarray(landmarks_lps, dtype=np.float64)
    plane = plane_through(lm)
    c = plane.origin if center is None else np.asarray(center, dtype=np.float64)
    x, y, z = np.eye(3)
    n = plane.normal
    u_ann = _in_plane(x, n)
    v_ann = np.cross(n, u_ann)
    if float(v_ann @ y) < 0:
        v_ann = -v_ann
    long_u = _in_plane(lm[1] - c, n)  # towards the LCC hinge
    return [
        PlaneView(c, x, y, 60.0, "axial"),
        PlaneView(c, x, -z, 60.0, "coronal"),
        PlaneView(c, u_ann, v_ann, 30.0, "annulus plane (hinge points)"),
        PlaneView(c + 8.0 * n, long_u, -n, 35.0, "long axis (normal, towards LCC)"),
    ]


def _draw_points(ax: Any, view: PlaneView, points: FloatArray, names: Sequence[str]) -> None:
    for p, name in zip(points, names, strict=True):
        d = p - view.center
        off = float(d @ view.normal)
        col, row = float(d @ view.u), float(d @ view.v)
        if abs(col) > view.half_mm or abs(row) > view.half_mm:
            continue
        near = abs(off) <= 2.0
        colour = _COLOURS.get(name, "#9cff6a")
        ax.plot(
            col,
            row,
            "o" if near else "x",
            ms=6 if near else 5,
            mfc="none",
            mec=colour,
            mew=1.5,
            alpha=1.0 if near else 0.6,
        )
        label = name if near else f"{name} ({off:+.0f} mm)"
        ax.annotate(
            label, (col, row), xytext=(5, 5), textcoords="offset points", color=colour, fontsize=8
        )


def save_preview(
    vol: Volume,
    landmarks_lps: ArrayLike,
    path: Path,
    *,
    title: str,
    extra_points: dict[str, ArrayLike] | None = None,
    window: tuple[float, float] = (800.0, 200.0),
    step_mm: float = 0.25,
) -> Path:
    """Write a 2 x 2 PNG mosaic of the volume with the hinge points labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm = np.asarray(landmarks_lps, dtype=np.float64)
    names = list(LANDMARKS)
    pts = [*lm]
    for name, p in (extra_points or {}).items():
        names.append(name)
        pts.append(np.asarray(p, dtype=np.float64))
    points = np.stack(pts)
    width, level = window
    lo, hi = level - width / 2.0, level + width / 2.0
    fig, axes = plt.subplots(2, 2, figsize=(10, 10.4), facecolor="black")
    for ax, view in zip(axes.ravel(), standard_views(lm), strict=True):
        img = sample_plane(vol, view, step_mm)
        h = view.half_mm
        ax.imshow(
            img, cmap="gray", vmin=lo, vmax=hi, extent=(-h, h, h, -h), interpolation="bilinear"
        )
        _draw_points(ax, view, points, names)
        ax.set_title(view.title, color="white", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
    return path
