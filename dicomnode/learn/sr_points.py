"""Landmark points in a DICOM SR (TID 1500 measurement report, or any SR content tree).

Accepted conventions:

- a point is a SCOORD3D POINT (patient coordinates in LPS mm, in the item's Referenced
  Frame of Reference) or a SCOORD POINT on an image (column\\row with sub-pixel
  resolution, the top-left pixel's centre at 0.5\\0.5, the image named by the SCOORD's
  IMAGE child item);
- a point is named by the enclosing measurement group's Tracking Identifier (DCM 112039)
  text, the group's Finding Site (SCT 363698007) or its Topographical modifier (SCT
  106233006): Right / Left sinus of Valsalva, Non-coronary sinus (the node's own SR), or
  the point's own concept name; a text names RCC, LCC, NCC, LCO or RCO when it holds
  exactly one of those words (any case) or says "right/left/non-coronary cusp" or
  "left/right coronary ostium". Names that disagree within one point, or a landmark given
  twice, are problems; points without a landmark name are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomnode.process.outputs import codes as c
from glipcore.geometry import FloatArray

TRACKING_IDENTIFIER = ("DCM", "112039")
FINDING_SITE = ("SCT", "363698007")
FINDING_SITE_SRT = ("SRT", "G-C0E3")
TOPOGRAPHICAL_MODIFIER = ("SCT", "106233006")
TOPOGRAPHICAL_MODIFIER_SRT = ("SRT", "G-A1F8")
PERSON_OBSERVER_NAME = ("DCM", "121008")

_CODED_NAMES: dict[tuple[str, str], str] = {
    **{(code.scheme_designator, code.value): name for name, code in c.SINUS.items()},
    **{(code.scheme_designator, code.value): name for name, code in c.HINGE.items()},
}
_PHRASES = (
    (re.compile(r"left\s+coronary\s+ostium", re.I), "LCO"),
    (re.compile(r"right\s+coronary\s+ostium", re.I), "RCO"),
    (re.compile(r"non[-\s]?coronary", re.I), "NCC"),
    (re.compile(r"right\s+(coronary\s+)?(cusp|sinus)", re.I), "RCC"),
    (re.compile(r"left\s+(coronary\s+)?(cusp|sinus)", re.I), "LCC"),
)
_TOKEN = re.compile(r"(?<![A-Za-z])(RCC|LCC|NCC|LCO|RCO)(?![A-Za-z])", re.I)


def name_of_text(text: str) -> str | None:
    """The landmark a text names (see the module docstring), or None."""
    tokens = {m.upper() for m in _TOKEN.findall(text)}
    if len(tokens) == 1:
        return str(tokens.pop())
    if tokens:
        return None
    for pattern, name in _PHRASES:
        if pattern.search(text):
            return name
    return None


def _code(item: Dataset, sequence: str) -> Dataset | None:
    seq = item.get(sequence)
    return seq[0] if seq else None


def _key(code: Dataset | None) -> tuple[str, str]:
    if code is None:
        return ("", "")
    return (str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")))


def name_of_code(code: Dataset | None) -> str | None:
    """The landmark a coded concept names, by code or by its meaning."""
    if code is None:
        return None
    return _CODED_NAMES.get(_key(code)) or name_of_text(str(code.get("CodeMeaning", "")))


@dataclass(frozen=True, eq=False)
class SrPoint:
    """One named point: ``lps`` with its frame of reference (SCOORD3D), or ``column_row``
    on image ``image_uid`` (SCOORD)."""

    name: str
    lps: FloatArray | None = None
    frame_of_reference_uid: str | None = None
    image_uid: str | None = None
    column_row: tuple[float, float] | None = None


@dataclass(frozen=True)
class SrPoints:
    """The named points of an SR and what is wrong with them (empty when fine)."""

    points: tuple[SrPoint, ...]
    problems: tuple[str, ...]
    annotator: str | None
    content_time: datetime | None


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def _group_names(container: Dataset) -> dict[str, str]:
    """Landmark names a container gives its points, by source."""
    out: dict[str, str] = {}
    for child in _children(container):
        concept = _key(_code(child, "ConceptNameCodeSequence"))
        if concept == TRACKING_IDENTIFIER and child.get("ValueType") == "TEXT":
            name = name_of_text(str(child.get("TextValue", "")))
            if name:
                out["tracking identifier"] = name
        elif concept in (FINDING_SITE, FINDING_SITE_SRT):
            site = name_of_code(_code(child, "ConceptCodeSequence"))
            for mod in _children(child):
                if _key(_code(mod, "ConceptNameCodeSequence")) in (
                    TOPOGRAPHICAL_MODIFIER,
                    TOPOGRAPHICAL_MODIFIER_SRT,
                ):
                    site = name_of_code(_code(mod, "ConceptCodeSequence")) or site
            if site:
                out["finding site"] = site
    return out


def _walk(item: Dataset, names: dict[str, str]) -> Iterator[tuple[Dataset, dict[str, str]]]:
    """Every SCOORD/SCOORD3D POINT item below ``item`` with its enclosing group's names."""
    for child in _children(item):
        vt = child.get("ValueType")
        if vt in ("SCOORD", "SCOORD3D") and child.get("GraphicType") == "POINT":
            yield child, names
        elif vt == "CONTAINER":
            yield from _walk(child, _group_names(child))
        elif "ContentSequence" in child:
            yield from _walk(child, names)


