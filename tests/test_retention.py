"""Retention purge: real rows (through the migrations, SQLite and PostgreSQL) and real
files in a temporary archive."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from ingest_fixtures import wait_for
from sqlalchemy import Engine, func, select

from dicomnode.config import RetentionConfig
from dicomnode.db.models import (
    Annotation,
    Delivery,
    Event,
    Instance,
    Job,
    Patient,
    Result,
    Series,
    Study,
)
from dicomnode.db.session import session_factory
from dicomnode.operate.retention import PurgeReport, candidates, purge, schedule_purge

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CFG = RetentionConfig(delivered_days=30)
_uids = itertools.count(1)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    (root / ".incoming").mkdir(parents=True)
    return root


@dataclass
class Made:
    study_id: int
    files: list[Path]
    size: int

    @property
    def folder(self) -> Path:
        return self.files[0].parent.parent


def make_study(
    engine: Engine,
    root: Path,
    *,
    sent_days_ago: float = 40.0,
    deliveries: tuple[str, ...] = ("sent", "sent"),
    job_states: tuple[str, ...] = ("done",),
    annotated: bool = False,
    n_files: int = 3,
    receiving: bool = False,
) -> Made:
    """A study with one series of ``n_files`` archived instances, its jobs, one result
    for the first job and its deliveries (state as given; sent ones at sent_days_ago)."""
    k = next(_uids)
    study_uid, series_uid = f"1.2.3.{k}", f"1.2.3.{k}.1"
    sent_at = NOW - timedelta(days=sent_days_ago)
    files: list[Path] = []
    with session_factory(engine)() as s, s.begin():
        patient = Patient(patient_id=f"P{k}")
        s.add(patient)
        s.flush()
        study = Study(study_instance_uid=study_uid, patient_fk=patient.id)
        s.add(study)
        s.flush()
        t0 = sent_at - timedelta(hours=1)
        series = Series(
            series_instance_uid=series_uid,
            study_fk=study.id,
            state="receiving" if receiving else "complete",
            first_received_at=t0,
            last_received_at=t0,
            burst_started_at=t0,
        )
        s.add(series)
        s.flush()
        for i in range(n_files):
            rel = f"{study_uid}/{series_uid}/{series_uid}.{i}.dcm"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"D" * (100 + i))
            files.append(path)
            s.add(
                Instance(
                    sop_instance_uid=f"{series_uid}.{i}",
                    series_fk=series.id,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=rel,
                    size_bytes=100 + i,
                    received_at=t0,
                )
            )
        jobs = [Job(series_fk=series.id, study_fk=study.id, state=st) for st in job_states]
        s.add_all(jobs)
        s.flush()
        result = Result(job_fk=jobs[0].id, status="ok")
        s.add(result)
        s.flush()
        for j, state in enumerate(deliveries):
            s.add(
                Delivery(
                    result_fk=result.id,
                    destination="pacs",
                    kind="sr",
                    sop_instance_uid=f"{series_uid}.9{j}",
                    path=f"out/{k}/{j}.dcm",
                    state=state,
                    sent_at=sent_at if state == "sent" else None,
                )
            )
        if annotated:
            s.add(Annotation(study_fk=study.id, landmarks_lps={"RCC": [0.0, 0.0, 0.0]}))
        study_id = study.id
    return Made(study_id, files, sum(100 + i for i in range(n_files)))


def study(engine: Engine, study_id: int) -> Study:
    with session_factory(engine)() as s:
        return s.get_one(Study, study_id)


def events(engine: Engine, kind: str = "study_purged") -> list[Event]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def instance_rows(engine: Engine) -> int:
    with session_factory(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def test_purges_only_old_fully_delivered_unannotated_studies(engine: Engine, archive: Path) -> None:
    old = make_study(engine, archive)
    keep = {
        "recent": make_study(engine, archive, sent_days_ago=5),
        "annotated": make_study(engine, archive, annotated=True),
        "dead delivery": make_study(engine, archive, deliveries=("sent", "dead")),
        "pending delivery": make_study(engine, archive, deliveries=("pending",)),
        "failed delivery": make_study(engine, archive, deliveries=("failed", "sent")),
        "no delivery": make_study(engine, archive, deliveries=()),
        "failed job": make_study(engine, archive, job_states=("done", "failed")),
        "queued job": make_study(engine, archive, job_states=("done", "queued")),
        "still receiving": make_study(engine, archive, receiving=True),
    }
    superseded = make_study(engine, archive, job_states=("done", "superseded"))
    rows_before = instance_rows(engine)

    report = purge(engine, archive, CFG, now=NOW)

    assert sorted(s.study_id for s in report.studies) == [old.study_id, superseded.study_id]
    assert report.files == 6 and report.bytes == 2 * old.size and not report.failed
    for made in (old, superseded):
        assert not any(f.exists() for f in made.files)
        assert not made.folder.exists()  # emptied study and series folders are gone
        assert study(engine, made.study_id).purged_at == NOW
    for why, made in keep.items():
        assert all(f.exists() for f in made.files), why
        assert study(engine, made.study_id).purged_at is None, why
    assert archive.is_dir() and (archive / ".incoming").is_dir()
    assert instance_rows(engine) == rows_before  # the database keeps every row
    evs = events(engine)
    assert {e.study_fk for e in evs} == {old.study_id, superseded.study_id}
    assert all(e.detail == f"3 files, {old.size} bytes" for e in evs)


def test_cutoff_follows_delivered_days(engine: Engine, archive: Path) -> None:
    made = make_study(engine, archive, sent_days_ago=10)
    assert purge(engine, archive, RetentionConfig(delivered_days=11), now=NOW).studies == []
    report = purge(engine, archive, RetentionConfig(delivered_days=9.5), now=NOW)
    assert [s.study_id for s in report.studies] == [made.study_id]
    assert report.cutoff == NOW - timedelta(days=9.5)


def test_dry_run_deletes_and_records_nothing(engine: Engine, archive: Path) -> None:
    made = make_study(engine, archive)
    report = purge(engine, archive, CFG, now=NOW, dry_run=True)
    assert report.dry_run and [s.study_id for s in report.studies] == [made.study_id]
    assert report.files == 3 and report.bytes == made.size
    assert "would purge 1 studies" in report.summary()
    assert all(f.exists() for f in made.files)
    assert study(engine, made.study_id).purged_at is None
    assert events(engine) == []
    assert candidates(engine, NOW - timedelta(days=30)) == [made.study_id]


def test_second_purge_is_a_no_op(engine: Engine, archive: Path) -> None:
    made = make_study(engine, archive)
    first = purge(engine, archive, CFG, now=NOW)
    assert [s.study_id for s in first.studies] == [made.study_id]
    second = purge(engine, archive, CFG, now=NOW + timedelta(hours=6))
    assert second.studies == [] and not second.failed
    assert len(events(engine)) == 1
    assert study(engine, made.study_id).purged_at == NOW


def test_instances_arriving_after_a_purge_are_purged_next_time(
    engine: Engine, archive: Path
) -> None:
    made = make_study(engine, archive)
    purge(engine, archive, CFG, now=NOW)
    late = archive / "1.2.late" / "x.dcm"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"L" * 50)
    with session_factory(engine)() as s, s.begin():
        series_fk = s.scalars(select(Series.id).where(Series.study_fk == made.study_id)).one()
        s.add(
            Instance(
                sop_instance_uid="1.2.late.1",
                series_fk=series_fk,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="1.2.late/x.dcm",
                size_bytes=50,
                received_at=NOW + timedelta(hours=1),
            )
        )
    report = purge(engine, archive, CFG, now=NOW + timedelta(hours=2))
    assert [(s.study_id, s.files, s.bytes, s.missing) for s in report.studies] == [
        (made.study_id, 1, 50, 3)
    ]
    assert not late.exists() and not late.parent.exists()
    assert events(engine)[-1].detail == "1 files, 50 bytes (3 already missing)"


def test_a_path_outside_the_archive_is_refused(engine: Engine, archive: Path) -> None:
    made = make_study(engine, archive)
    outside = archive.parent / "precious.dcm"
    outside.write_bytes(b"keep me")
    with session_factory(engine)() as s, s.begin():
        inst = s.scalars(
            select(Instance)
            .join(Series, Instance.series_fk == Series.id)
            .where(Series.study_fk == made.study_id)
        ).first()
        assert inst is not None
        inst.path = "../precious.dcm"
    report = purge(engine, archive, CFG, now=NOW)
    assert report.studies == [] and made.study_id in report.failed
    assert "outside the archive" in report.failed[made.study_id]
    assert outside.read_bytes() == b"keep me"
    assert study(engine, made.study_id).purged_at is None  # tried again next time


def test_naive_time_is_refused(engine: Engine, archive: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        purge(engine, archive, CFG, now=datetime(2025, 1, 1))


def test_schedule_purge_runs_in_the_scheduler(engine: Engine, archive: Path) -> None:
    made = make_study(engine, archive, sent_days_ago=400)
    sched = BackgroundScheduler(timezone="UTC")
    assert schedule_purge(sched, engine, archive, RetentionConfig(enabled=False)) is None
    job = schedule_purge(sched, engine, archive, RetentionConfig(interval_h=2), delay_s=0)
    assert job.trigger.interval == timedelta(hours=2)
    sched.start()
    try:
        assert wait_for(lambda: study(engine, made.study_id).purged_at is not None, 10)
    finally:
        sched.shutdown(wait=True)
    assert not any(f.exists() for f in made.files)


def test_report_summary() -> None:
    report = PurgeReport(dry_run=False, cutoff=NOW)
    assert report.summary() == "purged 0 studies: 0 files, 0 bytes"
