"""Plausibility gate: anatomical and model-agreement checks on a prediction.

Each failed check is a readable finding; a result with findings is "flagged" (delivered
with a visible warning) or "withheld" (not delivered), as configured.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dicomnode.config import PlausibilityConfig
from glipcore.geometry import FloatArray

AXIAL_NORMAL = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: ok, flagged or withheld, with the findings behind it."""

    status: str
    findings: tuple[str, ...]


def tilt_from_axial_deg(normal: FloatArray) -> float:
    """Angle between the plane and the axial plane (0 = axial), degrees."""
    n = np.asarray(normal, dtype=float)
    cos = abs(float(n @ AXIAL_NORMAL)) / float(np.linalg.norm(n))
    return float(np.degrees(np.arccos(min(1.0, cos))))


def findings(
    landmarks: Mapping[str, FloatArray],
    normal: FloatArray,
    fold_spread_mm: Mapping[str, float],
    confidence: Mapping[str, float],
    cfg: PlausibilityConfig,
) -> list[str]:
    """Every check the prediction fails, as sentences."""
    out: list[str] = []
    lo, hi = cfg.hinge_distance_mm
    for a, b in itertools.combinations(landmarks, 2):
        d = float(np.linalg.norm(np.asarray(landmarks[a]) - np.asarray(landmarks[b])))
        if not lo <= d <= hi:
            out.append(f"{a}-{b} distance {d:.1f} mm outside {lo:g}-{hi:g} mm")
    tilt = tilt_from_axial_deg(normal)
    lo, hi = cfg.plane_tilt_deg
    if not lo <= tilt <= hi:
        out.append(f"annulus plane tilt {tilt:.1f} deg outside {lo:g}-{hi:g} deg")
    for name, spread in fold_spread_mm.items():
        if spread > cfg.max_fold_spread_mm:
            out.append(
                f"{name}: fold models disagree by {spread:.1f} mm "
                f"(limit {cfg.max_fold_spread_mm:g} mm)"
            )
    for name, score in confidence.items():
        if score < cfg.min_confidence:
            out.append(f"{name}: confidence {score:.2f} below {cfg.min_confidence:g}")
    return out


def gate(
    landmarks: Mapping[str, FloatArray],
    normal: FloatArray,
    fold_spread_mm: Mapping[str, float],
    confidence: Mapping[str, float],
    cfg: PlausibilityConfig,
) -> GateResult:
    """ok when every check passes, else the configured action (flagged or withheld)."""
    found = findings(landmarks, normal, fold_spread_mm, confidence, cfg)
    if not found:
        return GateResult("ok", ())
    return GateResult("flagged" if cfg.action == "flag" else "withheld", tuple(found))
