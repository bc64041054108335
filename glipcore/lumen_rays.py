"""Ray casting of a lumen's edge on a reformatted plane (see :mod:`glipcore.sizing`):
profiles along rays from a centre, each ray's first edge (or calcium, or none), a robust
low-order Fourier fit of the edge radius r(theta) that bridges what is not a lumen edge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import map_coordinates

from glipcore.geometry import FloatArray
from glipcore.reformat import PlaneImage


@dataclass(frozen=True)
class SizingParams:
    """Tunables of :func:`size_annulus` (lengths in mm, intensities in HU)."""

    size_mm: float = 60.0
    pixel_mm: float = 0.3
    smooth_mm: float = 0.5
    rays: int = 360
    step_mm: float = 0.1
    blood_radius_mm: float = 4.0
    min_blood_hu: float = 150.0
    calcium_hu: float = 600.0
    tissue_guess_hu: float = 60.0
    blur_correction: bool = True
    calcium_margin_hu: float = 150.0
    tissue_window_mm: tuple[float, float] = (1.5, 3.0)
    bridge_margin_rays: int = 3
    fit_harmonics: int = 2
    outlier_mm: float = 0.6
    contour_harmonics: int = 12
    max_open_fraction: float = 0.05
    max_bridged_fraction: float = 0.7
    max_gap_deg: float = 100.0
    max_hinge_gap_mm: float = 3.0
    diameter_range_mm: tuple[float, float] = (12.0, 40.0)


DEFAULT_PARAMS = SizingParams()


@dataclass(frozen=True)
class Edges:
    """Per-ray edge radius (mm) and whether the ray met calcium or never left the lumen."""

    radius: FloatArray
    calcium: NDArray[np.bool_]
    open: NDArray[np.bool_]


def ray_profiles(
    img: NDArray[np.float32],
    image: PlaneImage,
    centre: FloatArray,
    radii: FloatArray,
    p: SizingParams,
) -> FloatArray:
    """(rays, len(radii)) samples of ``img`` along rays from ``centre`` (in-plane mm)."""
    theta = np.linspace(0.0, 2.0 * np.pi, p.rays, endpoint=False)
    xy = centre + radii[None, :, None] * np.stack([np.cos(theta), np.sin(theta)], -1)[:, None]
    px = image.to_px(xy)
    vals = map_coordinates(img, [px[..., 0], px[..., 1]], order=1, cval=np.nan)
    return np.asarray(vals, dtype=np.float64)


def first_edges(prof: FloatArray, radii: FloatArray, low: float, high: float) -> Edges:
    """First sample of each ray below ``low`` (the lumen edge, interpolated), at or above
    ``high`` (calcium) or NaN (out of the volume: open)."""
    stop = ~((prof >= low) & (prof < high))  # NaN compares False: a stop
    hit = stop.any(axis=1)
    idx = np.where(hit, stop.argmax(axis=1), prof.shape[1] - 1)
    rows = np.arange(prof.shape[0])
    v1 = prof[rows, idx]
    v0 = prof[rows, np.maximum(idx - 1, 0)]
    calcium = hit & (v1 >= high)
    target = np.where(calcium, high, low)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((v0 - target) / (v0 - v1), 0.0, 1.0)
    frac = np.where(np.isfinite(frac), frac, 0.0)
    step = float(radii[1] - radii[0])
    radius = radii[np.maximum(idx - 1, 0)] + frac * step
    is_open = ~hit | np.isnan(v1)
    return Edges(np.asarray(radius, dtype=np.float64), calcium & ~is_open, is_open)


def bright_beyond(
    prof: FloatArray, radii: FloatArray, radius: FloatArray, level: float, p: SizingParams
) -> NDArray[np.bool_]:
    """Rays whose profile climbs back to ``level`` within the tissue window beyond the
    edge (calcium or another lumen there blurs the edge outwards), widened by
    ``bridge_margin_rays`` on each side."""
    beyond = (radii[None, :] >= radius[:, None]) & (
        radii[None, :] <= radius[:, None] + p.tissue_window_mm[1]
    )
    bright = np.any(beyond & (np.nan_to_num(prof, nan=-np.inf) >= level), axis=1)
    k = p.bridge_margin_rays
    out = bright.copy()
    for s in range(1, k + 1):
        out |= np.roll(bright, s) | np.roll(bright, -s)
    return np.asarray(out)


def fourier_basis(theta: FloatArray, harmonics: int) -> FloatArray:
    cols = [np.ones_like(theta)]
    for k in range(1, harmonics + 1):
        cols += [np.cos(k * theta), np.sin(k * theta)]
    return np.stack(cols, axis=1)


def robust_fourier_fit(
    theta: FloatArray, r: FloatArray, good: NDArray[np.bool_], p: SizingParams
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Low-order Fourier fit of r(theta) on the good rays, dropping outliers with a
    tolerance shrinking to ``outlier_mm`` (so that gross outliers cannot drag the first fit
    over the moderate ones); returns the fit on every ray and the rays kept."""
    basis = fourier_basis(theta, p.fit_harmonics)
    keep = good.copy()
    fit = np.full_like(r, float(np.median(r[good])))
    schedule = [8.0, 4.0, 2.0] + [1.0] * 4
    for factor in schedule:
        if keep.sum() < basis.shape[1] * 3:
            break
        coef, *_ = np.linalg.lstsq(basis[keep], r[keep], rcond=None)
        fit = basis @ coef
        new = good & (np.abs(r - fit) <= factor * p.outlier_mm)
        if factor == 1.0 and np.array_equal(new, keep):
            break
        keep = new
    return np.asarray(fit, dtype=np.float64), keep


