"""Gaussian heatmap targets, eq. (1) with the SQUARED distance in mm.

h_v = exp(-||g_v - l||^2 / (2 sigma^2)), with g_v the centre of voxel v and l the landmark,
both in LPS mm, and sigma in mm (as the authors' code; the paper's eq. (1) drops the square).

Two entry points:

- :func:`gaussian_heatmaps` for one volume with any affine (oblique, anisotropic): the
  squared distance is a quadratic form in the voxel-index offsets, evaluated by
  broadcasting three 1-D offset vectors, so memory stays at one (Z, Y, X) map per landmark.
- :func:`gaussian_heatmaps_ijk` for training batches on an axis-aligned grid (the model
  grid): landmarks in continuous voxel indices plus the voxel spacing; separable, runs on
  any device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from glipcore.geometry import lps_to_ijk


def _check_shape(shape_zyx: Sequence[int]) -> tuple[int, int, int]:
    if len(shape_zyx) != 3 or any(int(s) < 1 for s in shape_zyx):
        raise ValueError(f"shape_zyx must be three positive sizes (Z, Y, X), got {shape_zyx}")
    z, y, x = (int(s) for s in shape_zyx)
    return z, y, x


def _check_sigma(sigma_mm: float) -> float:
    s = float(sigma_mm)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"sigma_mm must be a positive finite number, got {sigma_mm}")
    return s


def gaussian_heatmaps(
    shape_zyx: Sequence[int],
    affine: ArrayLike,
    landmarks_lps: ArrayLike,
    sigma_mm: float,
) -> torch.Tensor:
    """Heatmaps (L, Z, Y, X) float32 for landmarks (L, 3) in LPS mm on a grid of
    ``shape_zyx`` whose 4x4 ``affine`` maps (i, j, k, 1) to LPS mm.

    Works for any non-singular affine; a landmark outside the grid gives a map that is ~0.
    """
    z, y, x = _check_shape(shape_zyx)
    sigma = _check_sigma(sigma_mm)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError("affine must be a finite 4x4 matrix")
    lm = np.asarray(landmarks_lps, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 3 or not np.all(np.isfinite(lm)):
        raise ValueError(f"landmarks_lps must be a finite (L, 3) array, got shape {lm.shape}")
    m = a[:3, :3]
    if abs(float(np.linalg.det(m))) < 1e-12:
        raise ValueError("affine is singular")
    # g - l = M (ijk - ijk_l), so ||g - l||^2 = d^T G d with the metric tensor G = M^T M.
    gram = torch.from_numpy(m.T @ m)
    centre = torch.from_numpy(lps_to_ijk(a, lm))  # (L, 3) as (i, j, k)
    di = torch.arange(x, dtype=torch.float64)[None, :] - centre[:, 0:1]  # (L, X)
    dj = torch.arange(y, dtype=torch.float64)[None, :] - centre[:, 1:2]  # (L, Y)
    dk = torch.arange(z, dtype=torch.float64)[None, :] - centre[:, 2:3]  # (L, Z)
    i_ = di[:, None, None, :]
    j_ = dj[:, None, :, None]
    k_ = dk[:, :, None, None]
    d2 = (
        gram[0, 0] * i_**2
        + gram[1, 1] * j_**2
        + gram[2, 2] * k_**2
        + 2 * gram[0, 1] * i_ * j_
        + 2 * gram[0, 2] * i_ * k_
        + 2 * gram[1, 2] * j_ * k_
    )
    return torch.exp(-d2 / (2.0 * sigma**2)).to(torch.float32)


def gaussian_heatmaps_ijk(
    shape_zyx: Sequence[int],
    landmarks_ijk: torch.Tensor,
    spacing_ijk: torch.Tensor | Sequence[float],
    sigma_mm: float,
) -> torch.Tensor:
    """Batched heatmaps on an axis-aligned grid: landmarks (..., L, 3) in continuous voxel
    indices (i, j, k), voxel spacing (3,) or (..., 3) in mm -> (..., L, Z, Y, X).

    Identical to :func:`gaussian_heatmaps` when the affine has no rotation; computed as a
    product of three 1-D Gaussians on the landmarks' device and dtype (float32 if integer).
    """
    z, y, x = _check_shape(shape_zyx)
    sigma = _check_sigma(sigma_mm)
    lm = landmarks_ijk if landmarks_ijk.is_floating_point() else landmarks_ijk.float()
    if lm.ndim < 2 or lm.shape[-1] != 3:
        raise ValueError(f"landmarks_ijk must be (..., L, 3), got {tuple(lm.shape)}")
    sp = torch.as_tensor(spacing_ijk, dtype=lm.dtype, device=lm.device)
    if sp.shape[-1] != 3 or bool((sp <= 0).any()):
        raise ValueError("spacing_ijk must be positive with last dimension 3")
    if sp.ndim > 1:
        sp = sp.unsqueeze(-2)  # (..., 1, 3): one spacing per sample, shared by its landmarks
    factors = []
    for axis, n in enumerate((x, y, z)):
        grid = torch.arange(n, dtype=lm.dtype, device=lm.device)
        d_mm = (grid - lm[..., axis : axis + 1]) * sp[..., axis : axis + 1]  # (..., L, n)
        factors.append(torch.exp(-(d_mm**2) / (2.0 * sigma**2)))
    fi, fj, fk = factors
    return fk[..., :, None, None] * fj[..., None, :, None] * fi[..., None, None, :]


__all__ = ["gaussian_heatmaps", "gaussian_heatmaps_ijk"]
