"""Delivery (C-STORE SCU, retry, breaker, dead letter) against real pynetdicom storage SCPs
started in the test, on a migrated SQLite database (one test on both backends)."""

from __future__ import annotations

import random
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from ingest_fixtures import free_port, tiny_volume, wait_for, write_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy import Engine, select

from dicomnode.config import DeliveryConfig, NodeConfig
from dicomnode.db.models import (
    Delivery,
    DeliveryAttempt,
    Job,
    Patient,
    Result,
    Series,
    Study,
    utcnow,
)
from dicomnode.db.session import make_engine, session_factory, session_scope
from dicomnode.deliver.plan import plan_deliveries
from dicomnode.deliver.policy import backoff_s, classify_status
from dicomnode.deliver.scu import echo
from dicomnode.deliver.service import DeliveryRound, DeliveryService

PATIENT_NAME = "PHANTOM^DELIVERYTEST"
PATIENT_ID = "PID-DELIVERY-4711"
Objects = dict[str, list[tuple[str, Path]]]

# --------------------------------------------------------------------------- objects


def _base(sop_class: str, modality: str, study_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, number, 1
    ds.Manufacturer = "glip-node"
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def write_sr(out: Path, study_uid: str) -> tuple[str, Path]:
    """A minimal Comprehensive 3D SR (a titled container with one TEXT item)."""
    ds = _base(Comprehensive3DSRStorage, "SR", study_uid, 901)
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = [_code("121106", "DCM", "Comment")]
    text.TextValue = "delivery test; research use only"
    ds.ContentSequence = [text]
    path = out / f"SR_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID), path


def write_sc(out: Path, study_uid: str) -> tuple[str, Path]:
    """A tiny 8-bit Secondary Capture image."""
    ds = _base(SecondaryCaptureImageStorage, "OT", study_uid, 902)
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    path = out / f"SC_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID), path


def write_ct(out: Path, n_slices: int = 2) -> tuple[str, list[tuple[str, Path]]]:
    """A tiny CT series (n_slices of 8 x 8): (study UID, [(SOP instance UID, path)])."""
    from pydicom import dcmread

    out.mkdir(parents=True, exist_ok=True)
    vol = tiny_volume(3, shape_zyx=(n_slices, 8, 8))
    files = write_series(out, seed=3, case_id="delivery", vol=vol)
    items = []
    study_uid = ""
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        items.append((str(ds.SOPInstanceUID), f.resolve()))
    return study_uid, items


def sample_objects(out: Path) -> Objects:
    """A CT slice pair and a Secondary Capture as key images, and an SR."""
    study_uid, ct = write_ct(out / "ct")
    sc = write_sc(out, study_uid)
    sr = write_sr(out, study_uid)
    return {"sr": [sr], "keyimage": [*ct, sc]}


def all_uids(objects: Objects) -> list[str]:
    return [uid for items in objects.values() for uid, _ in items]


# --------------------------------------------------------------------------- database


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return sqlite_engine


def make_result(engine: Engine) -> int:
    """A result row (with the patient/study/series/job rows it hangs on)."""
    now = utcnow()
    with session_scope(session_factory(engine)) as s:
        patient = Patient(patient_id=PATIENT_ID)
        s.add(patient)
        s.flush()
        study = Study(study_instance_uid=generate_uid(), patient_fk=patient.id)
        s.add(study)
        s.flush()
        series = Series(
            series_instance_uid=generate_uid(),
            study_fk=study.id,
            first_received_at=now,
            last_received_at=now,
            burst_started_at=now,
        )
        s.add(series)
        s.flush()
        job = Job(series_fk=series.id, study_fk=study.id, state="done")
        s.add(job)
        s.flush()
        result = Result(job_fk=job.id, status="ok")
        s.add(result)
        s.flush()
        return int(result.id)


def plan(engine: Engine, cfg: NodeConfig, objects: Objects) -> int:
    """A result with ``objects`` planned for delivery; the number of rows made."""
    rid = make_result(engine)
    with session_scope(session_factory(engine)) as s:
        return len(plan_deliveries(s, rid, objects, cfg))


def rows(engine: Engine, model: type[Any], *where: Any) -> list[Any]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def deliveries(engine: Engine, destination: str | None = None) -> list[Delivery]:
    where = [] if destination is None else [Delivery.destination == destination]
    return rows(engine, Delivery, *where)


def attempts_of(engine: Engine, delivery_id: int) -> list[DeliveryAttempt]:
    return rows(engine, DeliveryAttempt, DeliveryAttempt.delivery_fk == delivery_id)


def dest(name: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "ae_title": "PACS", "host": "127.0.0.1", "port": port, **kw}


def node_cfg(
    url: str,
    dests: list[dict[str, Any]],
    network: dict[str, Any] | None = None,
    **delivery: Any,
) -> NodeConfig:
    """Small timeouts and backoffs so that retries happen within a test."""
    policy = {
        "max_attempts": 5,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.4,
        "jitter": 0.2,
        "connect_timeout_s": 3.0,
        "dimse_timeout_s": 5.0,
        "breaker_failures": 3,
        "breaker_open_s": 0.5,
        "poll_interval_s": 0.1,
    }
    return NodeConfig(
        ae_title="GLIPNODE",
        database={"url": url},
        destinations=dests,
        delivery={**policy, **delivery},
        network=network or {},
    )


class Clock:
    """A settable clock for the service (the database compares against it)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --------------------------------------------------------------------------- the SCP

ALL_CLASSES = [CTImageStorage, SecondaryCaptureImageStorage, Comprehensive3DSRStorage]


class CountingSCP:
    """A pynetdicom storage SCP that counts what it receives.

    ``reject_for_s``: associations are rejected (``reject``: transient or permanent) for
    that long after start. ``statuses``: returned by the first C-STOREs, then Success.
    ``delay_first_s``: the first C-STORE answers only after that long.
    """

    def __init__(
        self,
        *,
        classes: Sequence[str] = ALL_CLASSES,
        reject_for_s: float = 0.0,
        reject: str = "transient",
        statuses: Sequence[int] = (),
        delay_first_s: float = 0.0,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.classes, self.port = list(classes), port
        self.reject_for_s, self.reject = reject_for_s, reject
        self.statuses = list(statuses)
        self.delay_first_s = delay_first_s
        self.requests: Counter[str] = Counter()  # C-STORE requests per SOP instance UID
        self.stored: Counter[str] = Counter()  # answered Success or Warning
        self.rejected = 0
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> CountingSCP:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(Verification)
        for uid in self.classes:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._t0 = time.monotonic()
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_C_STORE, self._on_store),
            ],
        )
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: Event) -> None:
        if time.monotonic() - self._t0 >= self.reject_for_s:
            return
        with self._lock:
            self.rejected += 1
        if self.reject == "transient":  # service provider: temporary congestion
            event.assoc.acse.send_reject(0x02, 0x03, 0x01)
        else:  # service user: calling AE title not recognised
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # as pynetdicom's own rejections: the DUL sends the A-ASSOCIATE-RJ

    def _on_store(self, event: Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        with self._lock:
            first = not self.requests
            self.requests[uid] += 1
            status = self.statuses.pop(0) if self.statuses else 0x0000
        if first and self.delay_first_s:
            time.sleep(self.delay_first_s)
        if classify_status(status, accept_warning=True) == "success":
            with self._lock:
                self.stored[uid] += 1
        return status


@pytest.fixture
def scps() -> Iterator[Callable[..., CountingSCP]]:
    made: list[CountingSCP] = []

    def make(**kw: Any) -> CountingSCP:
        scp = CountingSCP(**kw).start()
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.stop()


def run_until_done(svc: DeliveryService, engine: Engine, timeout: float) -> list[DeliveryRound]:
    """Rounds (as the scheduler would run them) until nothing is pending."""
    rounds = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rounds.append(svc.run_once())
        if all(d.state != "pending" for d in deliveries(engine)):
            break
        time.sleep(0.05)
    return rounds


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("status", "accept_warning", "expected"),
    [
        (0x0000, False, "success"),
        (0xB000, False, "permanent"),
        (0xB000, True, "success"),
        (0xB006, True, "success"),
        (0xB007, False, "permanent"),
        (0x0001, True, "success"),
        (0xA700, False, "transient"),
        (0xA7FF, True, "transient"),
        (0x0213, False, "transient"),
        (0x0110, False, "transient"),
        (0x0122, True, "permanent"),
        (0xA900, True, "permanent"),
        (0xC000, True, "permanent"),
        (0x0124, False, "permanent"),
    ],
)
def test_classify_status(status: int, accept_warning: bool, expected: str) -> None:
    assert classify_status(status, accept_warning) == expected


def test_backoff_grows_is_capped_and_jitters_within_bounds() -> None:
    exact = DeliveryConfig(backoff_initial_s=2.0, backoff_max_s=50.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff_s(a, exact, rng) for a in range(1, 8)] == [2, 4, 8, 16, 32, 50, 50]
    assert backoff_s(10_000, exact, rng) == 50.0  # no overflow for absurd attempt counts

    cfg = DeliveryConfig(backoff_initial_s=2.0, backoff_max_s=50.0, jitter=0.25)
    for attempt in range(1, 9):
        base = min(50.0, 2.0 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, cfg, rng) for _ in range(300)]
        assert all(base * 0.75 <= w <= min(50.0, base * 1.25) for w in waits), attempt
        assert max(waits) - min(waits) > base * 0.2  # it does jitter
    with pytest.raises(ValueError, match="start at 1"):
        backoff_s(0, cfg, rng)


# --------------------------------------------------------------------------- planning


def test_plan_deliveries_routes_by_kind_and_is_idempotent(
    engine: Engine, sqlite_url: str, tmp_path: Path
) -> None:
    cfg = node_cfg(
        sqlite_url,
        [dest("pacs", 104), dest("viewer", 105, kinds=["keyimage"]), dest("sr", 106, kinds=["sr"])],
    )
    objects = sample_objects(tmp_path)
    rid = make_result(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        made = plan_deliveries(s, rid, objects, cfg)
    # pacs takes all 4 objects, viewer the 3 key images, sr the SR.
    assert len(made) == 4 + 3 + 1
    by_dest = Counter(d.destination for d in deliveries(engine))
    assert by_dest == {"pacs": 4, "viewer": 3, "sr": 1}
    row = deliveries(engine, "sr")[0]
    assert (row.kind, row.state, row.attempts) == ("sr", "pending", 0)
    assert row.sop_instance_uid == objects["sr"][0][0]
    assert Path(row.path).is_absolute() and row.next_attempt_at is not None
    with session_scope(sessions) as s:
        assert plan_deliveries(s, rid, objects, cfg) == []
    assert len(deliveries(engine)) == 8

    with session_scope(sessions) as s, pytest.raises(ValueError, match="unknown object kind"):
        plan_deliveries(s, rid, {"pdf": objects["sr"]}, cfg)
    with session_scope(sessions) as s, pytest.raises(ValueError, match="must be absolute"):
        plan_deliveries(s, rid, {"sr": [("1.2.3", Path("rel.dcm"))]}, cfg)


# --------------------------------------------------------------------------- sending


def test_transient_rejects_then_everything_arrives_exactly_once(
    engine: Engine,
    sqlite_url: str,
    tmp_path: Path,
    scps: Callable[..., CountingSCP],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(a) The SCP rejects (transient) for 1.5 s, then accepts."""
    caplog.set_level("DEBUG")
    scp = scps(reject_for_s=1.5)
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port)], max_attempts=40)
    objects = sample_objects(tmp_path)
    assert plan(engine, cfg, objects) == 4

    rounds = run_until_done(DeliveryService(engine, cfg), engine, timeout=20)

    rows_ = deliveries(engine)
    assert [d.state for d in rows_] == ["sent"] * 4, [d.last_error for d in rows_]
    assert scp.rejected >= 2
    assert scp.stored == Counter({uid: 1 for uid in all_uids(objects)})
    assert scp.requests == scp.stored  # nothing re-sent after its Success
    assert sum(r.total.retried for r in rounds) >= 4
    for d in rows_:
        tries = attempts_of(engine, d.id)
        assert len(tries) == d.attempts >= 2
        assert [t.status for t in tries] == [None] * (len(tries) - 1) + [0]
        assert all("Rejected Transient" in (t.error or "") for t in tries[:-1]), [
            t.error for t in tries
        ]
        assert tries[-1].error is None and d.sent_at is not None and d.last_error is None
        assert all(t.finished_at is not None and t.finished_at >= t.started_at for t in tries)
    # Each round carried every due object on one association: attempts move in lock step.
    assert len({d.attempts for d in rows_}) == 1
    assert PATIENT_NAME.split("^")[0] not in caplog.text
    assert PATIENT_ID not in caplog.text


