"""The bad-input corpus of the chaos suite: hostile and broken uploads (issue 11, items
2-6 and 11, plus truncated files, missing geometry, duplicate positions, a wrong SOP
class, a 50 MB private element, 5000-deep sequences, junk bytes, non-ASCII junk in names),
each with the answer the node owes it written next to it: a C-STORE status, or Success
followed by a recorded decision on the series."""

from __future__ import annotations

import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from bench.chaos_procs import NODE_AE, echo_ok
from glipcore import phantom
from glipcore.dicomwrite import (
    SeriesMeta,
    write_ct_series,
    write_enhanced_ct,
    write_legacy_enhanced_ct,
)

PROTOCOL_CLASS = "1.2.840.10008.5.1.4.1.1.200.2"  # CT Performed Procedure Protocol Storage
PRIVATE_CLASS = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
SUCCESS, REFUSED, PROCESSING_FAILURE, CLASS_MISMATCH = 0x0000, 0xA700, 0xC000, 0xA900


@dataclass(frozen=True)
class Expect:
    """What the node owes a case: every C-STORE's status and, after Success, the decision
    recorded for the series (``selected`` or ``not_selected`` with words of its reason)."""

    statuses: tuple[int, ...]
    decision: str | None = None
    reason: str = ""

    def describe(self) -> str:
        codes = ", ".join("Success" if s == 0 else f"0x{s:04X}" for s in sorted(set(self.statuses)))
        if self.decision is None:
            return codes
        why = f" ({self.reason})" if self.reason else ""
        return f"{codes}, then series {self.decision.replace('_', ' ')}{why}"


@dataclass
class Case:
    """One corpus case: the files sent (each in its own presentation context, raw), the
    series they form, the answer expected, and (for odd cases) how it is sent."""

    name: str
    issue: str
    expect: Expect
    files: list[Path] = field(default_factory=list)
    series_uid: str | None = None
    # sends the case itself; returns the statuses seen (an echo's Success is 0)
    custom: Callable[[int], list[int]] | None = None


@dataclass
class Outcome:
    """What the node answered to one case."""

    case: Case
    statuses: list[int]
    decision: str | None
    reason: str

    @property
    def met(self) -> bool:
        e = self.case.expect
        if self.statuses != list(e.statuses):
            return False
        if e.decision is None:
            return True
        return self.decision == e.decision and e.reason.lower() in self.reason.lower()

    def describe(self) -> str:
        codes = ", ".join("Success" if s == 0 else f"0x{s:04X}" for s in sorted(set(self.statuses)))
        if self.case.expect.decision is None:
            return codes
        reason = self.reason.removeprefix(f"{(self.decision or '').replace('_', ' ')}: ")
        short = reason if len(reason) <= 60 else reason[:57] + "..."
        return f"{codes}, then {(self.decision or 'no decision').replace('_', ' ')}: {short}"


# --------------------------------------------------------------------------- builders


def _copy(
    src: Path,
    out: Path,
    edit: Callable[[Dataset], None],
    *,
    meta_class: str | None = None,
    ts: str | None = None,
) -> Path:
    """A copy of ``src`` with a fresh SOP Instance UID, edited by ``edit``."""
    ds = dcmread(src)
    uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(out)])
    ds.SOPInstanceUID = uid
    edit(ds)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPClassUID = UID(meta_class or ds.SOPClassUID)
    if ts is not None:
        ds.file_meta.TransferSyntaxUID = UID(ts)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=meta_class is None)
    return out


def _new_series(ds: Dataset, key: str) -> None:
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.StudyInstanceUID), key])


def _series_copy(
    files: list[Path], out: Path, key: str, edit: Callable[[Dataset, int], None]
) -> list[Path]:
    """A copy of a whole series under a new Series Instance UID, each slice edited."""
    series_uid = generate_uid(entropy_srcs=[str(files[0]), key])
    outs = []
    for k, f in enumerate(files):

        def change(ds: Dataset, k: int = k) -> None:
            ds.SeriesInstanceUID = series_uid
            edit(ds, k)

        outs.append(_copy(f, out / f"{k:04d}.dcm", change))
    return outs


def _private_bytes(n: int) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        _new_series(ds, f"private-{n}")
        ds.private_block(0x0009, "GLIP CHAOS", create=True).add_new(0x00, "OB", bytes(n))

    return edit


