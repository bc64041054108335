"""Model input: :class:`Preprocessing` (grid spacing and HU window) and
:func:`to_model_grid`, which smooths and samples a Volume onto the LPS-aligned isotropic
model grid."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from glipcore.geometry import FloatArray, ijk_to_lps, make_affine
from glipcore.resample import MIN_SIGMA_PX, smoothed_resample
from glipcore.volume import Volume


class Preprocessing(BaseModel):
    """How a volume becomes model input: grid spacing and the HU window.

    The window (-1000, 1500) HU keeps air/lung, fat, soft tissue, contrast blood (250-550)
    and calcium up to 1500 HU apart; only dense bone and metal saturate. Values are scaled
    linearly so that ``hu_min`` -> 0 and ``hu_max`` -> 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spacing_mm: float = Field(default=1.6, gt=0)
    hu_min: float = -1000.0
    hu_max: float = 1500.0
    antialias: bool = True

    @model_validator(mode="after")
    def _window(self) -> Preprocessing:
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        return self

    def scale(self, hu: NDArray[Any]) -> NDArray[np.float32]:
        """HU -> clipped, scaled model values in [0, 1] (float32)."""
        out = np.clip(np.asarray(hu, dtype=np.float32), self.hu_min, self.hu_max)
        out -= np.float32(self.hu_min)
        out *= np.float32(1.0 / (self.hu_max - self.hu_min))
        return out

    def unscale(self, values: NDArray[Any]) -> NDArray[np.float32]:
        """Model values -> HU (inverse of :meth:`scale` inside the window)."""
        v = np.asarray(values, dtype=np.float32)
        return v * np.float32(self.hu_max - self.hu_min) + np.float32(self.hu_min)


def model_grid(
    affine: NDArray[Any], shape_zyx: tuple[int, int, int], spacing_mm: float = 1.6
) -> tuple[FloatArray, tuple[int, int, int]]:
    """The LPS-aligned isotropic grid covering a volume's voxel centres.

    Its origin is the bounding box's minimum corner (so an LPS-aligned source keeps its
    origin); it extends until its last voxel centre reaches the box's maximum."""
    a = np.asarray(affine, dtype=np.float64)
    hi_idx = np.array(shape_zyx[::-1], dtype=np.float64) - 1.0
    corners = np.array(
        [[i, j, k] for i in (0.0, hi_idx[0]) for j in (0.0, hi_idx[1]) for k in (0.0, hi_idx[2])]
    )
    lps = ijk_to_lps(a, corners)
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    n_ijk = np.ceil((hi - lo) / spacing_mm - 1e-6).astype(int) + 1
    return make_affine(lo, (spacing_mm,) * 3), (int(n_ijk[2]), int(n_ijk[1]), int(n_ijk[0]))


def antialias_sigmas(src_spacing: NDArray[Any], out_spacing: float) -> FloatArray:
    """Gaussian sigma (mm) per source axis before sampling at ``out_spacing``: the one that
    widens the source's sampling width to the target's, FWHM = sqrt(out^2 - in^2); zero
    where the source is already coarser."""
    sp = np.asarray(src_spacing, dtype=np.float64)
    fwhm = np.sqrt(np.maximum(out_spacing**2 - sp**2, 0.0))
    return np.asarray(fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))), dtype=np.float64)


def _axis_permutation(affine: FloatArray) -> NDArray[np.intp] | None:
    """For an affine whose voxel axes lie along LPS axes (any order and sign), the LPS axis
    of each voxel axis i, j, k; None for oblique grids."""
    lin = np.abs(affine[:3, :3])
    nonzero = lin > 1e-9 * float(lin.max())
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    return np.asarray(np.argmax(nonzero, axis=0), dtype=np.intp)