def test_sop_class_not_accepted_is_dead_at_once_others_are_sent(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    """(b) The SCP takes CT and SC but not SR."""
    scp = scps(classes=[CTImageStorage, SecondaryCaptureImageStorage])
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port), dest("sronly", scp.port, kinds=["sr"])])
    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)

    rnd = DeliveryService(engine, cfg).run_once()

    assert (rnd.of("pacs").sent, rnd.of("pacs").dead) == (3, 1)
    assert (rnd.of("sronly").sent, rnd.of("sronly").dead) == (0, 1)
    sr_uid = objects["sr"][0][0]
    for d in deliveries(engine):
        if d.sop_instance_uid == sr_uid:
            assert d.state == "dead" and d.attempts == 1
            assert "no presentation context" in (d.last_error or "")
            assert "Comprehensive 3D SR" in (d.last_error or "")
            assert len(attempts_of(engine, d.id)) == 1
        else:
            assert d.state == "sent"
    assert sr_uid not in scp.requests
    assert set(scp.stored) == set(all_uids(objects)) - {sr_uid}


def test_permanent_association_reject_is_dead_at_once(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    scp = scps(reject_for_s=3600, reject="permanent")
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port)])
    plan(engine, cfg, sample_objects(tmp_path))
    svc = DeliveryService(engine, cfg)
    assert svc.run_once().of("pacs").dead == 4
    for d in deliveries(engine):
        assert d.state == "dead" and d.attempts == 1
        assert "Rejected Permanent" in (d.last_error or "")
        assert "Calling AE title not recognised" in (d.last_error or "")
    assert svc.breaker_state() == {"pacs": "closed"}
    assert svc.run_once().destinations == {}


