"""Volume: a voxel array with its geometry in patient LPS mm.

Loaders (DICOM series, Enhanced CT, NIfTI) and resampling to the model grid live here.

Geometry checks of the DICOM loaders (all stacks are refused rather than guessed):
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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID

from glipcore.geometry import FloatArray, ijk_to_lps, lps_to_ijk, make_affine, spacing_of

# SimpleITK's SWIG wrappers carry no annotations: use it as a dynamic module.
sitk: Any = SimpleITK
SitkImage = Any


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


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- stack geometry

ORIENTATION_TOL = 1e-3
DUPLICATE_TOL_MM = 0.01


@dataclass(frozen=True)
class _Plane:
    """Geometry of one slice or frame, as read from its header."""

    label: str
    position: FloatArray
    orientation: FloatArray
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    rows: int
    cols: int


@dataclass(frozen=True)
class _Stack:
    order: NDArray[np.intp]
    affine: FloatArray
    slice_spacing: float


def _check_frames_alike(planes: Sequence[_Plane]) -> None:
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


def _unit_axes(planes: Sequence[_Plane]) -> tuple[FloatArray, FloatArray, FloatArray]:
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


def _stack_geometry(planes: Sequence[_Plane], phase_info: str = "") -> _Stack:
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
    return _Stack(order=order, affine=affine, slice_spacing=spacing)


# --------------------------------------------------------------------------- DICOM series


def _floats(value: Any, n: int, what: str, label: str) -> FloatArray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(
            VolumeErrorReason.INVALID_GEOMETRY, f"{label}: {what} is not numeric ({value!r})"
        ) from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise VolumeError(
            VolumeErrorReason.INVALID_GEOMETRY, f"{label}: {what} needs {n} finite numbers"
        )
    return out


def _require(ds: Dataset, keyword: str, label: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise VolumeError(
            VolumeErrorReason.INVALID_GEOMETRY,
            f"{label} has no {keyword}: it cannot be placed in patient space "
            "(a localizer, secondary capture or incomplete header?)",
        )
    return value


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _plane_of(ds: Dataset, label: str) -> _Plane:
    ps = _floats(_require(ds, "PixelSpacing", label), 2, "PixelSpacing", label)
    return _Plane(
        label=label,
        position=_floats(
            _require(ds, "ImagePositionPatient", label), 3, "ImagePositionPatient", label
        ),
        orientation=_floats(
            _require(ds, "ImageOrientationPatient", label), 6, "ImageOrientationPatient", label
        ),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(_require(ds, "Rows", label)),
        cols=int(_require(ds, "Columns", label)),
    )


def _decode(ds: Dataset, label: str) -> NDArray[Any]:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types for missing or failing plugins
        name = _transfer_syntax(ds) or "unknown transfer syntax"
        name = getattr(UID(name), "name", name)
        raise VolumeError(
            VolumeErrorReason.DECODE_FAILED,
            f"{label}: cannot decode pixel data ({name}): {exc}; check the file or install a "
            "pydicom pixel-data plugin for this transfer syntax",
        ) from exc


def _rescale_into(out: NDArray[np.float32], raw: NDArray[Any], ds: Dataset) -> None:
    """Write raw stored values into ``out`` as modality values (HU for CT)."""
    if "ModalityLUTSequence" in ds:
        out[...] = apply_modality_lut(raw, ds)
        return
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out[...] = raw
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def _phase_info(datasets: Sequence[Dataset]) -> str:
    parts = []
    for kw in (
        "AcquisitionNumber",
        "TemporalPositionIdentifier",
        "TriggerTime",
        "NominalPercentageOfCardiacPhase",
    ):
        values = {str(ds.get(kw)) for ds in datasets if ds.get(kw) not in (None, "")}
        if len(values) > 1:
            parts.append(f"{len(values)} distinct {kw}")
    return f" ({', '.join(parts)})" if parts else ""


def _check_one_series(datasets: Sequence[Dataset]) -> None:
    uids = Counter(str(ds.get("SeriesInstanceUID", "<none>")) for ds in datasets)
    if len(uids) > 1:
        listed = "; ".join(f"{u} ({n} files)" for u, n in uids.most_common())
        raise VolumeError(
            VolumeErrorReason.MIXED_SERIES,
            f"the files belong to {len(uids)} series: {listed}; load one series at a time",
        )


def volume_from_datasets(
    datasets: Sequence[Dataset], labels: Sequence[str] | None = None
) -> Volume:
    """Single-frame slices of one series (already read, pixels included) -> Volume (float32
    modality values, HU for CT). ``labels`` name the slices in messages (e.g. file paths)."""
    if labels is None:
        labels = [f"instance {ds.get('InstanceNumber', i)}" for i, ds in enumerate(datasets)]
    if not datasets:
        raise VolumeError(VolumeErrorReason.TOO_FEW_SLICES, "no DICOM slices given")
    _check_one_series(datasets)
    for ds, label in zip(datasets, labels, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(
                VolumeErrorReason.UNSUPPORTED_FILE,
                f"{label} is a multi-frame image inside a multi-file series; load it alone "
                "(load_enhanced_ct) or remove it",
            )
        if not _has_pixels(ds):
            raise VolumeError(
                VolumeErrorReason.MISSING_PIXEL_DATA,
                f"{label} has no pixel data (header-only file?); re-send the complete instance",
            )
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeError(
                VolumeErrorReason.UNSUPPORTED_FILE,
                f"{label} has {ds.SamplesPerPixel} samples per pixel; only grey-scale images "
                "make a volume",
            )
    planes = [_plane_of(ds, label) for ds, label in zip(datasets, labels, strict=True)]
    stack = _stack_geometry(planes, _phase_info(datasets))
    first = planes[0]
    array = np.empty((len(datasets), first.rows, first.cols), dtype=np.float32)
    for k, idx in enumerate(stack.order):
        ds = datasets[int(idx)]
        raw = _decode(ds, labels[int(idx)])
        if raw.shape != (first.rows, first.cols):
            raise VolumeError(
                VolumeErrorReason.INCONSISTENT_FRAMES,
                f"{labels[int(idx)]}: decoded pixels {raw.shape} disagree with Rows x Columns",
            )
        _rescale_into(array[k], raw, ds)
    ordered = [datasets[int(i)] for i in stack.order]
    meta = _series_meta(ordered[0], stack)
    meta["sop_instance_uids"] = [str(ds.get("SOPInstanceUID", "")) for ds in ordered]
    meta["source_files"] = [labels[int(i)] for i in stack.order]
    meta["loader"] = "dicom-series"
    return Volume(array=array, affine=stack.affine, meta=meta)


def _transfer_syntax(ds: Dataset) -> str:
    file_meta = getattr(ds, "file_meta", None)
    return str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""


def _series_meta(ds: Dataset, stack: _Stack) -> dict[str, Any]:
    """Non-identifying facts about the source (no patient names, IDs or dates)."""
    ts = _transfer_syntax(ds)
    return {
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "transfer_syntax_uid": str(ts or ""),
        "slice_spacing_mm": stack.slice_spacing,
    }


def _read_dicom(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError) as exc:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE, f"{path} is not a readable DICOM file: {exc}"
        ) from exc


def _dicom_files_in(folder: Path) -> tuple[list[Path], list[Dataset]]:
    """Readable DICOM image files directly inside ``folder`` (DICOMDIR and others skipped)."""
    paths: list[Path] = []
    datasets: list[Dataset] = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(p)
        except (InvalidDicomError, EOFError):
            continue
        paths.append(p)
        datasets.append(ds)
    if not paths:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE,
            f"no DICOM files directly inside {folder} (subfolders are not searched)",
        )
    return paths, datasets


def load_dicom_series(files: Sequence[Path] | Path) -> Volume:
    """A DICOM series (a folder, or a list of files) -> Volume in LPS mm, float32 HU.

    A folder holding a single Enhanced (multi-frame) file is loaded with
    :func:`load_enhanced_ct`. Raises :class:`VolumeError` when the files do not form one
    uniform, untilted stack (see the module docstring).
    """
    if isinstance(files, Path | str):
        folder = Path(files)
        if not folder.is_dir():
            raise VolumeError(VolumeErrorReason.UNSUPPORTED_FILE, f"{folder} is not a folder")
        paths, datasets = _dicom_files_in(folder)
    else:
        paths = [Path(f) for f in files]
        datasets = [_read_dicom(p) for p in paths]
    if len(datasets) == 1 and _is_multiframe(datasets[0]):
        return _enhanced_volume(datasets[0], str(paths[0]))
    return volume_from_datasets(datasets, [str(p) for p in paths])


# --------------------------------------------------------------------------- Enhanced CT


def _is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def _group(ds: Dataset, frame: Dataset | None, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` for a frame (per-frame wins over shared)."""
    if frame is not None and keyword in frame and len(frame[keyword].value):
        item: Dataset = frame[keyword].value[0]
        return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        item = shared[0][keyword].value[0]
        return item
    return None


