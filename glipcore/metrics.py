"""The paper's metrics: Euclidean error, plane projection distance (eq. 9), plane angle,
success detection rate, and summaries.

NaN marks a value that is undefined: a landmark a case has no truth for, or a plane metric
of a degenerate prediction (collinear hinge points). Summaries and rates leave NaN out and
count it (``Summary.undefined``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glipcore.geometry import Plane, plane_angle_deg, plane_or_none, plane_through

SDR_THRESHOLDS_MM: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def euclidean_errors(pred: ArrayLike, true: ArrayLike) -> NDArray[np.float64]:
    """Per-landmark Euclidean distance in mm between (..., L, 3) arrays."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or p.shape[-1] != 3:
        raise ValueError(f"shape mismatch: pred {p.shape} vs true {t.shape}")
    return np.asarray(np.linalg.norm(p - t, axis=-1), dtype=np.float64)


def projection_distance(pred_points: ArrayLike, true_points: ArrayLike) -> float:
    """Eq. (9): mean distance of each plane's points to the other plane, both ways.

    The planes are those through the three predicted and the three true landmarks;
    the result averages the six point-plane distances (mm).
    """
    p = np.asarray(pred_points, dtype=np.float64)
    t = np.asarray(true_points, dtype=np.float64)
    pp, tp = plane_through(p), plane_through(t)
    return float((tp.distance(p).sum() + pp.distance(t).sum()) / (len(p) + len(t)))


def plane_angle(pred_points: ArrayLike, true_points: ArrayLike) -> float:
    """Angle (deg) between the planes through predicted and true landmarks."""
    return plane_angle_deg(plane_through(pred_points), plane_through(true_points))


def plane_errors(pred_points: ArrayLike, true_points: ArrayLike) -> tuple[float, float]:
    """(eq. 9 projection distance in mm, plane angle in deg) between the planes through
    three predicted and three true points; both NaN when the predicted points are collinear
    (a degenerate prediction: a failed case, not an error). True points must make a plane."""
    if plane_or_none(pred_points) is None:
        return math.nan, math.nan
    return projection_distance(pred_points, true_points), plane_angle(pred_points, true_points)


def success_detection_rate(
    errors_mm: ArrayLike, thresholds: Sequence[float] = SDR_THRESHOLDS_MM
) -> dict[float, float]:
    """Share of errors strictly below each threshold (mm); NaN (no truth) left out."""
    e = np.asarray(errors_mm, dtype=np.float64).ravel()
    e = e[~np.isnan(e)]
    if e.size == 0:
        raise ValueError("no errors to summarise")
    return {float(t): float(np.mean(e < t)) for t in thresholds}


@dataclass(frozen=True)
class Summary:
    """Distribution summary of a set of errors: ``n`` defined values, their statistics
    (NaN when none is defined) and the count of ``undefined`` (NaN) ones."""

    n: int
    mean: float
    median: float
    q1: float
    q3: float
    worst: float
    undefined: int = 0

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def summarize(values: ArrayLike) -> Summary:
    """Median, quartiles, mean and worst of a set of values; NaN values are counted as
    undefined and left out of the statistics."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to summarise")
    nan = np.isnan(v)
    v = v[~nan]
    if v.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, int(nan.sum()))
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return Summary(
        n=int(v.size),
        mean=float(v.mean()),
        median=float(med),
        q1=float(q1),
        q3=float(q3),
        worst=float(v.max()),
        undefined=int(nan.sum()),
    )


__all__ = [
    "SDR_THRESHOLDS_MM",
    "Plane",
    "Summary",
    "euclidean_errors",
    "plane_angle",
    "plane_errors",
    "projection_distance",
    "success_detection_rate",
    "summarize",
]