def test_one_destination_down_never_blocks_another_and_its_breaker_opens(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    """(c) A closed port and a working SCP; later the down one comes up."""
    up = scps()
    down_port = free_port()
    cfg = node_cfg(
        sqlite_url,
        [dest("up", up.port), dest("down", down_port)],
        backoff_initial_s=1.0,
        backoff_max_s=2.0,
        jitter=0.0,
        breaker_failures=2,
        breaker_open_s=10.0,
        max_attempts=10,
    )
    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)
    clock = Clock()
    svc = DeliveryService(engine, cfg, clock=clock)

    r1 = svc.run_once()
    assert (r1.of("up").sent, r1.of("down").retried) == (4, 4)
    assert up.stored == Counter({uid: 1 for uid in all_uids(objects)})
    down_rows = deliveries(engine, "down")
    assert all("Connection refused" in (d.last_error or "") for d in down_rows)
    assert all(str(down_port) in (d.last_error or "") for d in down_rows)
    assert svc.breaker_state() == {"up": "closed", "down": "closed"}

    clock.advance(0.5)  # backoff (1 s) not over: nothing due
    assert svc.run_once().destinations == {}
    clock.advance(1.0)
    assert svc.run_once().of("down").retried == 4
    assert svc.breaker_state()["down"] == "open"

    clock.advance(3.0)  # due again, but the breaker is open
    r3 = svc.run_once()
    assert r3.of("down").skipped == 4 and r3.of("down").retried == 0
    assert sum(len(attempts_of(engine, d.id)) for d in down_rows) == 8

    late = scps(port=down_port)
    clock.advance(10.0)
    assert svc.breaker_state()["down"] == "half-open"
    r4 = svc.run_once()
    assert r4.of("down").sent == 4
    assert svc.breaker_state()["down"] == "closed"
    assert late.stored == Counter({uid: 1 for uid in all_uids(objects)})
    assert up.requests == up.stored  # the up destination was never re-sent anything