def _deep_sequence(src: Path, out: Path, depth: int) -> Path:
    """A copy of ``src`` with Content Sequences nested ``depth`` deep before its pixel
    data, written byte by byte (undefined lengths, explicit VR little endian): pydicom
    itself cannot write such a data set."""
    path = _copy(src, out, lambda ds: _new_series(ds, f"deep-{depth}"))
    data = path.read_bytes()
    sq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    leaf = b"\x08\x00\x00\x01SH\x02\x00X "
    end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    blob = (sq + item) * depth + leaf + end * depth
    at = data.rindex(b"\xe0\x7f\x10\x00OW")
    path.write_bytes(data[:at] + blob + data[at:])
    return path


def _junk_names(ds: Dataset) -> None:
    _new_series(ds, "junk-names")
    ds.PatientName = b"\xff\xfe\x00J\xc3(\x1b$B\x80../..\\/etc/passwd"  # no charset declared
    ds.add(DataElement(0x00100020, "LO", b"../../\xe9\xe8\x00id"))  # PatientID
    ds.add(DataElement(0x0008103E, "LO", "\u2603 \u0000 \udcff".encode("utf-8", "surrogatepass")))


def _dataset_offset(data: bytes) -> int:
    group_len = int.from_bytes(data[140:144], "little")
    return 144 + group_len


def _truncated(src: Path, out: Path, keep: float) -> Path:
    path = _copy(src, out, lambda ds: _new_series(ds, "truncated"))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _junk_bytes(src: Path, out: Path, seed: int) -> Path:
    path = _copy(src, out, lambda ds: _new_series(ds, "junk"))
    data = path.read_bytes()
    junk = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(data[: _dataset_offset(data)] + junk)
    return path


def _broken_deflate(src: Path, out: Path) -> Path:
    path = _copy(
        src, out, lambda ds: _new_series(ds, "broken-deflate"), ts=DeflatedExplicitVRLittleEndian
    )
    data = bytearray(path.read_bytes())
    body = _dataset_offset(bytes(data))
    data[body + 40 : body + 200] = b"\xff" * 160
    try:
        zlib.decompress(bytes(data[body:]), -zlib.MAX_WBITS)
    except zlib.error:
        path.write_bytes(bytes(data))
        return path
    raise RuntimeError("the garbled deflate stream still inflates")


def _deflate_bomb(src: Path, out: Path, inflated: int) -> Path:
    """A deflated data set whose private element inflates past ``inflated`` bytes; built
    by streaming (a 1 GiB element is never held in memory here)."""
    head = _copy(src, out, lambda ds: _new_series(ds, "bomb"), ts=DeflatedExplicitVRLittleEndian)
    ds = dcmread(head)
    ds.private_block(0x0009, "GLIP CHAOS", create=True).add_new(0x00, "OB", b"")
    del ds.PixelData
    ds.save_as(head, enforce_file_format=True)
    data = head.read_bytes()
    start = _dataset_offset(data)
    plain = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    # the empty private OB element is the last one; give it ``inflated`` bytes of zeros
    tag = b"\x09\x00\x00\x10"
    at = plain.rindex(tag)
    assert plain[at + 4 : at + 6] == b"OB" and plain[at + 8 : at + 12] == b"\x00\x00\x00\x00"
    size = inflated + (inflated & 1)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(plain[: at + 8] + size.to_bytes(4, "little") + plain[at + 12 :])]
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(bytes(size & ((1 << 20) - 1))))
    parts.append(comp.flush())
    head.write_bytes(data[:start] + b"".join(parts))
    return head


def _write_fast_series(folder: Path, seed: int, case: str) -> tuple[list[Path], Path, Path]:
    vol, _ = phantom.generate(seed, 0, "fast")
    meta = SeriesMeta.synthetic(seed, case)
    files = write_ct_series(vol, folder / "ct", meta)
    enhanced = write_enhanced_ct(
        vol, folder / "enhanced.dcm", SeriesMeta.synthetic(seed + 1, case + "-mf")
    )
    legacy = write_legacy_enhanced_ct(
        vol, folder / "legacy.dcm", SeriesMeta.synthetic(seed + 2, case + "-lc")
    )
    return files, enhanced, legacy


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.05)
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _idle_connections(n: int, close_within_s: float) -> Callable[[int], list[int]]:
    """``n`` TCP connections from 127.0.0.2 that never send an A-ASSOCIATE-RQ; then a
    C-ECHO from 127.0.0.1 (0: answered at once) and whether the node closed every idle
    connection within ``close_within_s`` seconds (0: closed)."""

    def run(port: int) -> list[int]:
        socks: list[socket.socket] = []
        try:
            for _ in range(n):
                socks.append(
                    socket.create_connection(
                        ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
                    )
                )
            echo = SUCCESS if echo_ok(port, 5) else 0xFFFF
            deadline = time.monotonic() + close_within_s
            while not all(map(_closed_by_peer, socks)) and time.monotonic() < deadline:
                time.sleep(0.2)
            closed = SUCCESS if all(map(_closed_by_peer, socks)) else 0xFFFF
        finally:
            for s in socks:
                s.close()
        return [echo, closed]

    return run


