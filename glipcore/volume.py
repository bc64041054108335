"""Volume: a voxel array with its geometry in patient LPS mm, and :class:`VolumeError`,
the refusal of input that cannot become a trustworthy Volume.

Loaders live in :mod:`glipcore.dicom_loader` (DICOM series, Enhanced CT) and
:mod:`glipcore.volume_io` (NIfTI, any path); resampling in :mod:`glipcore.resample` and
:mod:`glipcore.preprocess` (the model grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glipcore.geometry import FloatArray, ijk_to_lps, lps_to_ijk, spacing_of


@dataclass(frozen=True)
class Volume:
    """A 3-D image: ``array`` in (Z, Y, X) order and a 4x4 ``affine`` mapping (i, j, k, 1)
    voxel indices (i = column, j = row, k = slice) to LPS mm.

    ``meta`` carries loader facts (e.g. source UIDs) and never influences geometry.
    """

    array: NDArray[Any]
    affine: FloatArray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ValueError("affine must be a finite 4x4 matrix")
        if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError("affine's last row must be (0, 0, 0, 1)")
        if abs(float(np.linalg.det(a[:3, :3]))) < 1e-9:
            raise ValueError("affine is singular")
        if np.ndim(self.array) != 3:
            raise ValueError(f"volume array must be 3-D (Z, Y, X), got {np.ndim(self.array)}-D")
        object.__setattr__(self, "affine", a)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def spacing(self) -> FloatArray:
        """Spacing (i, j, k) in mm."""
        return spacing_of(self.affine)

    def to_lps(self, ijk: NDArray[Any]) -> FloatArray:
        """Continuous voxel indices (..., 3) -> LPS mm."""
        return ijk_to_lps(self.affine, ijk)

    def to_ijk(self, lps: NDArray[Any]) -> FloatArray:
        """LPS mm (..., 3) -> continuous voxel indices (i, j, k)."""
        return lps_to_ijk(self.affine, lps)


class VolumeErrorReason(StrEnum):
    """Why a volume could not be loaded."""

    NON_UNIFORM_SPACING = "non_uniform_spacing"
    GANTRY_TILT = "gantry_tilt"
    DUPLICATE_POSITIONS = "duplicate_positions"
    MIXED_ORIENTATIONS = "mixed_orientations"
    MISSING_PIXEL_DATA = "missing_pixel_data"
    INCONSISTENT_FRAMES = "inconsistent_frames"
    INVALID_GEOMETRY = "invalid_geometry"
    MIXED_SERIES = "mixed_series"
    TOO_FEW_SLICES = "too_few_slices"
    DECODE_FAILED = "decode_failed"
    UNSUPPORTED_FILE = "unsupported_file"


class VolumeError(ValueError):
    """Input that cannot become a trustworthy Volume; ``reason`` says which check failed."""

    def __init__(self, reason: VolumeErrorReason, message: str) -> None:
        super().__init__(f"[{reason.value}] {message}")
        self.reason = reason


__all__ = ["Volume", "VolumeError", "VolumeErrorReason"]
