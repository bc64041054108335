"""A stack of slices (or frames) -> its affine: the geometry checks of the DICOM loaders.

All doubtful stacks are refused rather than guessed:
- slices are ordered by ImagePositionPatient projected on the slice normal (the cross
  product of the ImageOrientationPatient rows); the slice spacing comes from those
  positions, never from SliceThickness;
- every slice must lie within 1 % of the spacing (at least 2 micrometres) of a uniform
  grid; a missing slice or varying spacing is refused (``non_uniform_spacing``);
- slice positions must move along the normal to within 2 % of a pixel: a gantry tilt or a
  sheared stack is refused with its angle (``gantry_tilt``);
- positions closer than 0.01 mm are duplicates, e.g. several cardiac phases in one series
  (``duplicate_positions``); the node splits phases before loading;
- orientations must agree to 1e-3 (``mixed_orientations``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from glipcore.geometry import FloatArray, make_affine
from glipcore.volume import VolumeError, VolumeErrorReason

ORIENTATION_TOL = 1e-3
DUPLICATE_TOL_MM = 0.01


@dataclass(frozen=True)
class Plane:
    """Geometry of one slice or frame, as read from its header."""

    label: str
    position: FloatArray
    orientation: FloatArray
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    rows: int
    cols: int


@dataclass(frozen=True)
class Stack:
    order: NDArray[np.intp]
    affine: FloatArray
    slice_spacing: float


def _check_frames_alike(planes: Sequence[Plane]) -> None:
    sizes = Counter((p.rows, p.cols) for p in planes)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({n} slices)" for (r, c), n in sizes.items())
        raise VolumeError(
            VolumeErrorReason.INCONSISTENT_FRAMES,
            f"slices differ in rows x columns: {listed}; a volume needs one matrix size "
            "(mixed series or a localizer among the files?)",
        )
    ps = np.array([p.pixel_spacing for p in planes])
    if np.any(ps <= 0):
        raise VolumeError(
            VolumeErrorReason.INVALID_GEOMETRY, "PixelSpacing must be positive in every slice"
        )
    if np.max(np.abs(ps - ps[0])) > 1e-4 * float(np.max(ps[0])):
        raise VolumeError(
            VolumeErrorReason.INCONSISTENT_FRAMES,
            f"PixelSpacing varies between slices: {np.unique(ps.round(6), axis=0).tolist()} mm; "
            "a volume needs one pixel spacing",
        )


def _unit_axes(planes: Sequence[Plane]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Row, column and normal unit vectors, after checking all orientations agree."""
    iops = np.array([p.orientation for p in planes])
    dev = np.max(np.abs(iops - iops[0]), axis=1)
    if np.any(dev > ORIENTATION_TOL):
        distinct = np.unique(iops.round(3), axis=0)
        odd = [p.label for p, d in zip(planes, dev, strict=True) if d > ORIENTATION_TOL]
        raise VolumeError(
            VolumeErrorReason.MIXED_ORIENTATIONS,
            f"{len(distinct)} different ImageOrientationPatient values "
            f"({distinct.tolist()}); {len(odd)} slices differ from the first, e.g. {odd[:3]}; "
            "a volume needs one orientation (reformats or localizers mixed in?): "
            "load the files of one orientation",
        )
    r, c = iops[0, :3], iops[0, 3:]
    nr, nc, dot = float(np.linalg.norm(r)), float(np.linalg.norm(c)), float(np.dot(r, c))
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL or abs(dot) > 1e-3:
        raise VolumeError(
            VolumeErrorReason.INVALID_GEOMETRY,
            f"ImageOrientationPatient {iops[0].tolist()} is not two orthogonal unit vectors",
        )
    r = r / nr
    c = c - np.dot(c, r) * r
    c = c / np.linalg.norm(c)
    return r, c, np.cross(r, c)


def _check_duplicates(s: FloatArray, phase_info: str) -> None:
    gaps = np.diff(s)
    dup = int(np.sum(gaps < DUPLICATE_TOL_MM))
    if dup:
        n_pos = len(s) - dup
        raise VolumeError(
            VolumeErrorReason.DUPLICATE_POSITIONS,
            f"{dup} of {len(s)} slices repeat a position already taken ({n_pos} distinct "
            f"positions): the series holds several phases or acquisitions{phase_info}; "
            "the node splits phases before loading: pass the files of one phase only",
        )


def _check_tilt(pos: FloatArray, s: FloatArray, normal: FloatArray, tol_mm: float) -> None:
    rel = pos - pos[0]
    inplane = rel - np.outer(rel @ normal, normal)
    worst = float(np.max(np.linalg.norm(inplane, axis=1)))
    if worst <= tol_mm:
        return
    along = s - s[0]
    drift = np.linalg.lstsq(along[:, None], inplane, rcond=None)[0][0]  # in-plane mm per mm
    angle = math.degrees(math.atan(float(np.linalg.norm(drift))))
    raise VolumeError(
        VolumeErrorReason.GANTRY_TILT,
        f"slice positions do not move along the slice normal: gantry tilt or sheared stack "
        f"of {angle:.2f} deg (slices drift up to {worst:.3f} mm sideways); the loader "
        "refuses sheared geometry: reconstruct or resample the series without tilt",
    )


def _check_uniform(s: FloatArray, spacing: float) -> None:
    n = len(s)
    residual = s - (s[0] + spacing * np.arange(n))
    tol = max(0.01 * spacing, 2e-3)
    if float(np.max(np.abs(residual))) <= tol:
        return
    gaps = np.diff(s)
    typical = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * typical)
    detail = ""
    if big.size:
        where = ", ".join(
            f"{s[g]:.3f}..{s[g + 1]:.3f} mm (about {round(gaps[g] / typical) - 1} missing)"
            for g in big[:5]
        )
        detail = f"missing slice(s) at position(s) along the normal {where}; "
    raise VolumeError(
        VolumeErrorReason.NON_UNIFORM_SPACING,
        f"{detail}slice spacing varies between {gaps.min():.3f} and {gaps.max():.3f} mm "
        f"(median {typical:.3f} mm); the loader refuses non-uniform stacks: re-send the "
        "complete series or resample it to uniform spacing",
    )


def stack_geometry(planes: Sequence[Plane], phase_info: str = "") -> Stack:
    """Sort planes along their normal, run every check and build the exact affine."""
    if len(planes) < 2:
        raise VolumeError(
            VolumeErrorReason.TOO_FEW_SLICES,
            f"{len(planes)} slice(s): a volume needs at least two; pass the whole series",
        )
    _check_frames_alike(planes)
    r, c, normal = _unit_axes(planes)
    pos = np.array([p.position for p in planes], dtype=np.float64)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    s = pos @ normal
    _check_duplicates(s, phase_info)
    row_sp, col_sp = planes[0].pixel_spacing
    _check_tilt(pos, s, normal, tol_mm=max(1e-3, 0.02 * min(row_sp, col_sp)))
    spacing = float(s[-1] - s[0]) / (len(s) - 1)
    _check_uniform(s, spacing)
    direction = np.column_stack([r, c, normal])
    affine = make_affine(pos[0], (col_sp, row_sp, spacing), direction)
    return Stack(order=order, affine=affine, slice_spacing=spacing)