def _point(item: Dataset, name: str) -> SrPoint | str:
    data = [float(v) for v in item.get("GraphicData", [])]
    if item.ValueType == "SCOORD3D":
        if len(data) != 3:
            return f"{name}: SCOORD3D POINT with {len(data)} values"
        for_uid = item.get("ReferencedFrameOfReferenceUID")
        if not for_uid:
            return f"{name}: SCOORD3D POINT without a frame of reference"
        return SrPoint(name, lps=np.array(data), frame_of_reference_uid=str(for_uid))
    if len(data) != 2:
        return f"{name}: SCOORD POINT with {len(data)} values"
    refs = [
        ref
        for child in _children(item)
        if child.get("ValueType") == "IMAGE"
        for ref in child.get("ReferencedSOPSequence", [])
    ]
    if len(refs) != 1:
        return f"{name}: SCOORD POINT must reference exactly one image, it references {len(refs)}"
    return SrPoint(
        name, image_uid=str(refs[0].ReferencedSOPInstanceUID), column_row=(data[0], data[1])
    )


def _annotator(ds: Dataset) -> str | None:
    for child in _children(ds):
        if _key(_code(child, "ConceptNameCodeSequence")) == PERSON_OBSERVER_NAME:
            return str(child.get("PersonName", "")) or None
    return None


def _content_time(ds: Dataset) -> datetime | None:
    date, time = str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))
    try:
        return datetime.strptime(date + time[:6].ljust(6, "0"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def sr_points(ds: Dataset) -> SrPoints:
    """The named landmark points of an SR dataset."""
    points: dict[str, SrPoint] = {}
    problems: list[str] = []
    for item, group in _walk(ds, _group_names(ds)):
        found = dict(group)
        own = name_of_code(_code(item, "ConceptNameCodeSequence"))
        if own:
            found["concept name"] = own
        if not found:
            continue
        if len(set(found.values())) > 1:
            problems.append(
                "point names disagree: " + ", ".join(f"{k} {v}" for k, v in found.items())
            )
            continue
        name = next(iter(found.values()))
        point = _point(item, name)
        if isinstance(point, str):
            problems.append(point)
        elif name in points:
            problems.append(f"{name} given twice")
        else:
            points[name] = point
    return SrPoints(tuple(points.values()), tuple(problems), _annotator(ds), _content_time(ds))


def image_point_to_lps(image: Dataset, column: float, row: float) -> FloatArray:
    """A SCOORD (column, row) on a single-frame image -> LPS mm through its Image Position,
    Image Orientation and Pixel Spacing (the top-left pixel's centre is 0.5, 0.5)."""
    position = np.array([float(v) for v in image.ImagePositionPatient])
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    along_row, along_column = orientation[:3], orientation[3:]
    return np.asarray(
        position
        + along_row * (column - 0.5) * column_spacing
        + along_column * (row - 0.5) * row_spacing,
        dtype=np.float64,
    )


def is_sr(ds: Dataset) -> bool:
    """Whether a dataset is a structured report (has an SR content tree)."""
    return ds.get("Modality") == "SR" or "ContentSequence" in ds


def read_sr(path: str) -> Dataset:
    """An SR file (header and content; SRs carry no pixel data)."""
    return pydicom.dcmread(path)


__all__ = [
    "SrPoint",
    "SrPoints",
    "image_point_to_lps",
    "is_sr",
    "name_of_code",
    "name_of_text",
    "read_sr",
    "sr_points",
]