def _axis_weights(u: FloatArray, m: int, sigma_px: float) -> FloatArray:
    """(N, M) weights of one axis: Gaussian (edge values extended) then linear interpolation
    at continuous source indices ``u``; rows outside [-0.5, M - 0.5) are zero."""
    smooth = np.eye(m)
    if sigma_px >= MIN_SIGMA_PX:
        r = math.ceil(4.0 * sigma_px)
        taps = np.arange(-r, r + 1)
        g = np.exp(-(taps**2) / (2.0 * sigma_px**2))
        g /= g.sum()
        smooth = np.zeros((m, m))
        q = np.arange(m)
        for t, w in zip(taps, g, strict=True):
            np.add.at(smooth, (q, np.clip(q - t, 0, m - 1)), w)
    uc = np.clip(u, 0.0, m - 1.0)
    lo = np.minimum(np.floor(uc).astype(np.intp), max(m - 2, 0))
    frac = uc - lo
    tent = np.zeros((len(u), m))
    rows = np.arange(len(u))
    np.add.at(tent, (rows, lo), 1.0 - frac)
    np.add.at(tent, (rows, np.minimum(lo + 1, m - 1)), frac)
    tent[(u < -0.5) | (u >= m - 0.5)] = 0.0
    return np.asarray(tent @ smooth, dtype=np.float64)


def _contract(array: NDArray[np.float32], w: NDArray[np.float32], axis: int) -> NDArray[np.float32]:
    """Apply (N, M) weights along one array axis with contiguous BLAS products."""
    z, y, x = array.shape
    if axis == 2:
        return (array.reshape(-1, x) @ w.T).reshape(z, y, -1)
    if axis == 1:
        return np.asarray(np.matmul(w, array))
    return (w @ array.reshape(z, -1)).reshape(-1, y, x)


def _separable_model_grid(
    vol: Volume,
    perm: NDArray[np.intp],
    affine: FloatArray,
    shape_zyx: tuple[int, int, int],
    sigma_px: FloatArray,
    default_value: float,
) -> NDArray[np.float32]:
    """Smoothing plus linear sampling of an LPS-aligned source as three matrix products, one
    per axis (about ten times faster than filtering the full-size source)."""
    out = np.asarray(vol.array, dtype=np.float32)
    n_lps = shape_zyx[::-1]
    inside = []
    for p in range(3):  # voxel axis i, j, k = array axis 2, 1, 0
        a = int(perm[p])
        n = np.arange(n_lps[a])
        u = (affine[a, 3] + affine[a, a] * n - vol.affine[a, 3]) / vol.affine[a, p]
        w = _axis_weights(u, vol.array.shape[2 - p], float(sigma_px[p]))
        inside.append(w.any(axis=1))
        out = _contract(out, w.astype(np.float32), 2 - p)
    # array axis 2 - p now runs along LPS axis perm[p]; put LPS z, y, x first to last
    source_of = np.argsort(perm)
    out = np.ascontiguousarray(out.transpose([2 - int(source_of[2 - f]) for f in range(3)]))
    mask = np.ones(shape_zyx, dtype=bool)
    for p in range(3):
        a = int(perm[p])
        mask &= inside[p].reshape([-1 if f == 2 - a else 1 for f in range(3)])
    out[~mask] = np.float32(default_value)
    return out


def to_model_grid(vol: Volume, prep: Preprocessing | None = None) -> Volume:
    """Volume in HU -> model input: LPS-aligned isotropic grid (``prep.spacing_mm``) covering
    the source, Gaussian anti-aliasing on the source before linear sampling, HU clipped and
    scaled to [0, 1], float32. The returned affine maps model voxels to LPS mm exactly.

    LPS-aligned sources (axial CT, any axis order or sign) take an exact separable path;
    oblique ones are smoothed and resampled by SimpleITK."""
    prep = prep or Preprocessing()
    affine, shape = model_grid(vol.affine, vol.shape_zyx, prep.spacing_mm)
    sigma_px = (
        antialias_sigmas(vol.spacing, prep.spacing_mm) / vol.spacing
        if prep.antialias
        else np.zeros(3)
    )
    perm = _axis_permutation(vol.affine)
    if perm is not None:
        hu = _separable_model_grid(vol, perm, affine, shape, sigma_px, prep.hu_min)
    else:
        hu = smoothed_resample(vol.array, vol.affine, affine, shape, sigma_px, prep.hu_min)
    meta = dict(vol.meta)
    meta["preprocessing"] = prep.model_dump()
    meta["source_shape_zyx"] = list(vol.shape_zyx)
    meta["source_affine"] = vol.affine.tolist()
    return Volume(array=prep.scale(hu), affine=affine, meta=meta)


__all__ = ["Preprocessing", "antialias_sigmas", "model_grid", "to_model_grid"]
