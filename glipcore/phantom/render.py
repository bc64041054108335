"""Sampling a case on a grid: analytic image at the voxel centres, then noise.

Blur is analytic and in mm: sigma^2 = psf^2 + (voxel width as a FWHM)^2 (+ motion^2 for
what beats). The voxel term matches the anti-aliasing of :func:`glipcore.preprocess.to_model_grid`
(FWHM^2 adds up: 0.4^2 + (1.6^2 - 0.4^2) = 1.6^2), so a case rendered on the 1.6 mm grid
agrees with its full-size rendering resampled there. Noise is specified at the native
0.4 x 0.4 x 0.5 mm sampling (slightly correlated there) and its SD scales with
sqrt(native voxel volume / voxel volume).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

from glipcore.geometry import FloatArray, lps_to_ijk, make_affine, spacing_of
from glipcore.phantom.anatomy import build_scene
from glipcore.phantom.params import NATIVE_SPACING_MM, PhantomCase
from glipcore.phantom.shapes import F32, BBox

Preset = Literal["full", "fast", "model"]
PRESETS: tuple[str, ...] = ("full", "fast", "model")
AIR_HU = -1000.0
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
NOISE_CORRELATION_MM = 0.3
_CHUNK_VOXELS = 2_000_000


def blur_sigmas(case: PhantomCase, voxel_mm: float, *, motion: bool = True) -> tuple[float, float]:
    """(static, cardiac) Gaussian blur in mm: point spread (+) a voxel of width ``voxel_mm``
    taken as a FWHM (+) cardiac motion for what beats."""
    static = math.hypot(case.scan.psf_sigma_mm, voxel_mm / FWHM_PER_SIGMA)
    return static, math.hypot(static, case.scan.motion_sigma_mm if motion else 0.0)


def voxel_width(affine: ArrayLike) -> float:
    """A grid's voxel width for the blur: the RMS of its spacings."""
    return float(np.sqrt(np.mean(spacing_of(affine) ** 2)))


def _index_box(
    affine: FloatArray,
    bbox: BBox | None,
    margin: float,
    shape: tuple[int, int, int],
    k0: int,
    k1: int,
) -> tuple[slice, slice, slice] | None:
    _, ny, nx = shape
    if bbox is None:
        return slice(k0, k1), slice(0, ny), slice(0, nx)
    lo, hi = bbox[0] - margin, bbox[1] + margin
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    ijk = lps_to_ijk(affine, corners)
    a = np.floor(ijk.min(axis=0)).astype(np.int64)
    b = np.ceil(ijk.max(axis=0)).astype(np.int64) + 1
    i0, i1 = max(int(a[0]), 0), min(int(b[0]), nx)
    j0, j1 = max(int(a[1]), 0), min(int(b[1]), ny)
    kk0, kk1 = max(int(a[2]), k0), min(int(b[2]), k1)
    if i0 >= i1 or j0 >= j1 or kk0 >= kk1:
        return None
    return slice(kk0, kk1), slice(j0, j1), slice(i0, i1)


def _coords(affine: FloatArray, sl: tuple[slice, slice, slice]) -> tuple[Any, Any, Any]:
    k = np.arange(sl[0].start, sl[0].stop, dtype=np.float64)[:, None, None]
    j = np.arange(sl[1].start, sl[1].stop, dtype=np.float64)[None, :, None]
    i = np.arange(sl[2].start, sl[2].stop, dtype=np.float64)[None, None, :]
    out = []
    for r in range(3):
        acc: Any = np.float32(affine[r, 3])
        for coef, idx in ((affine[r, 0], i), (affine[r, 1], j), (affine[r, 2], k)):
            if coef != 0.0:
                acc = acc + (coef * idx).astype(np.float32)
        if np.ndim(acc) == 0:
            acc = np.full((1, 1, 1), acc, dtype=np.float32)
        out.append(acc)
    return out[0], out[1], out[2]


