"""Geometry in patient LPS millimetres.

Voxel index convention: ``ijk`` is (i, j, k) = (column, row, slice), i.e. the array index
reversed, since arrays are stored (Z, Y, X). A 4x4 ``affine`` maps homogeneous
(i, j, k, 1) to (x, y, z, 1) in LPS mm, as DICOM, ITK and NIfTI-after-flip do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def make_affine(
    origin: ArrayLike, spacing: ArrayLike, direction: ArrayLike | None = None
) -> FloatArray:
    """Affine from origin (LPS mm of voxel 0), spacing (i, j, k) in mm and a 3x3 direction
    matrix whose columns are the unit vectors of the i, j and k axes (identity if None)."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    if d.shape != (3, 3) or sp.shape != (3,):
        raise ValueError("direction must be 3x3 and spacing a 3-vector")
    if np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {sp.tolist()}")
    a = np.eye(4)
    a[:3, :3] = d * sp[None, :]
    a[:3, 3] = np.asarray(origin, dtype=np.float64)
    return a


def spacing_of(affine: ArrayLike) -> FloatArray:
    """Voxel spacing (i, j, k) in mm: the norms of the affine's first three columns."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(np.linalg.norm(a[:3, :3], axis=0), dtype=np.float64)


def ijk_to_lps(affine: ArrayLike, ijk: ArrayLike) -> FloatArray:
    """Continuous voxel indices (..., 3) in (i, j, k) order -> LPS mm (..., 3)."""
    a = np.asarray(affine, dtype=np.float64)
    p = np.asarray(ijk, dtype=np.float64)
    return np.asarray(p @ a[:3, :3].T + a[:3, 3], dtype=np.float64)


def lps_to_ijk(affine: ArrayLike, lps: ArrayLike) -> FloatArray:
    """LPS mm (..., 3) -> continuous voxel indices (..., 3) in (i, j, k) order."""
    a = np.asarray(affine, dtype=np.float64)
    p = np.asarray(lps, dtype=np.float64)
    return np.asarray(np.linalg.solve(a[:3, :3], (p - a[:3, 3]).T).T, dtype=np.float64)


def zyx_to_ijk(zyx: ArrayLike) -> FloatArray:
    """Array-order indices (..., 3) as (z, y, x) -> (i, j, k)."""
    return np.asarray(np.asarray(zyx, dtype=np.float64)[..., ::-1], dtype=np.float64)


ijk_to_zyx = zyx_to_ijk


@dataclass(frozen=True)
class Plane:
    """A plane through ``origin`` (LPS mm) with unit ``normal``."""

    origin: FloatArray
    normal: FloatArray

    def __post_init__(self) -> None:
        n = np.asarray(self.normal, dtype=np.float64)
        norm = float(np.linalg.norm(n))
        if n.shape != (3,) or not np.isfinite(norm) or norm < 1e-12:
            raise ValueError("plane normal must be a finite non-zero 3-vector")
        object.__setattr__(self, "normal", n / norm)
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64))

    def signed_distance(self, points: ArrayLike) -> FloatArray:
        """Signed distance (mm) of points (..., 3) along the normal."""
        p = np.asarray(points, dtype=np.float64)
        return np.asarray((p - self.origin) @ self.normal, dtype=np.float64)

    def distance(self, points: ArrayLike) -> FloatArray:
        """Unsigned point-plane distance (mm) of points (..., 3)."""
        return np.abs(self.signed_distance(points))

    def project(self, points: ArrayLike) -> FloatArray:
        """Orthogonal projection of points (..., 3) onto the plane."""
        p = np.asarray(points, dtype=np.float64)
        return np.asarray(p - self.signed_distance(p)[..., None] * self.normal, dtype=np.float64)


def plane_through(points: ArrayLike) -> Plane:
    """The plane through three points (3, 3); origin is their centroid.

    The normal follows the right-hand rule p0 -> p1 -> p2 (RCC -> LCC -> NCC).
    Raises ValueError for (nearly) collinear points.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (3, 3):
        raise ValueError(f"need three 3-D points, got shape {p.shape}")
    n = np.cross(p[1] - p[0], p[2] - p[0])
    scale = max(float(np.linalg.norm(p[1] - p[0]) * np.linalg.norm(p[2] - p[0])), 1e-12)
    if float(np.linalg.norm(n)) / scale < 1e-6:
        raise ValueError("the three points are collinear: no unique plane")
    return Plane(origin=p.mean(axis=0), normal=n)


def plane_angle_deg(a: Plane, b: Plane) -> float:
    """Angle between two planes in degrees, in [0, 90] (normal orientation ignored)."""
    c = abs(float(np.dot(a.normal, b.normal)))
    return float(np.degrees(np.arccos(min(1.0, c))))


def plane_or_none(points: ArrayLike) -> Plane | None:
    """:func:`plane_through` three points (3, 3), or None when they are (nearly) collinear
    or not finite: a degenerate prediction, a result rather than an error."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (3, 3):
        raise ValueError(f"need three 3-D points, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        return None
    try:
        return plane_through(p)
    except ValueError:
        return None


def cranial(plane: Plane) -> Plane:
    """The same plane with its normal pointing cranially (LPS +z, superior), as the
    phantom's annulus normal; a plane containing the z axis keeps its normal."""
    return plane if plane.normal[2] >= 0 else Plane(plane.origin, -plane.normal)


def heights_above(plane: Plane, points: ArrayLike) -> FloatArray:
    """Signed distance (mm) of points (..., 3) from ``plane`` along its cranial normal:
    positive above (superior to) the plane, e.g. an ostium's height above the annulus."""
    return cranial(plane).signed_distance(points)
