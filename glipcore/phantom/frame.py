"""The root's own frame: origin at the annulus centre, z along the annulus normal.

x (``e_ant``) is the patient's anterior direction projected onto the annulus plane,
y = z cross x points to the patient's left within the plane, so polar angles in the plane
run anterior (0) -> left (90) -> posterior (180) -> right (270), and RCC -> LCC -> NCC go
counter-clockwise about the normal, matching :func:`glipcore.geometry.plane_through`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from glipcore.geometry import FloatArray

if TYPE_CHECKING:
    from glipcore.phantom.params import Pose


@dataclass(frozen=True)
class Frame:
    """Origin (LPS mm) and the rows of ``rot`` = (e_ant, e_left, normal) as unit vectors."""

    origin: FloatArray
    rot: FloatArray

    @property
    def normal(self) -> FloatArray:
        return np.asarray(self.rot[2], dtype=np.float64)

    def to_world(self, local: FloatArray) -> FloatArray:
        """Root-local mm (..., 3) -> LPS mm."""
        return np.asarray(np.asarray(local) @ self.rot + self.origin, dtype=np.float64)

    def to_local(self, lps: FloatArray) -> FloatArray:
        """LPS mm (..., 3) -> root-local mm."""
        return np.asarray((np.asarray(lps) - self.origin) @ self.rot.T, dtype=np.float64)

    def direction(self, theta_deg: float, height: float = 0.0) -> FloatArray:
        """Unit vector in the annulus plane at polar angle ``theta_deg`` (plus ``height``
        times the normal, not normalised)."""
        t = math.radians(theta_deg)
        v = math.cos(t) * self.rot[0] + math.sin(t) * self.rot[1] + height * self.rot[2]
        return np.asarray(v, dtype=np.float64)


def normal_of(pose: Pose) -> FloatArray:
    """Annulus normal in LPS from tilt (from +z) and azimuth (from +x towards +y)."""
    t, a = math.radians(pose.tilt_deg), math.radians(pose.azimuth_deg)
    return np.array([math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t)])


def root_frame(pose: Pose) -> Frame:
    """The frame of a pose; raises ValueError for a normal too close to anterior-posterior."""
    w = normal_of(pose)
    anterior = np.array([0.0, -1.0, 0.0])
    ex = anterior - float(anterior @ w) * w
    n = float(np.linalg.norm(ex))
    if n < 0.2:
        raise ValueError(f"annulus normal {w.round(3).tolist()} is too close to anterior")
    ex /= n
    ey = np.cross(w, ex)
    return Frame(
        origin=np.asarray(pose.annulus_center, dtype=np.float64), rot=np.stack([ex, ey, w])
    )
