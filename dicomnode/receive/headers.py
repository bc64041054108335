"""Header facts of one instance, read without decoding pixels: the UIDs and the few
attributes the database needs, from a raw encoded data set or from a file on disk."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from dicomnode.operate.logs import register_phi
from dicomnode.receive.spool import SpoolLimits, inflate_capped

_TOP_TAGS: list[BaseTag | int] = [
    Tag(t)
    for t in (
        0x00080005,  # SpecificCharacterSet
        0x00080008,  # ImageType
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080020,  # StudyDate
        0x00080050,  # AccessionNumber
        0x00080060,  # Modality
        0x00080070,  # Manufacturer
        0x00081030,  # StudyDescription
        0x0008103E,  # SeriesDescription
        0x00100010,  # PatientName (only to register it with the log scrubber)
        0x00100020,  # PatientID
        0x00100021,  # IssuerOfPatientID
        0x00100030,  # PatientBirthDate (only for the log scrubber)
        0x00180050,  # SliceThickness
        0x00181060,  # TriggerTime
        0x00181062,  # NominalInterval
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00200011,  # SeriesNumber
        0x00200012,  # AcquisitionNumber
        0x00200013,  # InstanceNumber
        0x00200032,  # ImagePositionPatient
        0x00200037,  # ImageOrientationPatient
        0x00200052,  # FrameOfReferenceUID
        0x00200100,  # TemporalPositionIdentifier
        0x00209128,  # TemporalPositionIndex
        0x00209241,  # NominalPercentageOfCardiacPhase
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x52009229,  # SharedFunctionalGroupsSequence
        0x52009230,  # PerFrameFunctionalGroupsSequence
    )
]


_DEFER_BYTES = 1 << 20  # larger values are skipped, not read: the header needs none of them


class HeaderError(ValueError):
    """The data set's header cannot be read or lacks a required UID."""


@dataclass(frozen=True)
class HeaderFacts:
    """What the database needs from one instance's header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    issuer: str = ""
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    frame_of_reference_uid: str | None = None
    image_type: str | None = None
    instance_number: int | None = None
    orientation: list[float] | None = None
    slice_positions: list[float] | None = None
    slice_thickness: float | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    acquisition_number: int | None = None
    temporal_position_index: int | None = None
    trigger_time: float | None = None
    cardiac_phase_percent: float | None = None
    nominal_interval: float | None = None

    def instance_columns(self) -> dict[str, Any]:
        """The per-instance columns of the ``instances`` table."""
        return {k: getattr(self, k) for k in _INSTANCE_FIELDS}


_INSTANCE_FIELDS = (
    "sop_class_uid",
    "sop_instance_uid",
    "image_type",
    "instance_number",
    "orientation",
    "slice_positions",
    "slice_thickness",
    "rows",
    "columns",
    "number_of_frames",
    "acquisition_number",
    "temporal_position_index",
    "trigger_time",
    "cardiac_phase_percent",
    "nominal_interval",
)


class _Reader:
    """Fast attribute access: text values are decoded from the raw bytes (no pydicom
    value conversion and validation); free-text fields go through pydicom (character sets).
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def text(self, tag: int, limit: int | None = None) -> str | None:
        elem = self.ds.get_item(tag)
        if elem is None:
            return None
        v = elem.value
        if isinstance(v, bytes):
            s = v.decode("latin-1").strip(" \x00")
        elif v is None:
            return None
        elif isinstance(v, str):
            s = v.strip()
        else:  # a converted multi-value or number
            s = "\\".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)
        if not s:
            return None
        return s[:limit] if limit else s

    def multi(self, tag: int) -> list[str] | None:
        s = self.text(tag)
        return [x.strip() for x in s.split("\\")] if s is not None else None

    def us(self, tag: int) -> int | None:
        elem = self.ds.get_item(tag)
        if elem is None:
            return None
        v = elem.value
        if isinstance(v, bytes):
            return int.from_bytes(v[:2], "little") if len(v) >= 2 else None
        return _int(v)

    def binary_number(self, tag: int) -> float | None:
        """A number of a binary VR (FL, FD, UL, US...) through pydicom's conversion."""
        if tag not in self.ds:
            return None
        v = self.ds[tag].value
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        return _float(v)

    def decoded(self, tag: int, limit: int) -> str | None:
        if tag not in self.ds:
            return None
        v = self.ds[tag].value
        s = str(v).strip() if v is not None else ""
        return s[:limit] or None


def _int(v: Any) -> int | None:
    try:
        return int(float(v)) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        return float(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


def _floats(v: Any, n: int) -> list[float] | None:
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _normal(iop: Sequence[float]) -> tuple[float, float, float]:
    r, c = iop[:3], iop[3:]
    return (
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    )


def _project(ipp: Sequence[float], n: Sequence[float]) -> float:
    return round(ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2], 4)