@pytest.mark.parametrize(
    ("status", "accept_warning", "first_state", "text"),
    [
        (0xA700, False, "pending", "Out of Resources"),
        (0xB000, False, "dead", "accept_warning is off"),
        (0xB000, True, "sent", None),
        (0xC000, False, "dead", "Cannot Understand"),
    ],
)
def test_status_from_the_scp(
    engine: Engine,
    sqlite_url: str,
    tmp_path: Path,
    scps: Callable[..., CountingSCP],
    status: int,
    accept_warning: bool,
    first_state: str,
    text: str | None,
) -> None:
    """(d) 0xA700 is retried; a Warning counts only when accepted; 0xC000 is final."""
    scp = scps(statuses=[status] * 4)
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port, accept_warning=accept_warning)], jitter=0.0)
    plan(engine, cfg, sample_objects(tmp_path))
    clock = Clock()
    svc = DeliveryService(engine, cfg, clock=clock)
    svc.run_once()
    for d in deliveries(engine):
        assert d.state == first_state
        tries = attempts_of(engine, d.id)
        assert [t.status for t in tries] == [status]
        if text is not None:
            assert text in (d.last_error or "") and f"0x{status:04X}" in (d.last_error or "")
    if first_state == "pending":
        clock.advance(0.1)
        svc.run_once()
        for d in deliveries(engine):
            assert d.state == "sent" and d.attempts == 2
            assert [t.status for t in attempts_of(engine, d.id)] == [status, 0]


