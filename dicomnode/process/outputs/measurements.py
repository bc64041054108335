"""Measurements of the annulus: inter-hinge distances, plane tilt, fluoroscopic coplanar view.

Coordinates are patient LPS mm: +x to the patient's left, +y posterior, +z head.

C-arm angles follow DICOM's Positioner Primary / Secondary Angle: the image intensifier
(detector) direction, seen from the patient's isocentre, for primary angle ``a`` (positive
LAO, negative RAO) and secondary angle ``b`` (positive cranial, negative caudal) is

    v(a, b) = (sin a cos b, -cos a cos b, sin b)

so AP (a = b = 0) puts the detector anterior (-y), LAO moves it to the patient's left (+x)
and cranial towards the head (+z).

A coplanar view sees the annulus edge-on: v is perpendicular to the plane normal n. Of all
such views, the one closest to AP is the AP direction projected onto the plane,
v = normalize(d - (d . n) n) with d = (0, -1, 0); then a = atan2(v_x, -v_y) and
b = asin(v_z). In the degenerate case n = +-y (a coronal annulus) every edge-on view is
equally far from AP and lateral LAO 90 / CRA 0 is returned.

Ostium height: the distance from the ostium's centre (the centre of the coronary artery
where it leaves the sinus wall, as the phantom's truth defines it) to the annulus plane,
along the plane's (cranial) normal. Clinical reports often measure to the ostium's lower
edge instead, which lies about one vessel radius (1.5-2 mm) lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from dicomnode.process.outputs.context import LANDMARK_NAMES, OSTIUM_NAMES, OutputError
from dicomnode.process.result_keys import SIZING_KEYS, SIZING_REFUSAL_KEY, height_key

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dicomnode.process.outputs.context import OutputContext

DISTANCE_PAIRS: tuple[tuple[str, str], ...] = (("RCC", "LCC"), ("LCC", "NCC"), ("NCC", "RCC"))
_AP = np.array([0.0, -1.0, 0.0])


def _unit(normal: ArrayLike) -> np.ndarray[Any, np.dtype[np.float64]]:
    n = np.asarray(normal, dtype=np.float64)
    norm = float(np.linalg.norm(n)) if n.shape == (3,) else 0.0
    if not (math.isfinite(norm) and norm > 1e-12):
        raise OutputError(f"plane normal must be a finite non-zero 3-vector, got {normal!r}")
    return n / norm


def hinge_distances_mm(landmarks: Mapping[str, ArrayLike]) -> dict[str, float]:
    """Distances between hinge points: keys "RCC-LCC", "LCC-NCC", "NCC-RCC" (mm)."""
    missing = [n for n in LANDMARK_NAMES if n not in landmarks]
    if missing:
        raise OutputError(f"landmarks lack {missing}")
    pts = {n: np.asarray(landmarks[n], dtype=np.float64) for n in LANDMARK_NAMES}
    return {f"{a}-{b}": float(np.linalg.norm(pts[a] - pts[b])) for a, b in DISTANCE_PAIRS}


def plane_tilt_deg(normal: ArrayLike) -> float:
    """Angle between the plane and the axial plane in degrees (0 = axial, 90 = vertical)."""
    n = _unit(normal)
    return math.degrees(math.acos(min(1.0, abs(float(n[2])))))


@dataclass(frozen=True)
class CoplanarView:
    """A C-arm angulation: ``lao_deg`` (positive LAO, negative RAO) and ``cranial_deg``
    (positive cranial, negative caudal)."""

    lao_deg: float
    cranial_deg: float

    def label(self, degree_sign: bool = True) -> str:
        """E.g. "LAO 12° / CAU 15°" (rounded to whole degrees; "deg" if not
        ``degree_sign``, for ASCII-only DICOM text)."""
        unit = "°" if degree_sign else " deg"
        primary = "LAO" if round(self.lao_deg) >= 0 else "RAO"
        secondary = "CRA" if round(self.cranial_deg) >= 0 else "CAU"
        return (
            f"{primary} {abs(round(self.lao_deg))}{unit} / "
            f"{secondary} {abs(round(self.cranial_deg))}{unit}"
        )

    def detector_direction(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Unit vector from the isocentre to the image intensifier, LPS."""
        a, b = math.radians(self.lao_deg), math.radians(self.cranial_deg)
        return np.array([math.sin(a) * math.cos(b), -math.cos(a) * math.cos(b), math.sin(b)])


def coplanar_view(normal: ArrayLike) -> CoplanarView:
    """The coplanar (annulus edge-on) C-arm view closest to AP (see the module docstring)."""
    n = _unit(normal)
    v = _AP - float(_AP @ n) * n
    length = float(np.linalg.norm(v))
    if length < 1e-9:
        return CoplanarView(lao_deg=90.0, cranial_deg=0.0)
    v /= length
    lao = math.degrees(math.atan2(float(v[0]), float(-v[1])))
    cranial = math.degrees(math.asin(max(-1.0, min(1.0, float(v[2])))))
    return CoplanarView(lao_deg=lao, cranial_deg=cranial)


HEIGHT_DEFINITION = (
    "Ostium height is measured from the ostium centre to the annulus plane along the "
    "plane normal; clinical reports often measure to the ostium's lower edge, about one "
    "vessel radius lower."
)
"""The sentence every output that shows an ostium height carries."""


def ostium_heights_mm(
    ostia: Mapping[str, ArrayLike], origin: ArrayLike, normal: ArrayLike
) -> dict[str, float]:
    """Signed height (mm) of each ostium's centre above the plane (``origin``,
    ``normal``), along the normal turned cranially: positive above the annulus."""
    n = _unit(normal)
    n = n if n[2] >= 0 else -n
    o = np.asarray(origin, dtype=np.float64)
    return {
        name: float((np.asarray(ostia[name], dtype=np.float64) - o) @ n)
        for name in OSTIUM_NAMES
        if name in ostia
    }


def measurements(ctx: OutputContext) -> dict[str, float]:
    """All measurements of one result, flat (for the job's result row): the three
    hinge distances (mm), tilt (deg) and coplanar view angles (deg); the annulus sizing
    (:data:`SIZING_KEYS`) when measured; each predicted ostium's height (mm)."""
    out = {
        f"hinge_distance_{k.replace('-', '_').lower()}_mm": v
        for k, v in hinge_distances_mm(ctx.landmarks_lps).items()
    }
    view = coplanar_view(ctx.plane_normal)
    out["plane_tilt_deg"] = plane_tilt_deg(ctx.plane_normal)
    out["coplanar_lao_deg"] = view.lao_deg
    out["coplanar_cranial_deg"] = view.cranial_deg
    if ctx.sizing is not None:
        for key, attr in SIZING_KEYS:
            out[key] = float(getattr(ctx.sizing, attr))
    for name, h in ostium_heights_mm(ctx.ostia_lps, ctx.plane_origin, ctx.plane_normal).items():
        out[height_key(name)] = h
    return out


__all__ = [
    "DISTANCE_PAIRS",
    "HEIGHT_DEFINITION",
    "SIZING_KEYS",
    "SIZING_REFUSAL_KEY",
    "CoplanarView",
    "coplanar_view",
    "height_key",
    "hinge_distances_mm",
    "measurements",
    "ostium_heights_mm",
    "plane_tilt_deg",
]