def _frame_plane(ds: Dataset, frame: Dataset, label: str) -> _Plane:
    def need(keyword: str) -> Dataset:
        item = _group(ds, frame, keyword)
        if item is None:
            raise VolumeError(
                VolumeErrorReason.INVALID_GEOMETRY,
                f"{label} has no {keyword} (shared or per-frame); cannot place it in space",
            )
        return item

    position = need("PlanePositionSequence")
    orientation = need("PlaneOrientationSequence")
    measures = need("PixelMeasuresSequence")
    ps = _floats(_require(measures, "PixelSpacing", label), 2, "PixelSpacing", label)
    return _Plane(
        label=label,
        position=_floats(
            _require(position, "ImagePositionPatient", label), 3, "ImagePositionPatient", label
        ),
        orientation=_floats(
            _require(orientation, "ImageOrientationPatient", label),
            6,
            "ImageOrientationPatient",
            label,
        ),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(_require(ds, "Rows", label)),
        cols=int(_require(ds, "Columns", label)),
    )


def _enhanced_volume(ds: Dataset, source: str) -> Volume:
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE,
            f"{source} is multi-frame without functional groups (not an Enhanced image); "
            "its frames cannot be placed in space",
        )
    if not _has_pixels(ds):
        raise VolumeError(VolumeErrorReason.MISSING_PIXEL_DATA, f"{source} has no pixel data")
    frames = list(ds.PerFrameFunctionalGroupsSequence)
    n = int(ds.get("NumberOfFrames", len(frames)) or len(frames))
    if len(frames) != n:
        raise VolumeError(
            VolumeErrorReason.INCONSISTENT_FRAMES,
            f"{source}: NumberOfFrames {n} but {len(frames)} per-frame functional groups",
        )
    labels = [f"{source} frame {f + 1}" for f in range(n)]
    planes = [_frame_plane(ds, fr, lb) for fr, lb in zip(frames, labels, strict=True)]
    stack = _stack_geometry(planes)
    raw = _decode(ds, source).reshape(n, planes[0].rows, planes[0].cols)
    array = np.empty(raw.shape, dtype=np.float32)
    for k, idx in enumerate(stack.order):
        transform = _group(ds, frames[int(idx)], "PixelValueTransformationSequence")
        _rescale_into(array[k], raw[int(idx)], transform if transform is not None else Dataset())
    meta = _series_meta(ds, stack)
    meta["sop_instance_uids"] = [str(ds.get("SOPInstanceUID", ""))]
    meta["frame_numbers"] = [int(i) + 1 for i in stack.order]
    meta["source_files"] = [source]
    meta["loader"] = "enhanced-ct"
    return Volume(array=array, affine=stack.affine, meta=meta)


