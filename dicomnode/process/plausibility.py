"""Plausibility gate: anatomical and model-agreement checks on a prediction.

Each failed check is a readable finding; a result with findings is "flagged" (delivered
with a visible warning) or "withheld" (not delivered), as configured.
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
    for pair, d in hinge_distances_mm(landmarks).items():
        if not lo <= d <= hi:
            out.append(f"{pair} distance {d:.1f} mm outside {lo:g}-{hi:g} mm")
    tilt = plane_tilt_deg(normal)
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
