"""Plausibility gate: anatomical and model-agreement checks on a prediction.

Each failed check is a readable finding. Findings are of two kinds with their own action
(``flag``: delivered with a visible warning; ``withhold``: not delivered):

- geometry: an inter-hinge distance or the annulus plane tilt outside its range, i.e. a
  result that cannot be right (``geometry_action``, by default withhold);
- confidence: the fold models disagree or a landmark's confidence is low, i.e. a result
  that may be right (``confidence_action``, by default flag).

A degenerate prediction (two hinge points on one spot, or all three on a line) has no
annulus plane at all: it is always withheld, whatever the actions say, and its finding says
why. The result is otherwise withheld when any finding's action says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dicomnode.config import PlausibilityConfig
from dicomnode.process.outputs.context import LANDMARK_NAMES
from dicomnode.process.outputs.measurements import (
    DISTANCE_PAIRS,
    hinge_distances_mm,
    plane_tilt_deg,
)
from glipcore.geometry import FloatArray

MIN_HINGE_SEPARATION_MM = 1.0
"""Hinge points closer than this are one spot: no triangle, no plane."""
MIN_TRIANGLE_HEIGHT_MM = 1.0
"""A hinge triangle whose smallest height is below this is (nearly) a line: no plane."""


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: ok, flagged or withheld, with the findings behind it;
    ``degenerate``: the hinge points span no annulus plane (nothing can be drawn)."""

    status: str
    findings: tuple[str, ...]
    degenerate: bool = False


def degenerate_findings(landmarks: Mapping[str, FloatArray]) -> list[str]:
    """Why the hinge points span no plane (coincident, collinear or not finite), as
    sentences; empty when they form a proper triangle."""
    names = LANDMARK_NAMES
    missing = [n for n in names if n not in landmarks]
    if missing:
        return [f"degenerate prediction: no hinge point {', '.join(missing)}"]
    pts = {n: np.asarray(landmarks[n], dtype=np.float64) for n in names}
    if not all(np.all(np.isfinite(p)) for p in pts.values()):
        return ["degenerate prediction: a hinge point is not a finite position"]
    out: list[str] = []
    for first, second in DISTANCE_PAIRS:
        d = float(np.linalg.norm(pts[first] - pts[second]))
        if d < MIN_HINGE_SEPARATION_MM:
            out.append(
                f"degenerate prediction: {first} and {second} lie on one spot "
                f"({d:.2f} mm apart): no annulus plane"
            )
    if out:
        return out
    p, q, r = (pts[n] for n in names)
    twice_area = float(np.linalg.norm(np.cross(q - p, r - p)))
    longest = max(float(np.linalg.norm(pts[x] - pts[y])) for x, y in DISTANCE_PAIRS)
    height = twice_area / longest
    if not (math.isfinite(height) and height >= MIN_TRIANGLE_HEIGHT_MM):
        out.append(
            f"degenerate prediction: the hinge points are collinear (triangle height "
            f"{height:.2f} mm < {MIN_TRIANGLE_HEIGHT_MM:g} mm): no annulus plane"
        )
    return out


def geometry_findings(
    landmarks: Mapping[str, FloatArray], normal: FloatArray, cfg: PlausibilityConfig
) -> list[str]:
    """Inter-hinge distances and plane tilt outside their ranges, as sentences."""
    out: list[str] = []
    lo, hi = cfg.hinge_distance_mm
    for pair, d in hinge_distances_mm(landmarks).items():
        if not lo <= d <= hi:
            out.append(f"{pair} distance {d:.1f} mm outside {lo:g}-{hi:g} mm")
    tilt = plane_tilt_deg(normal)
    lo, hi = cfg.plane_tilt_deg
    if not lo <= tilt <= hi:
        out.append(f"annulus plane tilt {tilt:.1f} deg outside {lo:g}-{hi:g} deg")
    return out


def confidence_findings(
    fold_spread_mm: Mapping[str, float], confidence: Mapping[str, float], cfg: PlausibilityConfig
) -> list[str]:
    """Fold disagreement and low confidence past their limits, as sentences."""
    out: list[str] = []
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
    normal: FloatArray | None,
    fold_spread_mm: Mapping[str, float],
    confidence: Mapping[str, float],
    cfg: PlausibilityConfig,
) -> GateResult:
    """ok when every check passes; withheld when the prediction is degenerate (``normal``
    None or the hinge points span no plane) or a failed kind's action is withhold; else
    flagged."""
    degenerate = degenerate_findings(landmarks)
    doubt = confidence_findings(fold_spread_mm, confidence, cfg)
    if degenerate or normal is None:
        none = ["degenerate prediction: no annulus plane through the hinge points"]
        return GateResult("withheld", tuple((degenerate or none) + doubt), degenerate=True)
    geometry = geometry_findings(landmarks, normal, cfg)
    if not geometry and not doubt:
        return GateResult("ok", ())
    withhold = (geometry and cfg.geometry_action == "withhold") or (
        doubt and cfg.confidence_action == "withhold"
    )
    return GateResult("withheld" if withhold else "flagged", tuple(geometry + doubt))
