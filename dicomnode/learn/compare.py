"""Candidate against active model on the same cases: the paper's metrics and paired
bootstrap intervals of the differences.

Errors are on the three hinge points (LPS mm). A case's volumes go through each bundle's
own model-grid preprocessing (cached on disk per bundle preprocessing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dicomnode.learn.gate import Scores
from glipcore import LANDMARKS
from glipcore.manifest import ManifestRow
from glipcore.metrics import euclidean_errors, plane_errors, success_detection_rate, summarize

SDR_REPORTED_MM = (1.0, 2.0, 3.0)


@dataclass(frozen=True)
class CaseErrors:
    """Hinge errors (N, 3) mm and plane angles (N,) deg of one model on N cases."""

    errors: NDArray[np.float64]
    angles: NDArray[np.float64]


def predict_errors(
    bundle_dir: Path, rows: Sequence[ManifestRow], cache_dir: Path, threads: int | None
) -> CaseErrors:
    """Predict every case with the bundle; its hinge errors and plane angles."""
    from glipcore.dataset import ModelGridCache
    from glipcore.predict import Predictor

    predictor = Predictor(bundle_dir, threads=threads, device="cpu", tta_passes=0)
    cache = ModelGridCache(cache_dir, predictor.bundle.manifest.preprocessing)
    errors, angles = [], []
    for row in rows:
        pred = predictor.predict_grid(cache.get(row.path)).points(LANDMARKS)
        truth = row.points(LANDMARKS)
        errors.append(euclidean_errors(pred, truth))
        angles.append(plane_errors(pred, truth)[1])
    return CaseErrors(np.stack(errors), np.asarray(angles, dtype=np.float64))


def scores_of(errors: NDArray[np.float64]) -> Scores:
    """The gate's summary of (N, 3) hinge errors."""
    s = summarize(errors)
    sdr = success_detection_rate(errors, (2.0,))[2.0]
    return Scores(errors.shape[0], s.median, s.q3, s.worst, sdr)


def metric_table(ce: CaseErrors) -> dict[str, Any]:
    """Per-hinge median/q3/worst, all hinges, plane angle and SDR at 1/2/3 mm."""
    per_hinge = {}
    for i, name in enumerate(LANDMARKS):
        s = summarize(ce.errors[:, i])
        per_hinge[name] = {"median_mm": s.median, "q3_mm": s.q3, "worst_mm": s.worst}
    pooled = summarize(ce.errors)
    angle = summarize(ce.angles)
    return {
        "cases": int(ce.errors.shape[0]),
        "hinges": per_hinge,
        "median_mm": pooled.median,
        "q3_mm": pooled.q3,
        "worst_mm": pooled.worst,
        "plane_angle_median_deg": angle.median,
        "sdr": {
            f"{t:g}mm": v for t, v in success_detection_rate(ce.errors, SDR_REPORTED_MM).items()
        },
    }


def _stat(errors: NDArray[np.float64], name: str) -> float:
    if name == "sdr_2mm":
        return float(np.mean(errors < 2.0))
    if name == "worst_mm":
        return float(np.max(errors))
    return float(np.median(errors))


def paired_bootstrap(
    candidate: NDArray[np.float64],
    active: NDArray[np.float64],
    stat: str,
    *,
    resamples: int,
    seed: int = 0,
) -> dict[str, float]:
    """Candidate minus active of ``stat`` (median_mm, worst_mm, sdr_2mm) over (N, 3) hinge
    errors, with a 95% interval from resampling the cases (the same cases for both)."""
    n = candidate.shape[0]
    delta = _stat(candidate, stat) - _stat(active, stat)
    if n < 2:
        return {"delta": delta, "lo": math.nan, "hi": math.nan}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    diffs = np.array([_stat(candidate[i], stat) - _stat(active[i], stat) for i in idx])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"delta": delta, "lo": float(lo), "hi": float(hi)}


def compare(candidate: CaseErrors, active: CaseErrors, *, resamples: int) -> dict[str, Any]:
    """The comparison table of one case set: both models' metrics and paired differences."""
    return {
        "candidate": metric_table(candidate),
        "active": metric_table(active),
        "difference": {
            stat: paired_bootstrap(candidate.errors, active.errors, stat, resamples=resamples)
            for stat in ("median_mm", "worst_mm", "sdr_2mm")
        },
    }


__all__ = [
    "SDR_REPORTED_MM",
    "CaseErrors",
    "compare",
    "metric_table",
    "paired_bootstrap",
    "predict_errors",
    "scores_of",
]