def low_pass(r: FloatArray, harmonics: int) -> FloatArray:
    spec = np.fft.rfft(r)
    spec[harmonics + 1 :] = 0.0
    return np.asarray(np.fft.irfft(spec, n=r.size), dtype=np.float64)


@dataclass(frozen=True)
class LumenTrace:
    """One pass of the ray casting from a centre: the contour (K, 2) in-plane mm (empty
    when too few rays met an edge), the share of it bridged, the share of rays that never
    met an edge, the edge threshold (HU) and the edge blur (Gaussian sigma, mm)."""

    contour_xy: FloatArray
    bridged: float
    open_fraction: float
    threshold: float
    blur_mm: float
    largest_gap_deg: float


def largest_gap_deg(keep: NDArray[np.bool_]) -> float:
    """The longest circular run of rays not kept, in degrees."""
    if keep.all():
        return 0.0
    if not keep.any():
        return 360.0
    start = int(np.argmax(keep))  # begin at a kept ray so that no run wraps around
    run = best = 0
    for k in np.roll(~keep, -start):
        run = run + 1 if k else 0
        best = max(best, run)
    return 360.0 * best / keep.size


def tissue_hu(prof: FloatArray, radii: FloatArray, edges: Edges, p: SizingParams) -> float | None:
    """Median of the profiles in the tissue window beyond the edges of the clean rays."""
    ok = ~edges.calcium & ~edges.open
    if ok.sum() <= p.rays // 4:
        return None
    lo_i = np.searchsorted(radii, edges.radius[ok] + p.tissue_window_mm[0])
    hi_i = np.searchsorted(radii, edges.radius[ok] + p.tissue_window_mm[1])
    rows = prof[ok]
    vals = np.concatenate([rows[k, a:b] for k, (a, b) in enumerate(zip(lo_i, hi_i, strict=True))])
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else None


def edge_blur_mm(
    prof: FloatArray,
    radii: FloatArray,
    radius: FloatArray,
    good: NDArray[np.bool_],
    contrast: float,
) -> float:
    """Gaussian sigma (mm) of the edges: a blurred step of height ``contrast`` has the
    steepest slope contrast / (sigma sqrt(2 pi)) at its half-way point; median over the
    good rays of the slope measured over +-0.3 mm."""
    step = float(radii[1] - radii[0])
    k = max(1, round(0.3 / step))
    idx = np.clip(np.round(radius[good] / step).astype(np.int64), k, radii.size - 1 - k)
    rows = prof[good]
    n = np.arange(rows.shape[0])
    slope = (rows[n, idx - k] - rows[n, idx + k]) / (2 * k * step)
    slope = slope[np.isfinite(slope) & (slope > 0)]
    if not slope.size:
        return 0.0
    return float(contrast / (float(np.median(slope)) * np.sqrt(2.0 * np.pi)))


def trace_lumen(
    img: NDArray[np.float32], image: PlaneImage, centre: FloatArray, blood: float, p: SizingParams
) -> LumenTrace:
    """Cast the rays from ``centre`` (in-plane mm), find and fit the lumen edge.

    The half-way level of a blurred convex edge lies inside it by sigma^2 / (2 R) (the
    heat equation moves level sets by their curvature): the contour is moved out by that
    much, with the blur measured on the edges themselves."""
    radii = np.arange(0.0, p.size_mm / 2.0, p.step_mm)
    prof = ray_profiles(img, image, centre, radii, p)
    high = max(blood + p.calcium_margin_hu, 0.5 * (blood + p.calcium_hu))
    edges = first_edges(prof, radii, 0.5 * (blood + p.tissue_guess_hu), high)
    tissue = tissue_hu(prof, radii, edges, p)
    tissue = p.tissue_guess_hu if tissue is None else min(tissue, blood - 100.0)
    low = 0.5 * (blood + tissue)
    edges = first_edges(prof, radii, low, high)
    theta = np.linspace(0.0, 2.0 * np.pi, p.rays, endpoint=False)
    bright = bright_beyond(prof, radii, edges.radius, blood + 0.25 * (high - blood), p)
    good = ~edges.calcium & ~edges.open & ~bright
    if good.sum() < p.rays // 4:
        return LumenTrace(np.empty((0, 2)), 1.0, float(edges.open.mean()), low, 0.0, 360.0)
    fit, keep = robust_fourier_fit(theta, edges.radius, good, p)
    r = low_pass(np.where(keep, edges.radius, fit), p.contour_harmonics)
    blur = edge_blur_mm(prof, radii, edges.radius, keep, blood - tissue) if keep.any() else 0.0
    if p.blur_correction:
        r = r + blur**2 / (2.0 * np.maximum(r, 1.0))
    xy = centre + r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    bridged = float(1.0 - keep.mean())
    gap = largest_gap_deg(keep)
    return LumenTrace(xy, bridged, float(edges.open.mean()), low, blur, gap)


__all__ = [
    "DEFAULT_PARAMS",
    "Edges",
    "LumenTrace",
    "SizingParams",
    "bright_beyond",
    "edge_blur_mm",
    "first_edges",
    "fourier_basis",
    "largest_gap_deg",
    "low_pass",
    "ray_profiles",
    "robust_fourier_fit",
    "tissue_hu",
    "trace_lumen",
]