def render_clean(
    case: PhantomCase, affine: ArrayLike, shape_zyx: tuple[int, int, int], *, artefacts: bool = True
) -> F32:
    """The noise-free image (HU, float32) on the grid; ``artefacts=False`` drops streaks and
    motion blur (the anatomy as a still, clean scan would show it)."""
    a = np.asarray(affine, dtype=np.float64)
    shape = (int(shape_zyx[0]), int(shape_zyx[1]), int(shape_zyx[2]))
    if a.shape != (4, 4) or min(shape) < 1:
        raise ValueError(f"need a 4x4 affine and a positive shape, got {a.shape}, {shape}")
    scene = build_scene(case, artefacts=artefacts)
    s_static, s_cardiac = blur_sigmas(case, voxel_width(a), motion=artefacts)
    img = np.full(shape, AIR_HU, dtype=np.float32)
    step = max(1, _CHUNK_VOXELS // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], step):
        k1 = min(shape[0], k0 + step)
        for p in scene.painters:
            sigma = s_cardiac if p.cardiac else s_static
            sl = _index_box(a, p.bbox(), 4.0 * sigma + 1.0, shape, k0, k1)
            if sl is not None:
                p.paint(img[sl], _coords(a, sl), sigma)
    return img


def sample(
    case: PhantomCase, points_lps: ArrayLike, *, voxel_mm: float = 0.0, artefacts: bool = True
) -> NDArray[np.float32]:
    """The noise-free image (HU) at arbitrary LPS points (..., 3), blurred by the scanner's
    point spread and a voxel of width ``voxel_mm`` (0: none); ``artefacts=False`` drops
    streaks and motion blur. Equals :func:`render_clean` at a grid's voxel centres when
    ``voxel_mm`` is :func:`voxel_width` of that grid."""
    p = np.asarray(points_lps, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    flat = p.reshape(-1, 3)
    scene = build_scene(case, artefacts=artefacts)
    static, cardiac = blur_sigmas(case, voxel_mm, motion=artefacts)
    img = np.full((1, 1, len(flat)), AIR_HU, dtype=np.float32)
    pts32 = flat.astype(np.float32)
    for painter in scene.painters:
        sigma = cardiac if painter.cardiac else static
        box = painter.bbox()
        if box is None:
            idx = np.arange(len(flat))
        else:
            margin = 4.0 * sigma + 1.0
            inside = np.all((flat >= box[0] - margin) & (flat <= box[1] + margin), axis=1)
            idx = np.flatnonzero(inside)
            if idx.size == 0:
                continue
        sub = img[:, :, idx]
        c = (
            pts32[idx, 0][None, None, :],
            pts32[idx, 1][None, None, :],
            pts32[idx, 2][None, None, :],
        )
        painter.paint(sub, c, sigma)
        img[:, :, idx] = sub
    return img.reshape(p.shape[:-1])


def noise_sd(case: PhantomCase, affine: ArrayLike) -> float:
    """Noise SD (HU) on a grid: the native SD scaled by sqrt(native / grid voxel volume)."""
    native = float(np.prod(NATIVE_SPACING_MM))
    return case.scan.noise_sd_hu * math.sqrt(native / float(np.prod(spacing_of(affine))))


def _kernel_gain(sigma_px: float) -> float:
    """Root-sum-square of scipy's normalised 1-D Gaussian kernel (truncate 4)."""
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    w /= w.sum()
    return float(np.sqrt((w * w).sum()))


def noise_slab(
    case: PhantomCase, affine: ArrayLike, shape_zyx: tuple[int, int, int], k0: int, k1: int
) -> F32:
    """The case's noise (HU) for slices k0..k1 of a grid, identical however the grid is
    split: each slice has its own random stream, and the correlation filter sees real
    neighbouring slices (a halo) wherever the grid has them."""
    nz, ny, nx = (int(v) for v in shape_zyx)
    sig_px = NOISE_CORRELATION_MM / spacing_of(affine)[::-1]  # (z, y, x)
    sig_px = np.where(sig_px >= 0.35, sig_px, 0.0)
    halo = int(4.0 * sig_px[0] + 0.5) if sig_px[0] > 0.0 else 0
    lo, hi = max(0, k0 - halo), min(nz, k1 + halo)
    noise = np.stack(
        [
            np.random.default_rng([case.seed, case.index, 7, k]).standard_normal(
                (ny, nx), dtype=np.float32
            )
            for k in range(lo, hi)
        ]
    )
    if float(sig_px.max()) > 0.0:
        noise = gaussian_filter(noise, sigma=sig_px.tolist(), truncate=4.0)
        noise *= np.float32(1.0 / np.prod([_kernel_gain(v) for v in sig_px if v > 0.0]))
    noise *= np.float32(noise_sd(case, affine))
    return np.asarray(noise[k0 - lo : k1 - lo], dtype=np.float32)


def _slab(
    args: tuple[PhantomCase, FloatArray, tuple[int, int, int], int, int, bool, bool],
) -> F32:
    case, affine, shape, k0, k1, noise, artefacts = args
    sub = affine.copy()
    sub[:3, 3] = affine[:3, 3] + k0 * affine[:3, 2]
    img = render_clean(case, sub, (k1 - k0, shape[1], shape[2]), artefacts=artefacts)
    if noise:
        img += noise_slab(case, affine, shape, k0, k1)
    return img


def render(
    case: PhantomCase,
    affine: ArrayLike,
    shape_zyx: tuple[int, int, int],
    *,
    noise: bool = True,
    artefacts: bool = True,
    workers: int = 1,
) -> F32:
    """The case on any grid: HU float32 (Z, Y, X), with noise unless ``noise=False``.
    ``workers`` > 1 renders z-slabs in parallel processes (identical result)."""
    a = np.asarray(affine, dtype=np.float64)
    shape = (int(shape_zyx[0]), int(shape_zyx[1]), int(shape_zyx[2]))
    nz = shape[0]
    if workers > 1 and nz >= 2 * workers:
        bounds = np.linspace(0, nz, workers + 1).round().astype(int)
        jobs = [
            (case, a, shape, int(k0), int(k1), noise, artefacts)
            for k0, k1 in itertools.pairwise(bounds)
        ]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return np.concatenate(list(pool.map(_slab, jobs)), axis=0)
    return _slab((case, a, shape, 0, nz, noise, artefacts))


def grid_for(case: PhantomCase, preset: str) -> tuple[FloatArray, tuple[int, int, int]]:
    """The grid (affine, shape_zyx) of a preset, all LPS-aligned and centred on the case's
    field of view (the root sits off-centre by up to ~25 mm):

    - "full": 512 x 512 at the case's pixel spacing (0.35-0.45 mm), 320 slices of 0.5 mm;
    - "fast": 128 x 128 at 1.25 mm, 80 slices of 1.25 mm (a 160 x 160 x 100 mm box);
    - "model": the 1.6 mm grid that :func:`glipcore.preprocess.to_model_grid` makes of "full"
      (same origin, covering the whole full-size scan)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "model":
        from glipcore.preprocess import model_grid

        full_affine, full_shape = grid_for(case, "full")
        return model_grid(full_affine, full_shape, 1.6)
    if preset == "full":
        ps = case.scan.pixel_spacing_mm
        spacing, shape = (ps, ps, 0.5), (320, 512, 512)
    else:
        spacing, shape = (1.25, 1.25, 1.25), (80, 128, 128)
    n_ijk = np.array(shape[::-1], dtype=np.float64)
    origin = np.asarray(case.scan.fov_center) - (n_ijk - 1.0) / 2.0 * np.asarray(spacing)
    return make_affine(origin, spacing), shape
