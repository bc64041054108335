"""Statistics for the report: medians with bootstrap intervals, paired differences.

Landmark errors of one case are not independent, so the bootstrap resamples cases (with
all their landmarks), never single landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _cases(values: ArrayLike) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    return v[:, None] if v.ndim == 1 else v.reshape(len(v), -1)


def bootstrap_median(
    values: ArrayLike, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> Interval:
    """Median of (N,) or (N, L) values (NaN left out) with a case-resampling interval."""
    v = _cases(values)
    if not np.isfinite(v).any():
        return Interval(np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(v), size=(n_boot, len(v)))
    samples = v[idx].reshape(n_boot, -1)  # (n_boot, N * L): whole cases resampled
    ok = np.isfinite(samples).any(axis=1)
    meds = np.full(n_boot, np.nan)
    meds[ok] = np.nanmedian(samples[ok], axis=1)
    a = (1 - level) / 2
    lo, hi = np.nanpercentile(meds, [100 * a, 100 * (1 - a)])
    return Interval(float(np.nanmedian(v)), float(lo), float(hi))


def paired_difference(
    a: ArrayLike, b: ArrayLike, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> Interval:
    """Median of the paired differences a - b over the same cases (and landmarks), with a
    case-resampling interval: below 0 means ``a`` has the smaller errors."""
    x, y = _cases(a), _cases(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in shape: {x.shape} vs {y.shape}")
    return bootstrap_median(x - y, n_boot, level, seed)


def share_better(a: ArrayLike, b: ArrayLike) -> float:
    """Share of paired values where ``a`` is strictly smaller than ``b`` (NaN left out)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.mean(x[ok] < y[ok])) if ok.any() else float("nan")
