"""Sanity checks of an annotation's landmarks: what cannot be right is refused, with the
reason, before it can teach a model.

- every hinge point RCC, LCC, NCC given, finite, not collinear;
- inter-hinge distances within :attr:`CheckLimits.hinge_distance_mm`;
- the right-hand normal of RCC -> LCC -> NCC points cranially (+z in LPS); a caudal normal
  means two cusps are swapped (typically LCC and NCC);
- every point inside the CT's volume (the voxel grid's extent, plus a margin);
- each coronary ostium, when given, above the annulus plane by
  :attr:`CheckLimits.ostium_height_mm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from glipcore import LANDMARKS, OSTIA
from glipcore.geometry import FloatArray


@dataclass(frozen=True)
class CheckLimits:
    """Ranges an annotation must respect (mm)."""

    hinge_distance_mm: tuple[float, float] = (8.0, 40.0)
    ostium_height_mm: tuple[float, float] = (3.0, 30.0)
    outside_margin_mm: float = 1.0


@dataclass(frozen=True, eq=False)
class CtGeometry:
    """The voxel grid of a CT series: ``affine`` maps (i, j, k, 1) to LPS mm; ``shape_zyx``
    counts slices, rows and columns."""

    affine: FloatArray
    shape_zyx: tuple[int, int, int]
    label: str = "the CT"

    def outside_by_mm(self, lps: FloatArray) -> float:
        """How far ``lps`` lies outside the grid's extent (0 inside), mm."""
        ijk = np.linalg.solve(self.affine, np.append(np.asarray(lps, dtype=np.float64), 1.0))
        size = np.array(self.shape_zyx[::-1], dtype=np.float64)
        below = np.clip(-0.5 - ijk[:3], 0.0, None)
        above = np.clip(ijk[:3] - (size - 0.5), 0.0, None)
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(np.linalg.norm((below + above) * spacing))


def _fmt(p: FloatArray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in p) + ")"


def hinge_problems(points: Mapping[str, FloatArray], limits: CheckLimits) -> list[str]:
    """Problems of the three hinge points alone (missing, distances, orientation)."""
    missing = [n for n in LANDMARKS if n not in points]
    if missing:
        return [f"missing point {', '.join(missing)}"]
    rcc, lcc, ncc = (np.asarray(points[n], dtype=np.float64) for n in LANDMARKS)
    out: list[str] = []
    lo, hi = limits.hinge_distance_mm
    for (a, pa), (b, pb) in (
        (("RCC", rcc), ("LCC", lcc)),
        (("LCC", lcc), ("NCC", ncc)),
        (("NCC", ncc), ("RCC", rcc)),
    ):
        d = float(np.linalg.norm(pa - pb))
        if not lo <= d <= hi:
            out.append(f"{a}-{b} distance {d:.1f} mm outside {lo:g}-{hi:g} mm")
    normal = np.cross(lcc - rcc, ncc - rcc)
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return [*out, "the hinge points are collinear: no annulus plane"]
    normal /= length
    if normal[2] <= 0:
        out.append(
            f"the normal of RCC -> LCC -> NCC points caudally (z {normal[2]:+.2f}): "
            "two cusps are swapped (LCC and NCC?)"
        )
    return out


def ostium_problems(points: Mapping[str, FloatArray], limits: CheckLimits) -> list[str]:
    """Ostia (when given) must lie above the annulus plane within the height range."""
    hinges = np.stack([np.asarray(points[n], dtype=np.float64) for n in LANDMARKS])
    normal = np.cross(hinges[1] - hinges[0], hinges[2] - hinges[0])
    normal /= np.linalg.norm(normal)
    lo, hi = limits.ostium_height_mm
    out = []
    for name in OSTIA:
        if name in points:
            h = float((np.asarray(points[name]) - hinges.mean(axis=0)) @ normal)
            if not lo <= h <= hi:
                out.append(f"{name} lies {h:.1f} mm above the annulus plane, not {lo:g}-{hi:g} mm")
    return out


def landmark_problems(
    points: Mapping[str, FloatArray], ct: CtGeometry | None, limits: CheckLimits | None = None
) -> list[str]:
    """Every reason to refuse ``points`` ("RCC".."NCC", optionally "LCO", "RCO" -> LPS mm);
    empty when they are plausible. ``ct`` None skips the inside-the-volume check."""
    limits = limits or CheckLimits()
    unknown = sorted(set(points) - set(LANDMARKS) - set(OSTIA))
    if unknown:
        return [f"unknown landmark names {unknown}"]
    bad = [n for n, p in points.items() if np.shape(p) != (3,) or not np.all(np.isfinite(p))]
    if bad:
        return [f"{', '.join(bad)}: not a finite LPS point"]
    out = hinge_problems(points, limits)
    if out:
        return out
    out += ostium_problems(points, limits)
    if ct is not None:
        for name, p in points.items():
            off = ct.outside_by_mm(np.asarray(p, dtype=np.float64))
            if off > limits.outside_margin_mm:
                out.append(f"{name} {_fmt(p)} lies {off:.1f} mm outside {ct.label}")
    return out


__all__ = ["CheckLimits", "CtGeometry", "hinge_problems", "landmark_problems", "ostium_problems"]
