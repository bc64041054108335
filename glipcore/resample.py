"""Resampling a Volume on another grid with SimpleITK, in index space (so that any pair
of affines, even sheared ones, is honoured exactly), and Gaussian smoothing in index
units."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import SimpleITK
from numpy.typing import NDArray

from glipcore.geometry import FloatArray
from glipcore.volume import Volume

# SimpleITK's SWIG wrappers carry no annotations: use it as a dynamic module.
sitk: Any = SimpleITK
SitkImage = Any

Interpolator = Literal["nearest", "linear", "bspline"]
_INTERPOLATORS: dict[str, int] = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


def _index_image(array: NDArray[Any]) -> SitkImage:
    """The array as an image whose physical space is its index space (i, j, k)."""
    return sitk.GetImageFromArray(np.ascontiguousarray(array))


def _resample_index(
    img: SitkImage,
    src_affine: FloatArray,
    affine: FloatArray,
    shape_zyx: tuple[int, int, int],
    default_value: float,
    interpolator: str,
    pixel_id: int,
) -> NDArray[Any]:
    # Both images live in index space; the transform maps output ijk -> source ijk exactly,
    # so any pair of (even sheared) affines is honoured.
    m = np.linalg.solve(src_affine, affine)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in m[:3, :3].ravel()])
    transform.SetTranslation([float(v) for v in m[:3, 3]])
    out = sitk.Resample(
        img,
        [int(shape_zyx[2]), int(shape_zyx[1]), int(shape_zyx[0])],
        transform,
        _INTERPOLATORS[interpolator],
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        tuple(np.eye(3).ravel().tolist()),
        float(default_value),
        pixel_id,
    )
    return np.asarray(sitk.GetArrayFromImage(out))


def resample(
    vol: Volume,
    affine: NDArray[Any],
    shape_zyx: tuple[int, int, int],
    *,
    default_value: float,
    interpolator: Interpolator = "linear",
) -> Volume:
    """Sample ``vol`` on the grid (``affine``, ``shape_zyx``); no smoothing.

    Points outside the source take ``default_value``. Linear and B-spline give float32;
    nearest keeps the dtype."""
    if interpolator not in _INTERPOLATORS:
        raise ValueError(
            f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}"
        )
    target = np.asarray(affine, dtype=np.float64)
    if len(shape_zyx) != 3 or min(int(v) for v in shape_zyx) < 1:
        raise ValueError(f"shape_zyx must be three positive sizes, got {shape_zyx}")
    shape = (int(shape_zyx[0]), int(shape_zyx[1]), int(shape_zyx[2]))
    src = vol.array if interpolator == "nearest" else vol.array.astype(np.float32, copy=False)
    img = _index_image(src)
    pixel_id = img.GetPixelID() if interpolator == "nearest" else sitk.sitkFloat32
    out = _resample_index(img, vol.affine, target, shape, default_value, interpolator, pixel_id)
    return Volume(array=out, affine=target, meta=dict(vol.meta))


MIN_SIGMA_PX = 0.2
"""Smoothing below this sigma (in source voxels) changes less than 1 % and is skipped."""


def _smooth(img: SitkImage, sigma_px: FloatArray) -> SitkImage:
    """Recursive Gaussian per axis in index units (matches a sampled Gaussian to ~1e-3 down
    to 0.4 px)."""
    active = [bool(s >= MIN_SIGMA_PX) for s in sigma_px]
    if all(active):
        return sitk.SmoothingRecursiveGaussian(img, [float(s) for s in sigma_px])
    for axis, (s, on) in enumerate(zip(sigma_px, active, strict=True)):
        if on:
            img = sitk.RecursiveGaussian(
                img, float(s), False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis
            )
    return img


def smoothed_resample(
    array: NDArray[Any],
    src_affine: FloatArray,
    affine: FloatArray,
    shape_zyx: tuple[int, int, int],
    sigma_px: FloatArray,
    default_value: float,
) -> NDArray[Any]:
    """Gaussian smoothing (``sigma_px`` in source voxels, per axis i, j, k) then linear
    sampling on the grid (``affine``, ``shape_zyx``), float32; outside takes
    ``default_value``."""
    img = _smooth(_index_image(array.astype(np.float32, copy=False)), sigma_px)
    return _resample_index(
        img, src_affine, affine, shape_zyx, default_value, "linear", sitk.sitkFloat32
    )


__all__ = ["MIN_SIGMA_PX", "Interpolator", "resample", "smoothed_resample"]