def _set(key: str, **attrs: str) -> Callable[[Dataset], None]:
    """An edit: a new series (named by ``key``) and ``attrs`` set."""

    def edit(ds: Dataset) -> None:
        _new_series(ds, key)
        for k, v in attrs.items():
            setattr(ds, k, v)

    return edit


def _position_of(files: list[Path], k: int) -> Callable[[Dataset, int], None]:
    """A series edit: slice ``k + 1`` at the position of slice ``k``."""
    position = dcmread(files[k], stop_before_pixels=True).ImagePositionPatient

    def edit(ds: Dataset, i: int) -> None:
        if i == k + 1:
            ds.ImagePositionPatient = position

    return edit


def _no_position(ds: Dataset, k: int) -> None:
    del ds.ImagePositionPatient


def build_corpus(folder: Path, seed: int = 0) -> list[Case]:
    """Write every case's files under ``folder``; the cases with their expected answers."""
    folder.mkdir(parents=True, exist_ok=True)
    files, enhanced, legacy = _write_fast_series(folder, 880_000 + seed, "corpus")
    one = files[len(files) // 2]
    c = folder / "cases"

    def uid_of(path: Path) -> str:
        return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)

    def single(name: str, issue: str, expect: Expect, path: Path) -> Case:
        return Case(name, issue, expect, [path], uid_of(path) if expect.decision else None)

    def series(name: str, expect_reason: str, paths: list[Path]) -> Case:
        expect = Expect((SUCCESS,) * len(paths), "not_selected", expect_reason)
        return Case(name, "", expect, paths, uid_of(paths[0]))

    few = "1 slices (at least 40 required)"
    archived = "is archived only"
    return [
        single("enhanced CT (multi-frame)", "2", Expect((SUCCESS,), "selected"), enhanced),
        single("legacy converted enhanced CT", "2", Expect((SUCCESS,), "selected"), legacy),
        single(
            "CT Performed Procedure Protocol",
            "3",
            Expect((SUCCESS,), "not_selected", f"Protocol Storage {archived}"),
            _copy(one, c / "protocol.dcm", _set("protocol", SOPClassUID=PROTOCOL_CLASS)),
        ),
        single(
            "private (vendor) SOP class",
            "3",
            Expect((SUCCESS,), "not_selected", f"{PRIVATE_CLASS} {archived}"),
            _copy(one, c / "private.dcm", _set("private", SOPClassUID=PRIVATE_CLASS)),
        ),
        single(
            "deflate bomb (1.1 GiB inflated)",
            "4",
            Expect((REFUSED,)),
            _deflate_bomb(one, c / "bomb.dcm", 1100 << 20),
        ),
        single(
            "broken deflate stream",
            "5",
            Expect((PROCESSING_FAILURE,)),
            _broken_deflate(one, c / "broken-deflate.dcm"),
        ),
        Case(
            "20 idle connections: C-ECHO from another host, all closed in 10 s",
            "6",
            Expect((SUCCESS, SUCCESS)),
            custom=_idle_connections(20, 10.0),
        ),
        single(
            "MR data set in a CT context",
            "11",
            Expect((CLASS_MISMATCH,)),
            _copy(
                one,
                c / "mr.dcm",
                _set("mr", SOPClassUID=MRImageStorage, Modality="MR"),
                meta_class=CTImageStorage,
            ),
        ),
        single(
            "truncated file (60 %)",
            "",
            Expect((PROCESSING_FAILURE,)),
            _truncated(one, c / "truncated.dcm", 0.6),
        ),
        series(
            "series without geometry",
            "lacks ImagePositionPatient",
            _series_copy(files, c / "nogeo", "nogeo", _no_position),
        ),
        series(
            "series with duplicate positions",
            "several instances at the same position",
            _series_copy(files, c / "dup", "dup", _position_of(files, 10)),
        ),
        single(
            "wrong SOP class (CT pixels as Secondary Capture)",
            "",
            Expect((SUCCESS,), "not_selected", f"Secondary Capture Image Storage {archived}"),
            _copy(one, c / "sc.dcm", _set("sc", SOPClassUID=SecondaryCaptureImageStorage)),
        ),
        single(
            "50 MB private element",
            "4",
            Expect((SUCCESS,), "not_selected", few),
            _copy(one, c / "private-50mb.dcm", _private_bytes(50 << 20)),
        ),
        single(
            "5000-deep sequences",
            "",
            Expect((PROCESSING_FAILURE,)),
            _deep_sequence(one, c / "deep.dcm", 5000),
        ),
        single(
            "junk bytes as data set",
            "",
            Expect((PROCESSING_FAILURE,)),
            _junk_bytes(one, c / "junk.dcm", seed),
        ),
        single(
            "non-ASCII junk in names",
            "",
            Expect((SUCCESS,), "not_selected", few),
            _copy(one, c / "names.dcm", _junk_names),
        ),
    ]


