"""The image planes of a CT source: each single-frame instance, or each frame of a
multi-frame one (Enhanced CT, Legacy Converted Enhanced CT).

Multi-frame objects keep position, orientation, pixel spacing and slice thickness in
their functional groups (per-frame items win over the shared ones); :func:`source_frames`
reads them from there, so the result builders see every plane alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

_GEOMETRY = (
    # (functional group of a multi-frame object, the attribute in its item and at the
    # top level of a single-frame one); SliceThickness sits beside PixelSpacing
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)
_IMAGE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "Rows",
    "Columns",
)


class FrameGeometryError(ValueError):
    """A source image plane cannot be placed in space; the message says which and why."""


def is_multiframe(ds: pydicom.Dataset) -> bool:
    """Whether ``ds`` holds its geometry in functional groups (or has several frames)."""
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """One image plane of the source: ``header`` is its instance; ``frame_number`` is
    1-based for a frame of a multi-frame instance and None for a single-frame instance."""

    header: pydicom.Dataset
    frame_number: int | None
    position: NDArray[np.float64]
    orientation: NDArray[np.float64]
    pixel_spacing: NDArray[np.float64]
    slice_thickness: float | None

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID of the instance holding this plane."""
        return str(self.header.SOPInstanceUID)

    @property
    def normal(self) -> NDArray[np.float64]:
        """Row x column direction of the plane."""
        return np.cross(self.orientation[:3], self.orientation[3:])

    def reference(self) -> pydicom.Dataset:
        """An Image SOP Instance Reference item (class, instance, frame when multi-frame)."""
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = self.header.SOPClassUID
        item.ReferencedSOPInstanceUID = self.header.SOPInstanceUID
        if self.frame_number is not None:
            item.ReferencedFrameNumber = self.frame_number
        return item

    def as_image(self) -> pydicom.Dataset:
        """A single-frame view of this plane's header (identity, size and top-level
        geometry), for code that reads an image's geometry from the top level."""
        ds = pydicom.Dataset()
        for keyword in _IMAGE_KEYWORDS:
            if keyword in self.header:
                ds[keyword] = self.header[keyword]
        ds.ImagePositionPatient = [float(x) for x in self.position]
        ds.ImageOrientationPatient = [float(x) for x in self.orientation]
        ds.PixelSpacing = [float(x) for x in self.pixel_spacing]
        ds.SliceThickness = self.slice_thickness
        return ds


def _group_item(ds: pydicom.Dataset, frame: pydicom.Dataset, keyword: str) -> Any:
    for holder in (frame, *ds.get("SharedFunctionalGroupsSequence", [])):
        if keyword in holder and len(holder[keyword].value):
            return holder[keyword].value[0]
    return None


def _floats(label: str, keyword: str, value: Any, n: int) -> NDArray[np.float64]:
    try:
        v = np.asarray([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FrameGeometryError(f"{label}: {keyword} is not numeric ({value!r})") from exc
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise FrameGeometryError(f"{label}: {keyword} must be {n} finite numbers, got {value!r}")
    return v


def _thickness(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _plane(
    header: pydicom.Dataset,
    frame_number: int | None,
    label: str,
    holders: dict[str, pydicom.Dataset | None],
) -> SourceFrame:
    """A plane whose geometry attributes are read from ``holders`` (one per attribute)."""
    values = {}
    for keyword, holder in holders.items():
        if holder is None or keyword not in holder:
            raise FrameGeometryError(f"{label} lacks {keyword}")
        values[keyword] = holder[keyword].value
    thickness = holders["PixelSpacing"]
    return SourceFrame(
        header=header,
        frame_number=frame_number,
        position=_floats(label, "ImagePositionPatient", values["ImagePositionPatient"], 3),
        orientation=_floats(label, "ImageOrientationPatient", values["ImageOrientationPatient"], 6),
        pixel_spacing=_floats(label, "PixelSpacing", values["PixelSpacing"], 2),
        slice_thickness=_thickness(None if thickness is None else thickness.get("SliceThickness")),
    )


def _frames_of(ds: pydicom.Dataset, label: str) -> list[SourceFrame]:
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    n = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    if not per_frame or len(per_frame) != n:
        raise FrameGeometryError(
            f"{label}: {n} frames but {len(per_frame)} per-frame functional groups; "
            "its frames cannot be placed in space"
        )
    return [
        _plane(
            ds,
            number,
            f"{label} frame {number}",
            {keyword: _group_item(ds, frame, group) for group, keyword in _GEOMETRY},
        )
        for number, frame in enumerate(per_frame, start=1)
    ]


def source_frames(headers: Sequence[pydicom.Dataset]) -> list[SourceFrame]:
    """Every image plane of ``headers`` in order: single-frame instances as they come,
    the frames of a multi-frame instance by frame number. Raises
    :class:`FrameGeometryError` when a plane lacks position, orientation or spacing."""
    out: list[SourceFrame] = []
    for n, ds in enumerate(headers):
        label = f"source instance {n}"
        if is_multiframe(ds):
            out.extend(_frames_of(ds, label))
        else:
            out.append(_plane(ds, None, label, {keyword: ds for _group, keyword in _GEOMETRY}))
    return _with_thickness(out)


def _with_thickness(planes: list[SourceFrame]) -> list[SourceFrame]:
    """SliceThickness is Type 2 (may be empty): where it is, the Image Library still needs a
    thickness, so use the median distance between neighbouring planes along the normal."""
    if all(p.slice_thickness is not None for p in planes) or len(planes) < 2:
        return planes
    along = np.sort([float(p.position @ p.normal) for p in planes])
    gaps = np.diff(along)
    gaps = gaps[gaps > 1e-6]
    if gaps.size == 0:
        return planes
    spacing = round(float(np.median(gaps)), 6)
    return [
        p if p.slice_thickness is not None else replace(p, slice_thickness=spacing) for p in planes
    ]


def position_along_normal(ds: pydicom.Dataset) -> float:
    """Where an instance's first plane lies along its normal (mm), for sorting."""
    (first, *_rest) = source_frames([ds])
    return float(first.position @ first.normal)


__all__ = [
    "FrameGeometryError",
    "SourceFrame",
    "is_multiframe",
    "position_along_normal",
    "source_frames",
]
