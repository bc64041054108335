"""Measurements of a closed 2-D polygon (vertices (K, 2) in mm, not repeated at the end)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from glipcore.geometry import FloatArray


def polygon_area(xy: ArrayLike) -> float:
    """Enclosed area (shoelace formula), always positive."""
    p = np.asarray(xy, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_perimeter(xy: ArrayLike) -> float:
    """Length of the closed outline."""
    p = np.asarray(xy, dtype=np.float64)
    return float(np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1).sum())


def polygon_centroid(xy: ArrayLike) -> FloatArray:
    """Area centroid (2,) of a simple polygon."""
    p = np.asarray(xy, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    a = cross.sum() / 2.0
    if abs(a) < 1e-12:
        return np.asarray(p.mean(axis=0), dtype=np.float64)
    c = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6.0 * a)
    return np.asarray(c, dtype=np.float64)


def feret_diameters(xy: ArrayLike, n_angles: int = 360) -> tuple[float, float]:
    """(minimum, maximum) caliper width over ``n_angles`` directions in [0, 180) degrees:
    an ellipse's minor and major axes."""
    p = np.asarray(xy, dtype=np.float64)
    t = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    proj = p @ np.stack([np.cos(t), np.sin(t)])  # (K, n_angles)
    width = proj.max(axis=0) - proj.min(axis=0)
    return float(width.min()), float(width.max())


__all__ = ["feret_diameters", "polygon_area", "polygon_centroid", "polygon_perimeter"]