def test_max_attempts_exhausted_goes_dead(engine: Engine, sqlite_url: str, tmp_path: Path) -> None:
    """(e) Nothing listens: after max_attempts the delivery is dead-lettered."""
    cfg = node_cfg(sqlite_url, [dest("pacs", free_port())], max_attempts=3, breaker_failures=100)
    plan(engine, cfg, sample_objects(tmp_path))
    clock = Clock()
    svc = DeliveryService(engine, cfg, clock=clock)
    counts = []
    for _ in range(4):
        rnd = svc.run_once()
        counts.append((rnd.of("pacs").retried, rnd.of("pacs").dead))
        clock.advance(1.0)
    assert counts == [(4, 0), (4, 0), (0, 4), (0, 0)]
    for d in deliveries(engine):
        assert d.state == "dead" and d.attempts == 3 and d.next_attempt_at is None
        assert (d.last_error or "").startswith("gave up after 3 attempts: cannot connect")
        assert len(attempts_of(engine, d.id)) == 3


def test_no_response_in_time_is_retried_and_the_rest_waits(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    """The first C-STORE is answered after the DIMSE timeout: the association is gone, the
    object is retried, the objects behind it were not attempted and go next round."""
    scp = scps(delay_first_s=1.5)
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port)], dimse_timeout_s=0.5, jitter=0.0)
    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)
    clock = Clock()
    svc = DeliveryService(engine, cfg, clock=clock)
    r1 = svc.run_once()
    assert (r1.of("pacs").retried, r1.of("pacs").skipped, r1.of("pacs").sent) == (1, 3, 0)
    slow = [d for d in deliveries(engine) if d.attempts == 1]
    assert len(slow) == 1 and "no C-STORE response within 0.5 s" in (slow[0].last_error or "")
    assert sum(d.attempts for d in deliveries(engine)) == 1
    clock.advance(0.2)
    svc.run_once()
    assert [d.state for d in deliveries(engine)] == ["sent"] * 4
    assert set(scp.stored) == set(all_uids(objects))