def load_enhanced_ct(path: Path) -> Volume:
    """One Enhanced CT (or other functional-group multi-frame) file -> Volume, float32 HU.

    Positions, orientation, pixel spacing and rescale come from the per-frame or shared
    functional groups; frames are sorted along the normal with the series checks."""
    path = Path(path)
    return _enhanced_volume(_read_dicom(path), str(path))


# --------------------------------------------------------------------------- NIfTI / SimpleITK


def _orthonormal_direction(affine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(direction, spacing) of an affine without shear; ValueError otherwise."""
    spacing = spacing_of(affine)
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError(
            "the affine is sheared (its axes are not orthogonal): SimpleITK and NIfTI store "
            "orthogonal grids only; resample it first"
        )
    return direction, spacing


def _to_sitk(vol: Volume) -> SitkImage:
    direction, spacing = _orthonormal_direction(vol.affine)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in vol.affine[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def _affine_of_sitk(img: SitkImage) -> FloatArray:
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return make_affine(img.GetOrigin(), img.GetSpacing(), direction)


def load_nifti(path: Path) -> Volume:
    """A 3-D NIfTI file -> Volume (float32). SimpleITK converts NIfTI's RAS to LPS."""
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE, f"{path} is not a readable NIfTI file: {exc}"
        ) from exc
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE,
            f"{path}: need a 3-D scalar image, got {img.GetDimension()}-D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s)",
        )
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    return Volume(
        array=array,
        affine=_affine_of_sitk(img),
        meta={"loader": "nifti", "source_files": [str(path)]},
    )


def save_nifti(vol: Volume, path: Path) -> Path:
    """Write a Volume as NIfTI (.nii or .nii.gz); SimpleITK writes LPS as RAS."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    sitk.WriteImage(_to_sitk(vol), str(path), useCompression=path.name.endswith(".gz"))
    return path


def load_volume(path: Path) -> Volume:
    """Dispatch: folder -> DICOM series (or its single Enhanced file); .nii/.nii.gz -> NIfTI;
    a single DICOM file -> Enhanced CT (a single slice is refused)."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.is_file():
        raise VolumeError(VolumeErrorReason.UNSUPPORTED_FILE, f"{path} does not exist")
    if path.name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    ds = _read_dicom(path)
    if _is_multiframe(ds):
        return _enhanced_volume(ds, str(path))
    raise VolumeError(
        VolumeErrorReason.TOO_FEW_SLICES,
        f"{path} is a single-frame DICOM slice, not a volume; pass the folder (or the list "
        "of files) of the whole series",
    )


# --------------------------------------------------------------------------- resampling

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
        img = _smooth(_index_image(vol.array.astype(np.float32, copy=False)), sigma_px)
        hu = _resample_index(
            img, vol.affine, affine, shape, prep.hu_min, "linear", sitk.sitkFloat32
        )
    meta = dict(vol.meta)
    meta["preprocessing"] = prep.model_dump()
    meta["source_shape_zyx"] = list(vol.shape_zyx)
    meta["source_affine"] = vol.affine.tolist()
    return Volume(array=prep.scale(hu), affine=affine, meta=meta)


__all__ = [
    "Preprocessing",
    "Volume",
    "VolumeError",
    "VolumeErrorReason",
    "antialias_sigmas",
    "load_dicom_series",
    "load_enhanced_ct",
    "load_nifti",
    "load_volume",
    "model_grid",
    "resample",
    "save_nifti",
    "to_model_grid",
    "volume_from_datasets",
]
