"""Ingest of one received instance: header facts (no pixel decoding), archive file, rows.

Used by the C-STORE handler (:mod:`dicomnode.receive.scp`) and usable on files already on disk.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any, BinaryIO, Literal

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import Connection, Engine, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dicomnode.db.models import Instance, Patient, Series, Study, UtcDateTime, utcnow
from dicomnode.operate.logs import register_phi
from dicomnode.receive.archive import Archive, Buffer

log = logging.getLogger(__name__)

Outcome = Literal["stored", "replaced", "duplicate"]

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


def read_header(raw: BinaryIO, transfer_syntax: str) -> HeaderFacts:
    """Header facts from a raw encoded data set (no file meta) in ``transfer_syntax``.

    Reads only the needed attributes and stops before the pixel data.
    """
    fp: BinaryIO = raw
    fp.seek(0)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        fp = BytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=transfer_syntax == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax != ExplicitVRBigEndian,
            stop_when=_stop_at_pixels,
            specific_tags=_TOP_TAGS,
        )
        return facts_from_dataset(ds)
    except HeaderError:
        raise
    except Exception as exc:
        raise HeaderError(f"cannot read the data set header: {exc}") from exc
    finally:
        raw.seek(0)


def read_header_file(path: str) -> HeaderFacts:
    """Header facts of a DICOM file on disk."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_TOP_TAGS)
    except Exception as exc:
        raise HeaderError(f"cannot read {path}: {exc}") from exc
    return facts_from_dataset(ds)