def test_missing_file_and_unknown_destination_are_dead_with_reason(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    scp = scps()
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port), dest("old", scp.port)])
    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)
    gone_uid, gone_path = objects["keyimage"][0]
    gone_path.unlink()
    # "old" is removed from the configuration before the service starts.
    cfg2 = node_cfg(sqlite_url, [dest("pacs", scp.port)])
    rnd = DeliveryService(engine, cfg2).run_once()
    assert (rnd.of("pacs").sent, rnd.of("pacs").dead, rnd.of("old").dead) == (3, 1, 4)
    for d in deliveries(engine, "old"):
        assert d.state == "dead" and "'old' is not in the configuration" in (d.last_error or "")
    gone = next(d for d in deliveries(engine, "pacs") if d.sop_instance_uid == gone_uid)
    assert gone.state == "dead" and f"file not found: {gone_path}" == gone.last_error
    assert gone_uid not in scp.requests


def test_scheduler_job_delivers(
    engine: Engine, sqlite_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    scp = scps()
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port)])
    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)
    sched = BackgroundScheduler(timezone="UTC")
    DeliveryService(engine, cfg).start(sched)
    job = sched.get_jobs()[0]
    assert (job.max_instances, job.coalesce) == (1, True)
    sched.start()
    try:
        assert wait_for(lambda: len(scp.stored) == 4, timeout=10)
    finally:
        sched.shutdown(wait=True)
    assert all(d.state == "sent" for d in deliveries(engine))


def test_round_on_both_backends(
    migrated_url: str, tmp_path: Path, scps: Callable[..., CountingSCP]
) -> None:
    """The claim query (FOR UPDATE SKIP LOCKED on PostgreSQL) and the bookkeeping."""
    scp = scps()
    cfg = node_cfg(migrated_url, [dest("pacs", scp.port)])
    eng = make_engine(migrated_url)
    try:
        objects = sample_objects(tmp_path)
        plan(eng, cfg, objects)
        rnd = DeliveryService(eng, cfg).run_once()
        assert rnd.total.sent == 4
        assert all(d.state == "sent" for d in deliveries(eng))
        assert len(rows(eng, DeliveryAttempt)) == 4
    finally:
        eng.dispose()


# --------------------------------------------------------------------------- echo


def test_echo_succeeds_and_fails_clearly_on_a_closed_port(
    sqlite_url: str, scps: Callable[..., CountingSCP]
) -> None:
    """(g)"""
    scp = scps()
    port = free_port()
    cfg = node_cfg(sqlite_url, [dest("pacs", scp.port), dest("nobody", port)])
    ok, msg = echo(cfg.destinations[0], cfg)
    assert ok, msg
    assert "succeeded" in msg and "PACS@127.0.0.1" in msg
    ok, msg = echo(cfg.destinations[1], cfg)
    assert not ok
    assert f"127.0.0.1:{port}" in msg and "Connection refused" in msg


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (used by both ends)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_with_client_certificate(
    engine: Engine,
    sqlite_url: str,
    tmp_path: Path,
    scps: Callable[..., CountingSCP],
    tls_files: tuple[Path, Path],
) -> None:
    """The peer's certificate is checked against tls_ca_file; ours (network.tls) is
    offered, and this SCP requires it."""
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert))
    server.load_cert_chain(str(cert), str(key))
    server.verify_mode = ssl.CERT_REQUIRED
    scp = scps(ssl_context=server)
    good = dest("tls", scp.port, tls=True, tls_ca_file=str(cert))
    untrusted = dest("untrusted", scp.port, tls=True)
    own = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
    cfg = node_cfg(sqlite_url, [good, untrusted], network=own, breaker_failures=100)
    ok, msg = echo(cfg.destinations[0], cfg)
    assert ok, msg
    ok, msg = echo(cfg.destinations[1], cfg)
    assert not ok and "TLS handshake failed" in msg and "certificate verify failed" in msg

    objects = sample_objects(tmp_path)
    plan(engine, cfg, objects)
    rnd = DeliveryService(engine, cfg).run_once()
    assert (rnd.of("tls").sent, rnd.of("untrusted").retried) == (4, 4)
    assert scp.stored == Counter({uid: 1 for uid in all_uids(objects)})

    no_client_cert = node_cfg(sqlite_url, [good])
    ok, msg = echo(no_client_cert.destinations[0], no_client_cert)
    assert not ok, msg
