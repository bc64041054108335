"""Job queries: the job list and one job with its results, deliveries and events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Event, Job, ModelVersion, Result, Series, Study
from dicomnode.db.session import session_factory
from dicomnode.operate.admin.common import JOB_STATES, check_choice, equal_to, from_attrs
from dicomnode.operate.admin.deliveries import DeliveryRow, delivery_rows
from dicomnode.operate.admin.errors import AdminError


@dataclass(frozen=True)
class JobRow:
    """A job with the series and study it works on."""

    id: int
    state: str
    reason: str | None
    attempts: int
    series_id: int
    series_instance_uid: str
    series_description: str | None
    study_instance_uid: str
    accession_number: str | None
    worker_id: str | None
    model_version: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class EventRow:
    """One state change."""

    id: int
    at: datetime
    kind: str
    detail: str | None
    job_id: int | None
    series_id: int | None


@dataclass(frozen=True)
class ResultRow:
    """What a job produced."""

    id: int
    job_id: int
    status: str
    model_version: str | None
    created_at: datetime
    landmarks_lps: dict[str, Any] | None
    plane: dict[str, Any] | None
    measurements: dict[str, Any] | None
    confidence: dict[str, Any] | None
    flags: list[Any] | None
    summary: str | None
    outputs: dict[str, Any] | None


@dataclass(frozen=True)
class JobDetail:
    """A job with its phase, results, deliveries and history."""

    job: JobRow
    phase_key: str | None
    phase_value: str | None
    instance_count: int
    results: list[ResultRow]
    deliveries: list[DeliveryRow]
    events: list[EventRow]


_JOB_COLUMNS = (
    Job.id,
    Job.state,
    Job.reason,
    Job.attempts,
    Series.id,
    Series.series_instance_uid,
    Series.series_description,
    Study.study_instance_uid,
    Study.accession_number,
    Job.worker_id,
    ModelVersion.version,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.heartbeat_at,
    Job.lease_expires_at,
)


def _job_query(*where: Any) -> Any:
    return (
        select(*_JOB_COLUMNS)
        .join(Series, Series.id == Job.series_fk)
        .join(Study, Study.id == Job.study_fk)
        .outerjoin(ModelVersion, ModelVersion.id == Job.model_version_fk)
        .where(*where)
    )


def job_rows(s: Session, *where: Any, limit: int | None = None) -> list[JobRow]:
    """The jobs matching ``where``, newest first."""
    q = _job_query(*where).order_by(Job.id.desc())
    if limit is not None:
        q = q.limit(limit)
    return [JobRow(*row) for row in s.execute(q).all()]


def no_job(job_id: int) -> AdminError:
    """The refusal for an unknown job id."""
    return AdminError(f"no job {job_id}", hint="`dicomnode jobs list` shows the jobs")


def one_job(s: Session, job_id: int) -> JobRow:
    """Job ``job_id``; :class:`AdminError` when there is none."""
    rows = job_rows(s, Job.id == job_id)
    if not rows:
        raise no_job(job_id)
    return rows[0]


def list_jobs(engine: Engine, state: str | None = None, limit: int = 50) -> list[JobRow]:
    """The newest jobs (optionally in one state), newest first."""
    check_choice(state, JOB_STATES, "job state")
    with session_factory(engine)() as s:
        return job_rows(s, *equal_to((Job.state, state)), limit=limit)


def event_rows(s: Session, *where: Any) -> list[EventRow]:
    """The events matching ``where``, oldest first."""
    q = select(Event.id, Event.at, Event.kind, Event.detail, Event.job_fk, Event.series_fk).where(
        *where
    )
    return [EventRow(*r) for r in s.execute(q.order_by(Event.at, Event.id)).all()]


def _results(s: Session, *where: Any) -> list[ResultRow]:
    rows = s.scalars(select(Result).where(*where).order_by(Result.id)).all()
    return [from_attrs(ResultRow, r, job_id=r.job_fk) for r in rows]


def job_detail(engine: Engine, job_id: int) -> JobDetail:
    """A job with its results, their deliveries and the job's events."""
    with session_factory(engine)() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise no_job(job_id)
        results = _results(s, Result.job_fk == job_id)
        return JobDetail(
            job=one_job(s, job_id),
            phase_key=job.phase_key,
            phase_value=job.phase_value,
            instance_count=job.instance_count,
            results=results,
            deliveries=delivery_rows(s, Job.id == job_id),
            events=event_rows(s, Event.job_fk == job_id),
        )
