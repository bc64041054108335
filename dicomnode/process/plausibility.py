"""Plausibility gate: anatomical and model-agreement checks on a prediction.

Each failed check is a readable finding. Findings are of two kinds with their own action
(``flag``: delivered with a visible warning; ``withhold``: not delivered):

- geometry: an inter-hinge distance or the annulus plane tilt outside its range, i.e. a
  result that cannot be right (``geometry_action``, by default withhold);
- confidence: the fold models disagree or a landmark's confidence is low, i.e. a result
  that may be right (``confidence_action``, by default flag).

The result is withheld when any finding's action says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dicomnode.config import PlausibilityConfig
from dicomnode.process.outputs.measurements import hinge_distances_mm, plane_tilt_deg
from glipcore.geometry import FloatArray


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: ok, flagged or withheld, with the findings behind it."""

    status: str
    findings: tuple[str, ...]


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
    normal: FloatArray,
    fold_spread_mm: Mapping[str, float],
    confidence: Mapping[str, float],
    cfg: PlausibilityConfig,
) -> GateResult:
    """ok when every check passes; withheld when a failed kind's action is withhold; else
    flagged."""
    geometry = geometry_findings(landmarks, normal, cfg)
    doubt = confidence_findings(fold_spread_mm, confidence, cfg)
    if not geometry and not doubt:
        return GateResult("ok", ())
    withhold = (geometry and cfg.geometry_action == "withhold") or (
        doubt and cfg.confidence_action == "withhold"
    )
    return GateResult("withheld" if withhold else "flagged", tuple(geometry + doubt))