# --------------------------------------------------------------------------- sending


def send_raw(port: int, files: list[Path], aet: str = "CORPUS") -> list[int]:
    """C-STORE each file's data set as encoded (no re-encoding), in one association with a
    presentation context per (SOP class of the file meta, transfer syntax); -1: no
    response."""
    from pynetdicom import AE, _config

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    contexts = set()
    for f in files:
        meta = read_file_meta_info(f)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, ts in sorted(contexts):
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return [-1] * len(files)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    statuses = []
    try:
        for f in files:
            try:
                rsp = assoc.send_c_store(f)
            except (ValueError, OSError, AttributeError, KeyError):
                statuses.append(-1)
                continue
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        if assoc.is_established:
            assoc.release()
    return statuses


def send_case(port: int, case: Case) -> list[int]:
    """Send one case; the statuses the node answered."""
    if case.custom is not None:
        return case.custom(port)
    return send_raw(port, case.files)


def send_concurrently(port: int, cases: list[Case]) -> dict[str, list[int]]:
    """Send several cases at once, one association each (memory under load)."""
    out: dict[str, list[int]] = {}

    def one(case: Case) -> None:
        out[case.name] = send_case(port, case)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    time.sleep(0)
    return out


# --------------------------------------------------------------------------- running


@dataclass
class CorpusFigures:
    """What the corpus run measured."""

    outcomes: list[Outcome]
    echo_after: bool
    outside_archive: list[str]
    peak_rss_bytes: int
    serve_alive: bool
    wall_s: float


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def run_corpus(
    folder: Path, cases: list[Case], db_url: str | None = None, quiet_s: float = 2.0
) -> CorpusFigures:
    """Send every case to a fresh ``serve`` (default limits, no worker, no destination)
    and read back statuses, series decisions, memory and what was written where."""
    from sqlalchemy import select

    from bench.chaos_procs import Node, node_settings
    from dicomnode.config import load_config
    from dicomnode.db.models import Series
    from dicomnode.db.session import make_engine, session_factory

    run = folder / "node"
    url = db_url or f"sqlite:///{folder / 'corpus.db'}"
    node = Node(
        run, node_settings(run / "var", url, Node.new_port(), quiet_s=quiet_s), worker=False
    )
    archive = load_config(node.config).archive_dir
    t0 = time.monotonic()
    node.start()
    before = _files_under(folder)
    statuses: dict[str, list[int]] = {}
    try:
        for case in cases:
            statuses[case.name] = send_case(node.port, case)
        # the oversized and deflated cases once more, four at a time: memory under load
        heavy = [c for c in cases if c.name.startswith(("deflate bomb", "50 MB"))]
        send_concurrently(node.port, heavy * 2)
        deadline = time.monotonic() + 60
        wanted = {c.series_uid for c in cases if c.expect.decision and c.series_uid}
        engine = make_engine(url)
        try:
            while True:
                with session_factory(engine)() as s:
                    rows = {
                        r.series_instance_uid: (r.decision, r.decision_reason or "")
                        for r in s.scalars(select(Series))
                    }
                if all(rows.get(u, (None, ""))[0] for u in wanted):
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        finally:
            engine.dispose()
        echo = echo_ok(node.port)
        alive = node.serve.alive()
    finally:
        node.stop()
    written = _files_under(folder) - before
    allowed = (archive, run / "var", run)
    outside = sorted(
        str(p)
        for p in written
        if not p.is_relative_to(archive)
        and p.parent not in allowed[1:]  # the database, logs and config beside it
    )
    outcomes = []
    for case in cases:
        decision, reason = (
            rows.get(case.series_uid or "", (None, "")) if case.series_uid else (None, "")
        )
        outcomes.append(Outcome(case, statuses[case.name], decision, reason))
    return CorpusFigures(
        outcomes, echo, outside, node.memory.peak_bytes, alive, time.monotonic() - t0
    )