def _first_item(ds: Dataset | None, kw: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(kw)
    return seq[0] if seq else None


def _enhanced_geometry(ds: Dataset) -> tuple[list[float] | None, list[float] | None, float | None]:
    """Orientation, per-frame positions along the normal and thickness of a multi-frame."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []

    def pick(frame: Dataset | None, seq: str, kw: str) -> Any:
        for src in (frame, shared):
            item = _first_item(src, seq)
            if item is not None and kw in item:
                return item.get(kw)
        return None

    first = frames[0] if frames else None
    iop = _floats(pick(first, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    thick = _float(pick(first, "PixelMeasuresSequence", "SliceThickness"))
    if iop is None:
        return None, None, thick
    n = _normal(iop)
    positions: list[float] = []
    for f in frames:
        ipp = _floats(pick(f, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if ipp is None:
            return iop, None, thick
        positions.append(_project(ipp, n))
    return iop, positions or None, thick


def facts_from_dataset(ds: Dataset) -> HeaderFacts:
    """Header facts of a (partially read) data set; raises HeaderError without the UIDs."""
    r = _Reader(ds)
    uids = {
        "SOPClassUID": r.text(0x00080016),
        "SOPInstanceUID": r.text(0x00080018),
        "StudyInstanceUID": r.text(0x0020000D),
        "SeriesInstanceUID": r.text(0x0020000E),
    }
    missing = [k for k, v in uids.items() if not v]
    if missing:
        raise HeaderError(f"data set lacks {', '.join(missing)}")
    if 0x52009230 in ds:  # multi-frame with functional groups
        iop, positions, thick = _enhanced_geometry(ds)
    else:
        iop = _floats(r.multi(0x00200037), 6)
        ipp = _floats(r.multi(0x00200032), 3)
        positions = [_project(ipp, _normal(iop))] if iop and ipp else None
        thick = _float(r.text(0x00180050))
    tpi = r.binary_number(0x00209128)  # TemporalPositionIndex, UL
    if tpi is None:
        tpi = _float(r.text(0x00200100))  # TemporalPositionIdentifier, IS
    image_type = r.text(0x00080008)
    # Any later log line or error text carrying these values is redacted.
    register_phi(r.decoded(0x00100010, 324), r.text(0x00100020, 64), r.text(0x00100030, 8))
    return HeaderFacts(
        sop_class_uid=str(uids["SOPClassUID"]),
        sop_instance_uid=str(uids["SOPInstanceUID"]),
        study_uid=str(uids["StudyInstanceUID"]),
        series_uid=str(uids["SeriesInstanceUID"]),
        patient_id=r.text(0x00100020, 64) or "",
        issuer=r.text(0x00100021, 64) or "",
        study_date=r.text(0x00080020, 8),
        accession_number=r.text(0x00080050, 16),
        study_description=r.decoded(0x00081030, 64),
        modality=r.text(0x00080060, 16),
        series_number=_int(r.text(0x00200011)),
        series_description=r.decoded(0x0008103E, 64),
        manufacturer=r.decoded(0x00080070, 64),
        frame_of_reference_uid=r.text(0x00200052, 64),
        image_type=image_type.upper()[:128] if image_type else None,
        instance_number=_int(r.text(0x00200013)),
        orientation=[round(x, 6) for x in iop] if iop else None,
        slice_positions=positions,
        slice_thickness=thick,
        rows=r.us(0x00280010),
        columns=r.us(0x00280011),
        number_of_frames=_int(r.text(0x00280008)),
        acquisition_number=_int(r.text(0x00200012)),
        temporal_position_index=_int(tpi),
        trigger_time=_float(r.text(0x00181060)),
        cardiac_phase_percent=r.binary_number(0x00209241),  # FL
        nominal_interval=_float(r.text(0x00181062)),
    )


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag >= 0x7FE00008)


_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
              b"UT", b"UV")  # fmt: skip


def _check_pixel_data_fits(fp: IO[bytes], implicit: bool, little: bool) -> None:
    """After a read stopped at the pixel data (``fp`` at its element): a value of defined
    length must fit in what was received, else the data set was truncated."""
    if not fp.seekable():
        return
    head = fp.read(8)
    if len(head) < 8:
        return  # no pixel data element
    order: Any = "little" if little else "big"
    if implicit:
        length = int.from_bytes(head[4:8], order)
    elif head[4:6] in _LONG_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            raise HeaderError("truncated data set: the pixel data element header is cut")
        length = int.from_bytes(extra, order)
    else:
        length = int.from_bytes(head[6:8], order)
    if length == 0xFFFFFFFF:
        return  # encapsulated: fragments are checked when decoded
    start = fp.tell()
    present = fp.seek(0, 2) - start
    if present < length:
        raise HeaderError(
            f"truncated data set: the pixel data declares {length} bytes, {present} received"
        )


def read_header(raw: IO[bytes], transfer_syntax: str, limits: SpoolLimits) -> HeaderFacts:
    """Header facts from a raw encoded data set (no file meta) in ``transfer_syntax``.

    Reads only the needed attributes and stops before the pixel data. A deflated data
    set is inflated as a stream within ``limits`` (:class:`OversizeError` past
    ``limits.max_bytes``); a broken deflate stream is a :class:`HeaderError`.
    """
    fp: IO[bytes] = raw
    fp.seek(0)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            fp = inflate_capped(raw, limits)
        except (zlib.error, ValueError) as exc:
            raise HeaderError(f"broken deflate stream: {exc}") from exc
    try:
        ds = read_dataset(
            cast(BinaryIO, fp),
            is_implicit_VR=transfer_syntax == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax != ExplicitVRBigEndian,
            stop_when=_stop_at_pixels,
            specific_tags=_TOP_TAGS,
            defer_size=_DEFER_BYTES,
        )
        _check_pixel_data_fits(
            fp,
            implicit=transfer_syntax == ImplicitVRLittleEndian,
            little=transfer_syntax != ExplicitVRBigEndian,
        )
        return facts_from_dataset(ds)
    except HeaderError:
        raise
    except Exception as exc:
        raise HeaderError(f"cannot read the data set header: {exc}") from exc
    finally:
        if fp is not raw:
            fp.close()
        raw.seek(0)


def read_header_file(path: str) -> HeaderFacts:
    """Header facts of a DICOM file on disk."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_TOP_TAGS)
    except Exception as exc:
        raise HeaderError(f"cannot read {path}: {exc}") from exc
    return facts_from_dataset(ds)
