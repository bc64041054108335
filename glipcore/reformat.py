"""Oblique 2-D reformats of a Volume: a square slice on any plane, sampled with SimpleITK.

The slice's pixel (row, col) lies at ``origin + (col - c) * pixel_mm * u + (row - c) *
pixel_mm * v`` (c the centre index), with ``u``, ``v`` orthonormal in the plane and
``u x v`` along the plane's normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glipcore.geometry import FloatArray, Plane
from glipcore.resample import resample
from glipcore.volume import Volume


def in_plane_axes(normal: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Unit vectors (u, v) spanning the plane with unit ``normal`` (u x v = normal); u is
    the LPS axis least aligned with the normal, made orthogonal to it."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    seed = np.eye(3)[int(np.argmin(np.abs(n)))]
    u = seed - float(seed @ n) * n
    u = u / np.linalg.norm(u)
    v = np.cross(n, u)
    return np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class PlaneImage:
    """A square reformat (``array`` (N, N) float32, rows along ``v``, columns along ``u``)
    centred on ``plane.origin``; pixels outside the volume are NaN."""

    array: NDArray[np.float32]
    plane: Plane
    u: FloatArray
    v: FloatArray
    pixel_mm: float

    @property
    def centre_px(self) -> float:
        """Index (row and column) of the pixel at the plane origin."""
        return (int(self.array.shape[0]) - 1) / 2.0

    def to_lps(self, xy_mm: ArrayLike) -> FloatArray:
        """In-plane coordinates (..., 2) in mm from the origin along (u, v) -> LPS mm."""
        xy = np.asarray(xy_mm, dtype=np.float64)
        out = self.plane.origin + xy[..., :1] * self.u + xy[..., 1:2] * self.v
        return np.asarray(out, dtype=np.float64)

    def to_px(self, xy_mm: ArrayLike) -> FloatArray:
        """In-plane mm (..., 2) -> continuous (row, col) pixel indices."""
        xy = np.asarray(xy_mm, dtype=np.float64)
        return np.asarray(xy[..., ::-1] / self.pixel_mm + self.centre_px, dtype=np.float64)


def reformat(
    volume: Volume, plane: Plane, *, size_mm: float = 60.0, pixel_mm: float = 0.3
) -> PlaneImage:
    """The square slice of ``volume`` on ``plane``, ``size_mm`` wide, centred on the
    plane's origin, linear interpolation (no smoothing); NaN outside the volume."""
    if size_mm <= 0 or pixel_mm <= 0:
        raise ValueError("size_mm and pixel_mm must be positive")
    n_px = round(size_mm / pixel_mm) | 1  # odd: one pixel sits on the origin
    u, v = in_plane_axes(plane.normal)
    c = (n_px - 1) / 2.0
    affine = np.eye(4)
    affine[:3, 0] = u * pixel_mm
    affine[:3, 1] = v * pixel_mm
    affine[:3, 2] = plane.normal * pixel_mm
    affine[:3, 3] = plane.origin - c * pixel_mm * (u + v)
    out = resample(volume, affine, (1, n_px, n_px), default_value=float("nan"))
    return PlaneImage(
        array=np.asarray(out.array[0], dtype=np.float32),
        plane=plane,
        u=u,
        v=v,
        pixel_mm=float(pixel_mm),
    )


__all__ = ["PlaneImage", "in_plane_axes", "reformat"]
