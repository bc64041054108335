"""Measured landmark confidence: test-time augmentation (TTA) spread, fold agreement and peak
sharpness, combined into a calibrated score in [0, 1] (low: the landmark is likely more than
2 mm off).

A TTA pass resamples the model-grid volume on a slightly moved grid (a sub-voxel shift, a
small rotation about its centre) and scales its intensities, runs one fold model on it and
decodes the landmarks on that grid (the whole grid by default; optionally a box around the
predicted landmarks, :func:`tta_box`, about the training crop's size: cheaper on long scans,
but its spread separated wrong landmarks less well on the phantoms). The moved grid's affine
maps its voxels to patient LPS mm, so each pass's points come back in the same LPS frame as
the main prediction with no inverse warp: the value at voxel ``ijk`` of the moved grid is
the image at LPS ``A' ijk``, so a peak found there is at ``A' ijk``. Mirroring is never a
TTA pass (it would swap the left and right coronary cusps).

The TTA spread of a landmark is the RMS distance (mm) of the passes' points from the main
prediction. A landmark the network really found moves with the anatomy; one it guessed
(a blunt dome, a calcium nodule that looks like a hinge) jumps between passes.

The score is a logistic model of P(error <= 2 mm) in log(total spread) and log(sharpness),
fitted with ``python -m bench.confidence --fit`` on phantom cohorts whose seeds are neither
the training seed nor the bench's evaluation seeds (see :data:`CALIBRATION`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.ndimage import affine_transform

from glipcore.decode import refine_ijk
from glipcore.geometry import FloatArray, ijk_to_lps, lps_to_ijk
from glipcore.volume import Volume


@dataclass(frozen=True)
class TtaPass:
    """One test-time augmentation: grid shift (voxels, i/j/k), rotation about the grid
    centre (degrees about the L, P, S axes) and intensity scale of the model input."""

    shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    intensity: float = 1.0


TTA_PASSES: tuple[TtaPass, ...] = (
    TtaPass((0.5, -0.5, 0.5), (3.0, -3.0, 0.0), 1.05),
    TtaPass((-0.5, 0.5, -0.5), (-3.0, 0.0, 3.0), 0.95),
    TtaPass((0.5, 0.5, -0.5), (0.0, 3.0, -3.0), 1.0),
    TtaPass((-0.5, -0.5, 0.5), (3.0, 3.0, 3.0), 1.0),
)
"""The TTA passes in the order they are used (``tta_passes=n`` takes the first n): half a
voxel (0.8 mm) on each axis, which moves the anatomy against the U-Net's pooling lattice,
3 degree rotations and +-5 % contrast, all well inside the training augmentation
(``glipcore.dataset.Augment``: 10 degrees, +-10 %)."""

MIN_BOX_ZYX: tuple[int, int, int] = (56, 72, 72)
"""Smallest box (voxels) the TTA passes run on: a little more than the training crop
(48 x 64 x 64 in the shipped bundles), so the network sees the context it was trained on."""
BOX_MARGIN_MM = 24.0
"""Context (mm) kept around the predicted landmarks' bounding box for the TTA passes."""

DEFAULT_TTA_PASSES = 2
"""Extra network runs per study for the confidence (see ``bench.confidence`` for the cost)."""


