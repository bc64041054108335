"""DICOM loaders: a series of single-frame slices, or one Enhanced (multi-frame) file ->
Volume in LPS mm, float32 modality values (HU for CT). The stack checks are
:mod:`glipcore.slice_stack`'s."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID

from glipcore.geometry import FloatArray
from glipcore.slice_stack import Plane, Stack, stack_geometry
from glipcore.volume import Volume, VolumeError, VolumeErrorReason

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


def _numbers(ds: Dataset, keyword: str, n: int, label: str) -> FloatArray:
    return _floats(_require(ds, keyword, label), n, keyword, label)


def _plane(
    label: str, header: Dataset, position: Dataset, orientation: Dataset, measures: Dataset
) -> Plane:
    """A plane from the datasets holding its position, orientation and pixel spacing
    (a slice's own header, or an Enhanced frame's functional groups)."""
    ps = _numbers(measures, "PixelSpacing", 2, label)
    return Plane(
        label=label,
        position=_numbers(position, "ImagePositionPatient", 3, label),
        orientation=_numbers(orientation, "ImageOrientationPatient", 6, label),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(_require(header, "Rows", label)),
        cols=int(_require(header, "Columns", label)),
    )


def _plane_of(ds: Dataset, label: str) -> Plane:
    return _plane(label, ds, ds, ds, ds)


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
    stack = stack_geometry(planes, _phase_info(datasets))
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


def _series_meta(ds: Dataset, stack: Stack) -> dict[str, Any]:
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


def _frame_plane(ds: Dataset, frame: Dataset, label: str) -> Plane:
    def need(keyword: str) -> Dataset:
        item = _group(ds, frame, keyword)
        if item is None:
            raise VolumeError(
                VolumeErrorReason.INVALID_GEOMETRY,
                f"{label} has no {keyword} (shared or per-frame); cannot place it in space",
            )
        return item

    return _plane(
        label,
        ds,
        need("PlanePositionSequence"),
        need("PlaneOrientationSequence"),
        need("PixelMeasuresSequence"),
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
    stack = stack_geometry(planes)
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


def load_dicom_file(path: Path) -> Volume:
    """One DICOM file: an Enhanced (multi-frame) volume; a single slice is refused."""
    path = Path(path)
    ds = _read_dicom(path)
    if _is_multiframe(ds):
        return _enhanced_volume(ds, str(path))
    raise VolumeError(
        VolumeErrorReason.TOO_FEW_SLICES,
        f"{path} is a single-frame DICOM slice, not a volume; pass the folder (or the list "
        "of files) of the whole series",
    )


__all__ = [
    "load_dicom_file",
    "load_dicom_series",
    "load_enhanced_ct",
    "volume_from_datasets",
]