IMPLEMENTATION_CLASS_UID = "2.25.4310749083864333264016674165094214414.0.1"
IMPLEMENTATION_VERSION = "GLIPNODE_0.1"
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = ""
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (explicit VR little endian)."""
    body = b"".join(
        (
            _element(2, 0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(2, 0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _element(2, 0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _element(2, 0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
            _element(2, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00"),
            _element(2, 0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii"), b" "),
            _element(2, 0x0016, b"AE", source_ae.strip().encode("ascii", "replace"), b" ")
            if source_ae.strip()
            else b"",
        )
    )
    return _PREAMBLE + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body


class IngestStore:
    """Archives instances and records their rows. Thread-safe.

    ``duplicate_policy``: keep_first (a second copy of a SOP Instance UID is discarded)
    or keep_newest (it atomically replaces the first; the row follows). The file system
    is the first duplicate check (the file name derives from the UIDs); the unique SOP
    Instance UID in the database the second (the same UID under another series).
    """

    def __init__(
        self,
        engine: Engine,
        archive: Archive,
        duplicate_policy: Literal["keep_first", "keep_newest"] = "keep_first",
        *,
        cache_size: int = 4096,
        writers: int = 8,
    ) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="archive-writer")
        self.closed = False
        self.archive = archive
        self.policy = duplicate_policy
        self._dialect_insert = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )
        self._series_cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        ins = self._dialect_insert(Instance)
        self._ins_first = ins.on_conflict_do_nothing(index_elements=["sop_instance_uid"]).returning(
            Instance.id
        )
        cols = [
            c.name for c in Instance.__table__.columns if c.name not in ("id", "sop_instance_uid")
        ]
        self._ins_newest = ins.on_conflict_do_update(
            index_elements=["sop_instance_uid"], set_={c: ins.excluded[c] for c in cols}
        )
        now = bindparam("b_now", type_=UtcDateTime())
        self._touch = (
            update(Series)
            .where(Series.id == bindparam("b_sid"))
            .values(
                last_received_at=now,
                burst_started_at=case(
                    (Series.state == "receiving", Series.burst_started_at), else_=now
                ),
                state="receiving",
                instance_count=Series.instance_count + bindparam("b_inc"),
            )
        )
        self._find = select(Instance.path, Instance.series_fk).where(
            Instance.sop_instance_uid == bindparam("b_uid")
        )

    def store(
        self,
        facts: HeaderFacts,
        chunks: Sequence[Buffer],
        transfer_syntax: str,
        association_id: int | None = None,
    ) -> Outcome:
        """Archive one instance (the file's bytes in ``chunks``) and record it.

        The file is written (and fsynced) on a writer thread while the row is prepared in
        a transaction; the transaction commits only once the file is in place, so a row
        never points at a file that is not durable. On return both are durable (when the
        archive fsyncs and SQLite runs synchronous=FULL).
        """
        rel = self.archive.relpath(facts.study_uid, facts.series_uid, facts.sop_instance_uid)
        extra = {"transfer_syntax_uid": str(transfer_syntax), "association_fk": association_id}
        if self.policy == "keep_first":
            if self.archive.path(rel).exists():
                return self._record_existing_file(facts, rel, extra)
            return self._store_first(facts, chunks, rel, extra)
        return self._store_newest(facts, chunks, rel, extra)

    def close(self) -> None:
        """Stop the writer threads."""
        self._pool.shutdown(wait=True)
        self.closed = True

    def _existing(self, conn: Connection, sop_uid: str) -> tuple[str, int] | None:
        row = conn.execute(self._find, {"b_uid": sop_uid}).first()
        return (row[0], row[1]) if row else None

    def _place_new(self, chunks: Sequence[Buffer], rel: str) -> bool:
        tmp, _ = self.archive.write_temp(chunks)
        return self.archive.commit_new(tmp, rel)

    def _place_replace(self, chunks: Sequence[Buffer], rel: str) -> bool:
        tmp, _ = self.archive.write_temp(chunks)
        self.archive.commit_replace(tmp, rel)
        return True

    def _record_existing_file(self, facts: HeaderFacts, rel: str, extra: dict[str, Any]) -> Outcome:
        """keep_first and the file exists: a duplicate, or a file whose row was never
        committed (crash between rename and commit), which is recorded now."""
        size = self.archive.path(rel).stat().st_size
        now = utcnow()
        with self.engine.begin() as conn:
            if self._existing(conn, facts.sop_instance_uid) is not None:
                return "duplicate"
            series_id = self._series_id(conn, facts, now)
            values = self._row(facts, series_id, rel, size, now, extra)
            inserted = conn.execute(self._ins_first, values).first() is not None
            if inserted:
                conn.execute(self._touch, {"b_sid": series_id, "b_now": now, "b_inc": 1})
        return "stored" if inserted else "duplicate"

    def _store_first(
        self, facts: HeaderFacts, chunks: Sequence[Buffer], rel: str, extra: dict[str, Any]
    ) -> Outcome:
        size = sum(memoryview(c).nbytes for c in chunks)
        fut = self._pool.submit(self._place_new, chunks, rel)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                series_id = self._series_id(conn, facts, now)
                values = self._row(facts, series_id, rel, size, now, extra)
                inserted = conn.execute(self._ins_first, values).first() is not None
                if inserted:
                    conn.execute(self._touch, {"b_sid": series_id, "b_now": now, "b_inc": 1})
                existing = None if inserted else self._existing(conn, facts.sop_instance_uid)
                placed = fut.result()  # the file is durable before the row commits
        finally:
            wait([fut])  # never leave a writer reading the caller's buffer
        if placed and existing is not None and existing[0] != rel:
            self.archive.discard(rel)  # a concurrent copy under another series won
        return "stored" if inserted else "duplicate"

    def _store_newest(
        self, facts: HeaderFacts, chunks: Sequence[Buffer], rel: str, extra: dict[str, Any]
    ) -> Outcome:
        size = sum(memoryview(c).nbytes for c in chunks)
        fut = self._pool.submit(self._place_replace, chunks, rel)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                series_id = self._series_id(conn, facts, now)
                old = self._existing(conn, facts.sop_instance_uid)
                conn.execute(self._ins_newest, self._row(facts, series_id, rel, size, now, extra))
                inc = 1 if old is None or old[1] != series_id else 0
                conn.execute(self._touch, {"b_sid": series_id, "b_now": now, "b_inc": inc})
                if old is not None and old[1] != series_id:
                    conn.execute(
                        update(Series)
                        .where(Series.id == old[1])
                        .values(instance_count=Series.instance_count - 1)
                    )
                fut.result()
        finally:
            wait([fut])
        if old is not None and old[0] != rel:
            self.archive.discard(old[0])
        return "stored" if old is None else "replaced"

    @staticmethod
    def _row(
        facts: HeaderFacts,
        series_id: int,
        rel: str,
        size: int,
        now: datetime,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            **facts.instance_columns(),
            **extra,
            "series_fk": series_id,
            "path": rel,
            "size_bytes": size,
            "received_at": now,
        }

    def _series_id(self, conn: Connection, f: HeaderFacts, now: datetime) -> int:
        with self._lock:
            cached = self._series_cache.get(f.series_uid)
            if cached is not None:
                self._series_cache.move_to_end(f.series_uid)
                return cached
        sid = conn.execute(
            select(Series.id).where(Series.series_instance_uid == f.series_uid)
        ).scalar()
        if sid is None:
            study_id = self._study_id(conn, f)
            conn.execute(
                self._dialect_insert(Series)
                .values(
                    series_instance_uid=f.series_uid,
                    study_fk=study_id,
                    modality=f.modality,
                    series_number=f.series_number,
                    series_description=f.series_description,
                    manufacturer=f.manufacturer,
                    sop_class_uid=f.sop_class_uid,
                    frame_of_reference_uid=f.frame_of_reference_uid,
                    state="receiving",
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    burst_started_at=now,
                )
                .on_conflict_do_nothing(index_elements=["series_instance_uid"])
            )
            sid = conn.execute(
                select(Series.id).where(Series.series_instance_uid == f.series_uid)
            ).scalar_one()
        with self._lock:
            self._series_cache[f.series_uid] = int(sid)
            while len(self._series_cache) > self._cache_size:
                self._series_cache.popitem(last=False)
        return int(sid)

    def _study_id(self, conn: Connection, f: HeaderFacts) -> int:
        sid = conn.execute(select(Study.id).where(Study.study_instance_uid == f.study_uid)).scalar()
        if sid is not None:
            return int(sid)
        conn.execute(
            self._dialect_insert(Patient)
            .values(patient_id=f.patient_id, issuer=f.issuer, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["patient_id", "issuer"])
        )
        pid = conn.execute(
            select(Patient.id).where(Patient.patient_id == f.patient_id, Patient.issuer == f.issuer)
        ).scalar_one()
        conn.execute(
            self._dialect_insert(Study)
            .values(
                study_instance_uid=f.study_uid,
                patient_fk=pid,
                study_date=f.study_date,
                accession_number=f.accession_number,
                study_description=f.study_description,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        return int(
            conn.execute(
                select(Study.id).where(Study.study_instance_uid == f.study_uid)
            ).scalar_one()
        )

    def forget_cache(self) -> None:
        """Drop cached series ids (after rows were deleted by hand)."""
        with self._lock:
            self._series_cache.clear()