def _rotation(deg: tuple[float, float, float]) -> FloatArray:
    ax, ay, az = (math.radians(d) for d in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def moved_affine(
    grid: Volume,
    tta: TtaPass,
    centre_lps: FloatArray | None = None,
    shape_zyx: tuple[int, int, int] | None = None,
) -> FloatArray:
    """The affine (voxel -> LPS mm) of the pass's moved grid of ``shape_zyx`` (default: the
    grid's) centred on ``centre_lps`` (default: the grid's centre), with the grid's spacing
    and axes, rotated about that centre and shifted by ``shift_vox`` voxels."""
    a = np.asarray(grid.affine, dtype=np.float64)
    shape = shape_zyx or grid.shape_zyx
    half = (np.array(shape[::-1], dtype=np.float64) - 1.0) / 2.0
    if centre_lps is None:
        c = ijk_to_lps(a, (np.array(grid.shape_zyx[::-1], dtype=np.float64) - 1.0) / 2.0)
    else:
        c = np.asarray(centre_lps, dtype=np.float64)
    base = a.copy()
    base[:3, 3] = c - a[:3, :3] @ half  # the box's centre voxel sits on c
    r = _rotation(tta.rotate_deg)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(tta.shift_vox, dtype=np.float64)
    return np.asarray(m @ base @ shift, dtype=np.float64)


def augment_grid(
    grid: Volume,
    tta: TtaPass,
    fill: float = 0.0,
    *,
    centre_lps: FloatArray | None = None,
    shape_zyx: tuple[int, int, int] | None = None,
) -> Volume:
    """The model-grid volume resampled (trilinear) on the pass's moved grid (see
    :func:`moved_affine`), intensities scaled; voxels from outside the volume get ``fill``
    (0 = air in model units)."""
    shape = shape_zyx or grid.shape_zyx
    a2 = moved_affine(grid, tta, centre_lps, shape)
    to_src = np.linalg.solve(grid.affine, a2)  # moved ijk -> source ijk
    # scipy works in array (z, y, x) order: permute the ijk map.
    p = np.zeros((4, 4))
    p[0, 2] = p[1, 1] = p[2, 0] = p[3, 3] = 1.0
    zyx = p @ to_src @ p
    src = np.asarray(grid.array, dtype=np.float32)
    out = affine_transform(
        src,
        zyx[:3, :3],
        offset=zyx[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=fill,
        prefilter=False,
    )
    out = np.asarray(out, dtype=np.float32)
    if tta.intensity != 1.0:
        out *= np.float32(tta.intensity)
    return Volume(array=out, affine=a2, meta=dict(grid.meta))


def tta_box(
    grid: Volume,
    points_lps: FloatArray,
    min_shape_zyx: tuple[int, int, int] = MIN_BOX_ZYX,
    margin_mm: float = BOX_MARGIN_MM,
) -> tuple[FloatArray, tuple[int, int, int]]:
    """Centre (LPS mm) and shape (Z, Y, X) of the box the TTA passes run on: the predicted
    landmarks' bounding box plus ``margin_mm`` on each side, at least ``min_shape_zyx``
    voxels and at most the grid's shape."""
    pts = np.asarray(points_lps, dtype=np.float64)
    ijk = lps_to_ijk(grid.affine, pts)
    lo, hi = ijk.min(0), ijk.max(0)
    spacing = float(np.abs(np.linalg.det(grid.affine[:3, :3])) ** (1 / 3))
    need_ijk = np.ceil(hi - lo + 2 * margin_mm / spacing).astype(int) + 1
    shape = np.maximum(need_ijk[::-1], np.array(min_shape_zyx))
    shape = np.minimum(shape, np.array(grid.shape_zyx))
    centre = ijk_to_lps(grid.affine, (lo + hi) / 2.0)
    z, y, x = (int(v) for v in shape)
    return centre, (z, y, x)


HeatmapFn = Callable[[torch.Tensor, int], torch.Tensor]
"""(model-grid image (Z, Y, X), fold index) -> raw output (L, Z, Y, X)."""


def tta_points(
    grid: Volume,
    heatmaps: HeatmapFn,
    passes: Sequence[TtaPass],
    n_folds: int = 1,
    refine: str = "hybrid",
    *,
    around_lps: FloatArray | None = None,
) -> FloatArray:
    """Each pass's landmarks in LPS mm, (P, L, 3); pass p runs fold ``p % n_folds`` (one
    network run per pass whatever the number of folds). With ``around_lps`` (the main
    prediction's landmarks) the passes run on the box of :func:`tta_box` around them
    instead of the whole grid (a fraction of the cost on a long scan)."""
    centre: FloatArray | None = None
    shape: tuple[int, int, int] | None = None
    if around_lps is not None:
        centre, shape = tta_box(grid, around_lps)
    pts = []
    for p, tta in enumerate(passes):
        moved = augment_grid(grid, tta, centre_lps=centre, shape_zyx=shape)
        image = torch.from_numpy(np.ascontiguousarray(moved.array))
        maps = heatmaps(image, p % max(1, n_folds))
        ijk = refine_ijk(maps, method=refine).numpy()  # type: ignore[arg-type]
        pts.append(ijk_to_lps(moved.affine, ijk))
    if not pts:
        return np.zeros((0, 0, 3))
    return np.asarray(np.stack(pts), dtype=np.float64)


def rms_spread_mm(points: NDArray[np.float64], centre: NDArray[np.float64]) -> FloatArray:
    """RMS distance (mm) of points (P, L, 3) from centre (L, 3), per landmark (L,); zeros
    when P = 0."""
    if points.size == 0:
        return np.zeros(centre.shape[0])
    d2 = ((points - centre[None]) ** 2).sum(-1)
    return np.asarray(np.sqrt(d2.mean(0)), dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """Logistic model of P(error <= 2 mm): sigmoid(intercept + spread_coef * ln(spread_mm +
    spread_floor_mm) + sharp_coef * ln(max(sharpness, 1) / sharpness_ref)).

    ``spread_mm`` is :func:`combined_spread_mm` of the fold and TTA spreads;
    ``sharpness_ref`` is the bundle's (``glipcore.predict.SHARPNESS_REF`` or its metadata).
    ``spread_coef`` must be negative (or 0 for a sharpness-only model) and ``sharp_coef``
    non-negative, so the score falls with spread and rises with sharpness."""

    intercept: float
    spread_coef: float
    sharp_coef: float
    spread_floor_mm: float = 0.1

    def __post_init__(self) -> None:
        if self.spread_coef > 0 or self.sharp_coef < 0:
            raise ValueError("calibration: spread_coef must be <= 0 and sharp_coef >= 0")

    def logit(self, spread_mm: float, sharpness: float, sharpness_ref: float) -> float:
        """The model's log-odds of error <= 2 mm."""
        return (
            self.intercept
            + self.spread_coef * math.log(spread_mm + self.spread_floor_mm)
            + self.sharp_coef * math.log(max(sharpness, 1.0) / sharpness_ref)
        )


CALIBRATION = Calibration(intercept=0.159, spread_coef=-1.451, sharp_coef=0.954)
"""With a spread (TTA passes or several folds). Fitted (``bench.confidence.fit_calibration``)
on the shipped bundle phantom-glip-38aca5f481b7 with 2 whole-grid TTA passes: 18 model-grid
phantoms, 14 with heavy hinge calcium (seed 515151) and 4 default (seed 535353), 54
landmarks of which 13 were more than 2 mm off; AUROC there 0.80 (TTA spread alone 0.80,
sharpness alone 0.78, the former peak score 0.53). Refit for another bundle with
``python -m bench.confidence --fit --seed S1 --calcified-seed S2`` on seeds of its own.

Kept for the five-landmark model that replaced it (phantom-glip-five-885074d8c485): a refit
on the same seeds found only 3 landmarks more than 2 mm off among 450 (90 phantoms), too few
events to fit three coefficients; with these constants its AUROC on the evaluation seeds
was 0.993 [0.982, 1.000] (3 bad landmarks of 450) against 0.66 for the peak score.

Kept for its two-fold ensemble (phantom-glip-five-841a2b5eeb58), with the fold and TTA
spreads pooled (:func:`combined_spread_mm`): AUROC 0.989 [0.971, 1.000] on the evaluation
seeds (4 bad of 450); on bench.confidence_site's 40 difficult-site studies (120 hinge
points, 67 more than 2 mm off) 0.642 [0.540, 0.740], where fold 0 alone scored 0.720
[0.609, 0.814] on the same studies (75 off). Brier score there 0.244 (0.262 with the
spreads' root sum of squares)."""

SHARPNESS_ONLY = Calibration(intercept=0.234, spread_coef=0.0, sharp_coef=2.143)
"""With neither TTA passes nor several folds: sharpness only (same fit data)."""


def calibration_for(tta_passes: int, n_folds: int) -> Calibration:
    """The calibration that applies: :data:`CALIBRATION` when a spread was measured (TTA
    passes or several folds), else :data:`SHARPNESS_ONLY`."""
    return CALIBRATION if tta_passes > 0 or n_folds > 1 else SHARPNESS_ONLY


def combined_spread_mm(fold_spread_mm: float, tta_spread_mm: float, n_folds: int = 1) -> float:
    """One spread (mm) from the fold spread and the TTA spread: their quadratic mean when
    both were measured (several folds, or a non-zero fold spread, and a TTA spread), else the
    one that was.

    Each is an RMS distance of extra network outputs from the main prediction, and the
    calibration was fitted on one of them (the TTA spread of one fold), so the combination
    stays on that scale. Their root sum of squares, used before, counted a two-fold
    ensemble's disagreement twice (its TTA passes alternate the folds, so the TTA spread
    holds it already) and put every landmark of the ensemble about 1.4 times further out:
    on the demo case its correct hinge points scored 0.65-0.82 and on bench.confidence_site's
    difficult site the gate at 0.5 flagged 43 of 53 correct hinge points."""
    folds = n_folds > 1 or fold_spread_mm > 0.0
    if folds and tta_spread_mm > 0.0:
        return math.sqrt((fold_spread_mm**2 + tta_spread_mm**2) / 2.0)
    return fold_spread_mm if folds else tta_spread_mm


def score(
    fold_spread_mm: float,
    tta_spread_mm: float,
    sharpness: float,
    *,
    sharpness_ref: float,
    tta_passes: int = 0,
    n_folds: int = 1,
    calibration: Calibration | None = None,
) -> float:
    """Calibrated confidence in [0, 1] (see :class:`Calibration`); ``calibration``
    defaults to :func:`calibration_for` (tta_passes, n_folds)."""
    cal = calibration or calibration_for(tta_passes, n_folds)
    spread = combined_spread_mm(fold_spread_mm, tta_spread_mm, n_folds)
    z = cal.logit(spread, sharpness, sharpness_ref)
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


__all__ = [
    "CALIBRATION",
    "DEFAULT_TTA_PASSES",
    "SHARPNESS_ONLY",
    "TTA_PASSES",
    "Calibration",
    "HeatmapFn",
    "TtaPass",
    "augment_grid",
    "calibration_for",
    "combined_spread_mm",
    "moved_affine",
    "rms_spread_mm",
    "score",
    "tta_points",
]
