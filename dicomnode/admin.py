"""Operator queries and actions on the node's database (the `dicomnode` admin commands).

Nothing here prints: every function returns typed rows (frozen dataclasses; TypedDicts for
the status snapshot) that :func:`jsonable` turns into JSON-ready values. Refused actions
and unknown ids raise :class:`AdminError` with a message and a hint for the operator.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypedDict, cast

from sqlalchemy import CursorResult, Engine, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db import migrate
from dicomnode.db.models import (
    AssociationAudit,
    Delivery,
    Event,
    Instance,
    Job,
    ModelVersion,
    Result,
    Series,
    Study,
    utcnow,
)
from dicomnode.db.session import session_factory
from dicomnode.registry import active_model, known_versions

JOB_STATES = ("queued", "held", "running", "done", "failed", "superseded", "cancelled")
SERIES_STATES = ("receiving", "complete")
SERIES_DECISIONS = ("selected", "not_selected", "superseded")
DELIVERY_STATES = ("pending", "sent", "failed", "dead")
RETRYABLE_JOB_STATES = ("failed", "cancelled", "done")
CANCELLABLE_JOB_STATES = ("queued", "held", "running")
LANDMARK_ORDER = ("RCC", "LCC", "NCC")
STATUS_LIST_LIMIT = 10


class AdminError(ValueError):
    """An operator request that cannot be carried out; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------- row types


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
class DeliveryRow:
    """One output object to one destination."""

    id: int
    result_id: int
    job_id: int
    study_instance_uid: str
    destination: str
    kind: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sop_instance_uid: str
    created_at: datetime
    sent_at: datetime | None


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


@dataclass(frozen=True)
class SeriesRow:
    """A series, its completeness/selection state and its latest job."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    accession_number: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    state: str
    decision: str | None
    decision_reason: str | None
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    completion: str | None
    latest_job_id: int | None
    latest_job_state: str | None


@dataclass(frozen=True)
class InstanceStats:
    """What the archived instances of a series look like."""

    count: int
    bytes: int
    transfer_syntaxes: list[str]
    slice_thickness_mm: list[float]
    matrix: list[str]


@dataclass(frozen=True)
class SeriesDetail:
    """A series with its instances' facts, jobs and history."""

    series: SeriesRow
    manufacturer: str | None
    sop_class_uid: str | None
    frame_of_reference_uid: str | None
    study_purged_at: datetime | None
    instances: InstanceStats
    jobs: list[JobRow]
    events: list[EventRow]


@dataclass(frozen=True)
class ModelRow:
    """A registered model version."""

    version: str
    name: str
    active: bool
    trained_on_phantom: bool
    path: str
    sha256: str
    metrics: dict[str, Any] | None
    created_at: datetime
    promoted_at: datetime | None


@dataclass(frozen=True)
class ConfigBundle:
    """The configuration's model bundle (used while no version is active)."""

    path: str
    version: str | None
    registered: bool
    error: str | None


@dataclass(frozen=True)
class ModelList:
    """Registered versions, the configuration default and the version in use."""

    versions: list[ModelRow]
    config_default: ConfigBundle
    in_use: str | None


# ----------------------------------------------------------------------- status types


class TodayCounts(TypedDict):
    since: str
    associations: int
    associations_by_outcome: dict[str, int]
    instances: int
    bytes_received: int


class SeriesCounts(TypedDict):
    receiving: int
    complete: int
    by_decision: dict[str, int]


class JobCounts(TypedDict):
    by_state: dict[str, int]
    queue_depth: int
    oldest_queued_age_s: float | None


class RunningJob(TypedDict):
    id: int
    series_instance_uid: str
    worker_id: str | None
    attempts: int
    started_at: str | None
    age_s: float | None
    heartbeat_age_s: float | None
    lease_expires_in_s: float | None
    lease_expired: bool


class FailedJob(TypedDict):
    id: int
    series_instance_uid: str
    reason: str | None
    attempts: int
    finished_at: str | None


class Failures(TypedDict):
    total: int
    today: int
    recent: list[FailedJob]


class DeadDelivery(TypedDict):
    id: int
    destination: str
    kind: str
    attempts: int
    last_error: str | None
    updated_at: str | None


class DeliveryCounts(TypedDict):
    by_state: dict[str, int]
    pending: int
    dead: int
    due_now: int
    oldest_pending_age_s: float | None
    by_destination: dict[str, dict[str, int]]
    dead_recent: list[DeadDelivery]


class DiskStatus(TypedDict):
    path: str
    free_bytes: int | None
    total_bytes: int | None
    min_free_bytes: int | None
    below_watermark: bool
    error: str | None


class ModelStatus(TypedDict):
    source: str  # "database" (an active version) or "config" (the embedded default)
    version: str | None
    name: str | None
    path: str
    trained_on_phantom: bool | None
    promoted_at: str | None
    error: str | None


class SchemaStatus(TypedDict):
    current: str | None
    head: str
    ok: bool


class NodeInfo(TypedDict):
    ae_title: str
    database: str
    archive_dir: str


class RecentResult(TypedDict):
    """One of the latest results and how far its delivery got."""

    result_id: int
    job_id: int
    at: str
    study_instance_uid: str
    status: str  # ok | flagged | withheld
    model_version: str | None
    sent: int
    deliveries: int
    outcome: str  # delivered | delivering | delivery failed | withheld | no destinations


class StatusSnapshot(TypedDict):
    """Everything `dicomnode status` shows; JSON-ready (no patient data)."""

    generated_at: str
    node: NodeInfo
    schema: SchemaStatus
    today: TodayCounts
    series: SeriesCounts
    jobs: JobCounts
    running: list[RunningJob]
    failures: Failures
    deliveries: DeliveryCounts
    disk: DiskStatus
    model: ModelStatus
    recent_results: list[RecentResult]
    problems: list[str]


# ----------------------------------------------------------------------------- helpers


def jsonable(value: Any) -> Any:
    """``value`` (dataclasses, lists, dicts, datetimes) as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _age(now: datetime, t: datetime | None) -> float | None:
    return round((now - t).total_seconds(), 1) if t is not None else None


def _check_choice(value: str | None, choices: Sequence[str], what: str) -> None:
    if value is not None and value not in choices:
        raise AdminError(f"unknown {what} {value!r}; one of: {', '.join(choices)}")


def _count_by(s: Session, column: Any, *where: Any) -> dict[str, int]:
    rows = s.execute(select(column, func.count()).where(*where).group_by(column)).all()
    return {"undecided" if k is None else str(k): int(n) for k, n in rows}


def _event(
    s: Session,
    now: datetime,
    kind: str,
    detail: str,
    *,
    job: int | None = None,
    series: int | None = None,
    study: int | None = None,
) -> None:
    s.add(Event(at=now, kind=kind, detail=detail, job_fk=job, series_fk=series, study_fk=study))


def _rowcount(s: Session, stmt: Any) -> int:
    return cast(CursorResult[Any], s.execute(stmt)).rowcount


def safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------------- jobs

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


def _job_rows(s: Session, *where: Any, limit: int | None = None) -> list[JobRow]:
    q = _job_query(*where).order_by(Job.id.desc())
    if limit is not None:
        q = q.limit(limit)
    return [JobRow(*row) for row in s.execute(q).all()]


def _one_job(s: Session, job_id: int) -> JobRow:
    rows = _job_rows(s, Job.id == job_id)
    if not rows:
        raise AdminError(f"no job {job_id}", hint="`dicomnode jobs list` shows the jobs")
    return rows[0]


def list_jobs(engine: Engine, state: str | None = None, limit: int = 50) -> list[JobRow]:
    """The newest jobs (optionally in one state), newest first."""
    _check_choice(state, JOB_STATES, "job state")
    where = [Job.state == state] if state is not None else []
    with session_factory(engine)() as s:
        return _job_rows(s, *where, limit=limit)


def _events(s: Session, *where: Any) -> list[EventRow]:
    q = select(Event.id, Event.at, Event.kind, Event.detail, Event.job_fk, Event.series_fk).where(
        *where
    )
    return [EventRow(*r) for r in s.execute(q.order_by(Event.at, Event.id)).all()]


def _results(s: Session, *where: Any) -> list[ResultRow]:
    rows = s.scalars(select(Result).where(*where).order_by(Result.id)).all()
    return [
        ResultRow(
            id=r.id,
            job_id=r.job_fk,
            status=r.status,
            model_version=r.model_version,
            created_at=r.created_at,
            landmarks_lps=r.landmarks_lps,
            plane=r.plane,
            measurements=r.measurements,
            confidence=r.confidence,
            flags=r.flags,
            summary=r.summary,
            outputs=r.outputs,
        )
        for r in rows
    ]


def _delivery_rows(s: Session, *where: Any, limit: int | None = None) -> list[DeliveryRow]:
    q = (
        select(
            Delivery.id,
            Delivery.result_fk,
            Job.id,
            Study.study_instance_uid,
            Delivery.destination,
            Delivery.kind,
            Delivery.state,
            Delivery.attempts,
            Delivery.next_attempt_at,
            Delivery.last_error,
            Delivery.sop_instance_uid,
            Delivery.created_at,
            Delivery.sent_at,
        )
        .join(Result, Result.id == Delivery.result_fk)
        .join(Job, Job.id == Result.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .where(*where)
        .order_by(Delivery.id.desc())
    )
    if limit is not None:
        q = q.limit(limit)
    return [DeliveryRow(*cast(tuple[Any, ...], r)) for r in s.execute(q).all()]


def job_detail(engine: Engine, job_id: int) -> JobDetail:
    """A job with its results, their deliveries and the job's events."""
    with session_factory(engine)() as s:
        row = _one_job(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        results = _results(s, Result.job_fk == job_id)
        return JobDetail(
            job=row,
            phase_key=job.phase_key,
            phase_value=job.phase_value,
            instance_count=job.instance_count,
            results=results,
            deliveries=_delivery_rows(s, Job.id == job_id),
            events=_events(s, Event.job_fk == job_id),
        )


def retry_job(engine: Engine, job_id: int, now: datetime | None = None) -> JobRow:
    """Queue a failed, cancelled or done job again (attempts 0, reason cleared).

    Records an Event ``job_retried``. A running, queued, held or superseded job, or one
    whose images were purged, is refused with :class:`AdminError`.
    """
    now = now or utcnow()
    with session_factory(engine)() as s, s.begin():
        job = s.get(Job, job_id)
        if job is None:
            raise AdminError(f"no job {job_id}", hint="`dicomnode jobs list` shows the jobs")
        _check_retryable(s, job)
        old_state, old_reason = job.state, job.reason
        n = _rowcount(
            s,
            update(Job)
            .where(Job.id == job_id, Job.state == old_state)
            .values(
                state="queued",
                attempts=0,
                reason=None,
                lease_token=None,
                lease_expires_at=None,
                worker_id=None,
                started_at=None,
                finished_at=None,
                heartbeat_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False),
        )
        if n != 1:
            raise AdminError(f"job {job_id} changed state meanwhile", hint="look again and retry")
        was = f"was {old_state}" + (f": {old_reason}" if old_reason else "")
        _event(
            s,
            now,
            "job_retried",
            f"queued again by the operator ({was})",
            job=job_id,
            series=job.series_fk,
            study=job.study_fk,
        )
    with session_factory(engine)() as s:
        return _one_job(s, job_id)


def _check_retryable(s: Session, job: Job) -> None:
    if job.state == "running":
        lease = f", lease until {_iso(job.lease_expires_at)}" if job.lease_expires_at else ""
        raise AdminError(
            f"job {job.id} is running on worker {job.worker_id or '?'}{lease}: "
            "a running job cannot be retried",
            hint=f"wait for it to finish, or `dicomnode jobs cancel {job.id}` first",
        )
    if job.state == "queued":
        raise AdminError(f"job {job.id} is already queued", hint="a worker will take it")
    if job.state == "held":
        raise AdminError(
            f"job {job.id} is held: its series is still receiving instances",
            hint="it queues itself when the series completes",
        )
    if job.state == "superseded":
        raise AdminError(
            f"job {job.id} was superseded: {job.reason or 'a better series of the study'}",
            hint="the study's better series is processed instead; retry that job",
        )
    if job.state not in RETRYABLE_JOB_STATES:
        raise AdminError(f"job {job.id} is {job.state}: it cannot be retried")
    study = s.get(Study, job.study_fk)
    if study is not None and study.purged_at is not None:
        raise AdminError(
            f"the images of job {job.id}'s study were purged by retention on "
            f"{study.purged_at:%Y-%m-%d}",
            hint="send the series to the node again from PACS",
        )


def cancel_job(
    engine: Engine, job_id: int, reason: str | None = None, now: datetime | None = None
) -> JobRow:
    """Cancel a queued, held or running job; records an Event ``job_cancelled``.

    A running job loses its lease: its worker's final write is fenced off, so no result is
    stored or sent.
    """
    now = now or utcnow()
    why = reason or "cancelled by the operator"
    with session_factory(engine)() as s, s.begin():
        job = s.get(Job, job_id)
        if job is None:
            raise AdminError(f"no job {job_id}", hint="`dicomnode jobs list` shows the jobs")
        if job.state not in CANCELLABLE_JOB_STATES:
            raise AdminError(
                f"job {job_id} is {job.state}: only queued, held or running jobs can be cancelled"
            )
        old_state = job.state
        n = _rowcount(
            s,
            update(Job)
            .where(Job.id == job_id, Job.state == old_state)
            .values(
                state="cancelled",
                reason=why,
                lease_token=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False),
        )
        if n != 1:
            raise AdminError(f"job {job_id} changed state meanwhile", hint="look again and retry")
        _event(
            s,
            now,
            "job_cancelled",
            f"{why} (was {old_state})",
            job=job_id,
            series=job.series_fk,
            study=job.study_fk,
        )
    with session_factory(engine)() as s:
        return _one_job(s, job_id)


# ------------------------------------------------------------------------------- series


def _series_rows(s: Session, *where: Any, limit: int | None = None) -> list[SeriesRow]:
    q = (
        select(Series, Study.study_instance_uid, Study.accession_number)
        .join(Study, Study.id == Series.study_fk)
        .where(*where)
        .order_by(Series.id.desc())
    )
    if limit is not None:
        q = q.limit(limit)
    rows = s.execute(q).all()
    ids = [x.id for x, _, _ in rows]
    latest: dict[int, tuple[int | None, str | None]] = {}
    if ids:
        for job_id, sid, state in s.execute(
            select(Job.id, Job.series_fk, Job.state).where(Job.series_fk.in_(ids)).order_by(Job.id)
        ).all():
            latest[sid] = (job_id, state)
    out = []
    for x, study_uid, accession in rows:
        jid, jstate = latest.get(x.id, (None, None))
        out.append(
            SeriesRow(
                id=x.id,
                series_instance_uid=x.series_instance_uid,
                study_instance_uid=study_uid,
                accession_number=accession,
                modality=x.modality,
                series_number=x.series_number,
                series_description=x.series_description,
                state=x.state,
                decision=x.decision,
                decision_reason=x.decision_reason,
                instance_count=x.instance_count,
                first_received_at=x.first_received_at,
                last_received_at=x.last_received_at,
                completed_at=x.completed_at,
                completion=x.completion,
                latest_job_id=jid,
                latest_job_state=jstate,
            )
        )
    return out


def list_series(
    engine: Engine, state: str | None = None, decision: str | None = None, limit: int = 50
) -> list[SeriesRow]:
    """The newest series (optionally by state and decision), newest first."""
    _check_choice(state, SERIES_STATES, "series state")
    _check_choice(decision, SERIES_DECISIONS, "series decision")
    where = []
    if state is not None:
        where.append(Series.state == state)
    if decision is not None:
        where.append(Series.decision == decision)
    with session_factory(engine)() as s:
        return _series_rows(s, *where, limit=limit)


def series_detail(engine: Engine, ref: int | str) -> SeriesDetail:
    """A series by database id or SeriesInstanceUID, with instances, jobs and events."""
    ref_s = str(ref).strip()
    by_id = ref_s.isdigit() and "." not in ref_s
    cond = Series.id == int(ref_s) if by_id else Series.series_instance_uid == ref_s
    with session_factory(engine)() as s:
        rows = _series_rows(s, cond)
        if not rows:
            raise AdminError(
                f"no series {'with id ' if by_id else ''}{ref_s}",
                hint="`dicomnode series list` shows the series",
            )
        row = rows[0]
        x = s.get(Series, row.id)
        assert x is not None
        study = s.get(Study, x.study_fk)
        inst = s.execute(
            select(
                Instance.transfer_syntax_uid,
                Instance.slice_thickness,
                Instance.rows,
                Instance.columns,
                Instance.size_bytes,
            ).where(Instance.series_fk == x.id)
        ).all()
        stats = InstanceStats(
            count=len(inst),
            bytes=sum(int(i.size_bytes) for i in inst),
            transfer_syntaxes=sorted({i.transfer_syntax_uid for i in inst}),
            slice_thickness_mm=sorted(
                {float(i.slice_thickness) for i in inst if i.slice_thickness}
            ),
            matrix=sorted({f"{i.rows}x{i.columns}" for i in inst if i.rows and i.columns}),
        )
        return SeriesDetail(
            series=row,
            manufacturer=x.manufacturer,
            sop_class_uid=x.sop_class_uid,
            frame_of_reference_uid=x.frame_of_reference_uid,
            study_purged_at=study.purged_at if study is not None else None,
            instances=stats,
            jobs=_job_rows(s, Job.series_fk == x.id),
            events=_events(s, Event.series_fk == x.id),
        )


# --------------------------------------------------------------------------- deliveries


def list_deliveries(
    engine: Engine,
    state: str | None = None,
    destination: str | None = None,
    limit: int = 100,
) -> list[DeliveryRow]:
    """The newest deliveries (optionally by state and destination), newest first."""
    _check_choice(state, DELIVERY_STATES, "delivery state")
    where = []
    if state is not None:
        where.append(Delivery.state == state)
    if destination is not None:
        where.append(Delivery.destination == destination)
    with session_factory(engine)() as s:
        return _delivery_rows(s, *where, limit=limit)


def requeue_deliveries(
    engine: Engine,
    ids: Sequence[int] | None,
    destination: str | None,
    now: datetime | None = None,
) -> int:
    """Send deliveries again: state pending, attempts 0, next attempt now.

    Without ``ids``: every dead (or failed) delivery, of ``destination`` when given. With
    ``ids``: those deliveries, which may also be pending (to retry now); unknown or already
    sent ids are refused with :class:`AdminError` and nothing changes. Records an Event
    ``delivery_requeued`` per delivery; returns how many were requeued.
    """
    now = now or utcnow()
    with session_factory(engine)() as s, s.begin():
        q = (
            select(Delivery, Job.id, Job.series_fk, Job.study_fk)
            .join(Result, Result.id == Delivery.result_fk)
            .join(Job, Job.id == Result.job_fk)
        )
        if ids is not None:
            wanted = sorted(set(ids))
            rows = s.execute(q.where(Delivery.id.in_(wanted)).with_for_update()).all()
            _check_requeue_ids(wanted, [d for d, *_ in rows])
        else:
            rows = s.execute(
                q.where(Delivery.state.in_(("dead", "failed"))).with_for_update()
            ).all()
        if destination is not None:
            rows = [r for r in rows if r[0].destination == destination]
        for d, job_id, series_id, study_id in rows:
            detail = (
                f"delivery {d.id} ({d.kind} to {d.destination}) requeued from {d.state} "
                f"after {d.attempts} attempt(s)"
            )
            if d.last_error:
                detail += f"; last error: {d.last_error}"
            d.state, d.attempts, d.next_attempt_at, d.updated_at = "pending", 0, now, now
            _event(
                s, now, "delivery_requeued", detail, job=job_id, series=series_id, study=study_id
            )
        return len(rows)


def _check_requeue_ids(wanted: list[int], found: Iterable[Delivery]) -> None:
    found = list(found)
    missing = sorted(set(wanted) - {d.id for d in found})
    if missing:
        raise AdminError(
            f"no deliveries with id {', '.join(map(str, missing))}; nothing was requeued",
            hint="`dicomnode deliveries list` shows the deliveries",
        )
    sent = sorted(d.id for d in found if d.state == "sent")
    if sent:
        raise AdminError(
            f"deliveries {', '.join(map(str, sent))} were already sent; nothing was requeued",
            hint="only dead, failed or pending deliveries can be requeued",
        )


# ------------------------------------------------------------------------------ results


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(d: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """A flat dict; nested mappings become ``outer_inner`` keys."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "_"))
        else:
            out[key] = v
    return out


def _landmark_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [n for n in LANDMARK_ORDER if n in names] + sorted(names - set(LANDMARK_ORDER))


def _xyz(value: Any) -> list[Any]:
    if isinstance(value, list | tuple) and len(value) == 3:
        return list(value)
    return [None, None, None]


def export_results_csv(engine: Engine, out: TextIO) -> int:
    """Write one CSV row per study (its latest result) to ``out``; returns the row count.

    Columns: study_instance_uid, accession_number, study_date, series_instance_uid,
    result_id, result_created_at, status, model_version, trained_on_phantom, then
    <landmark>_x/_y/_z (LPS mm), plane_origin_x.._z, plane_normal_x.._z, every measurement
    key present (sorted), confidence_<landmark>, and flags joined by "; ".
    """
    q = (
        select(
            Result,
            Study.id,
            Study.study_instance_uid,
            Study.accession_number,
            Study.study_date,
            Series.series_instance_uid,
            ModelVersion.trained_on_phantom,
        )
        .join(Job, Job.id == Result.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .join(Series, Series.id == Job.series_fk)
        .outerjoin(ModelVersion, ModelVersion.id == Result.model_version_fk)
        .order_by(Study.id, Result.created_at, Result.id)
    )
    with session_factory(engine)() as s:
        latest: dict[int, Any] = {}
        for row in s.execute(q).all():
            latest[row[1]] = row  # ordered: the last one per study wins
    rows = list(latest.values())
    landmarks = _landmark_order(k for r in rows for k in (r[0].landmarks_lps or {}))
    meas_keys = sorted({k for r in rows for k in _flatten(r[0].measurements)})
    conf_keys = _landmark_order({k for r in rows for k in _flatten(r[0].confidence)})
    header = [
        "study_instance_uid",
        "accession_number",
        "study_date",
        "series_instance_uid",
        "result_id",
        "result_created_at",
        "status",
        "model_version",
        "trained_on_phantom",
        *[f"{lm}_{a}" for lm in landmarks for a in "xyz"],
        *[f"plane_{p}_{a}" for p in ("origin", "normal") for a in "xyz"],
        *meas_keys,
        *[f"confidence_{k}" for k in conf_keys],
        "flags",
    ]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    for r, _sid, study_uid, accession, study_date, series_uid, phantom in rows:
        lms = r.landmarks_lps or {}
        plane = r.plane or {}
        meas = _flatten(r.measurements)
        conf = _flatten(r.confidence)
        values: list[Any] = [
            study_uid,
            accession,
            study_date,
            series_uid,
            r.id,
            _iso(r.created_at),
            r.status,
            r.model_version,
            phantom,
            *[c for lm in landmarks for c in _xyz(lms.get(lm))],
            *_xyz(plane.get("origin")),
            *_xyz(plane.get("normal")),
            *[meas.get(k) for k in meas_keys],
            *[conf.get(k) for k in conf_keys],
            "; ".join(str(f) for f in (r.flags or [])),
        ]
        w.writerow([_cell(v) for v in values])
    return len(rows)


# ------------------------------------------------------------------------------- models


def list_models(engine: Engine, cfg: NodeConfig) -> ModelList:
    """Registered model versions (oldest first), the configuration's bundle and the version
    in use (the active one, else the configuration's). Reads bundle.json only."""
    from glipcore.bundle import BundleError, read_manifest

    with session_factory(engine)() as s:
        versions = [
            ModelRow(
                version=m.version,
                name=m.name,
                active=m.active,
                trained_on_phantom=m.trained_on_phantom,
                path=m.path,
                sha256=m.sha256,
                metrics=m.metrics,
                created_at=m.created_at,
                promoted_at=m.promoted_at,
            )
            for m in known_versions(s)
        ]
    version: str | None = None
    error: str | None = None
    try:
        version = read_manifest(cfg.bundle_path)[1]
    except BundleError as exc:
        error = str(exc).splitlines()[0]
    active = next((v.version for v in versions if v.active), None)
    return ModelList(
        versions=versions,
        config_default=ConfigBundle(
            path=str(cfg.bundle_path),
            version=version,
            registered=any(v.version == version for v in versions),
            error=error,
        ),
        in_use=active or version,
    )


# ------------------------------------------------------------------------------- status


def _disk(cfg: NodeConfig) -> DiskStatus:
    path = Path(cfg.archive_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe if probe.exists() else Path.cwd())
    except OSError as exc:
        return DiskStatus(
            path=str(path),
            free_bytes=None,
            total_bytes=None,
            min_free_bytes=None,
            below_watermark=False,
            error=str(exc),
        )
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    watermark = cfg.archive.min_free_bytes(total)
    return DiskStatus(
        path=str(path),
        free_bytes=free,
        total_bytes=total,
        min_free_bytes=watermark,
        below_watermark=free < watermark,
        error=None,
    )


def _model_status(s: Session, cfg: NodeConfig) -> ModelStatus:
    from glipcore.bundle import BundleError, read_manifest

    mv = active_model(s)
    if mv is not None:
        missing = not Path(mv.path).is_dir()
        return ModelStatus(
            source="database",
            version=mv.version,
            name=mv.name,
            path=mv.path,
            trained_on_phantom=mv.trained_on_phantom,
            promoted_at=_iso(mv.promoted_at),
            error=f"bundle folder {mv.path} is missing" if missing else None,
        )
    path = cfg.bundle_path
    try:
        manifest, version = read_manifest(path)
    except BundleError as exc:
        return ModelStatus(
            source="config",
            version=None,
            name=None,
            path=str(path),
            trained_on_phantom=None,
            promoted_at=None,
            error=str(exc).splitlines()[0],
        )
    return ModelStatus(
        source="config",
        version=version,
        name=manifest.name,
        path=str(path),
        trained_on_phantom=manifest.trained_on == "phantom",
        promoted_at=None,
        error=None,
    )


def _today(s: Session, since: datetime) -> TodayCounts:
    outcomes = _count_by(s, AssociationAudit.outcome, AssociationAudit.started_at >= since)
    n_inst, n_bytes = s.execute(
        select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)).where(
            Instance.received_at >= since
        )
    ).one()
    return TodayCounts(
        since=since.isoformat(),
        associations=sum(outcomes.values()),
        associations_by_outcome=outcomes,
        instances=int(n_inst),
        bytes_received=int(n_bytes),
    )


def _series_counts(s: Session) -> SeriesCounts:
    by_state = _count_by(s, Series.state)
    # a NULL decision (complete, not yet decided) counts as "undecided"
    decisions = _count_by(s, Series.decision, Series.state == "complete")
    return SeriesCounts(
        receiving=by_state.get("receiving", 0),
        complete=by_state.get("complete", 0),
        by_decision={d: decisions.get(d, 0) for d in (*SERIES_DECISIONS, "undecided")},
    )


def _jobs(s: Session, now: datetime) -> tuple[JobCounts, list[RunningJob]]:
    by_state = _count_by(s, Job.state)
    oldest = s.execute(select(func.min(Job.created_at)).where(Job.state == "queued")).scalar()
    counts = JobCounts(
        by_state={st: by_state.get(st, 0) for st in JOB_STATES},
        queue_depth=by_state.get("queued", 0),
        oldest_queued_age_s=_age(now, oldest),
    )
    running = []
    for j in _job_rows(s, Job.state == "running"):
        expires = j.lease_expires_at
        running.append(
            RunningJob(
                id=j.id,
                series_instance_uid=j.series_instance_uid,
                worker_id=j.worker_id,
                attempts=j.attempts,
                started_at=_iso(j.started_at),
                age_s=_age(now, j.started_at),
                heartbeat_age_s=_age(now, j.heartbeat_at),
                lease_expires_in_s=-a if (a := _age(now, expires)) is not None else None,
                lease_expired=expires is not None and expires < now,
            )
        )
    return counts, running


def _failures(s: Session, since: datetime) -> Failures:
    failed = s.execute(
        select(Job.id, Series.series_instance_uid, Job.reason, Job.attempts, Job.finished_at)
        .join(Series, Series.id == Job.series_fk)
        .where(Job.state == "failed")
        .order_by(Job.finished_at.desc(), Job.id.desc())
    ).all()
    return Failures(
        total=len(failed),
        today=sum(1 for f in failed if f.finished_at is not None and f.finished_at >= since),
        recent=[
            FailedJob(
                id=f.id,
                series_instance_uid=f.series_instance_uid,
                reason=f.reason,
                attempts=f.attempts,
                finished_at=_iso(f.finished_at),
            )
            for f in failed[:STATUS_LIST_LIMIT]
        ],
    )


def _deliveries(s: Session, now: datetime) -> DeliveryCounts:
    by_state = _count_by(s, Delivery.state)
    due = s.execute(
        select(func.count()).where(
            Delivery.state == "pending",
            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
        )
    ).scalar_one()
    oldest = s.execute(
        select(func.min(Delivery.created_at)).where(Delivery.state == "pending")
    ).scalar()
    per_dest: dict[str, dict[str, int]] = {}
    for dest, state, n in s.execute(
        select(Delivery.destination, Delivery.state, func.count()).group_by(
            Delivery.destination, Delivery.state
        )
    ).all():
        per_dest.setdefault(dest, {})[state] = int(n)
    dead = s.scalars(
        select(Delivery)
        .where(Delivery.state == "dead")
        .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
        .limit(STATUS_LIST_LIMIT)
    ).all()
    return DeliveryCounts(
        by_state={st: by_state.get(st, 0) for st in DELIVERY_STATES},
        pending=by_state.get("pending", 0),
        dead=by_state.get("dead", 0),
        due_now=int(due),
        oldest_pending_age_s=_age(now, oldest),
        by_destination=dict(sorted(per_dest.items())),
        dead_recent=[
            DeadDelivery(
                id=d.id,
                destination=d.destination,
                kind=d.kind,
                attempts=d.attempts,
                last_error=d.last_error,
                updated_at=_iso(d.updated_at),
            )
            for d in dead
        ],
    )


def _problems(snap: StatusSnapshot) -> list[str]:
    out = []
    if not snap["schema"]["ok"]:
        out.append(
            f"database schema at {snap['schema']['current'] or '(empty)'}, node needs "
            f"{snap['schema']['head']}: run `dicomnode db upgrade`"
        )
    disk = snap["disk"]
    if disk["below_watermark"]:
        out.append(
            f"free disk {disk['free_bytes']} B below the watermark {disk['min_free_bytes']} B: "
            "the node refuses new images"
        )
    if disk["error"]:
        out.append(f"free disk unknown: {disk['error']}")
    stale = [r["id"] for r in snap["running"] if r["lease_expired"]]
    if stale:
        out.append(
            f"{len(stale)} running job(s) with an expired lease (worker gone?): "
            + ", ".join(map(str, stale))
        )
    if snap["failures"]["total"]:
        out.append(
            f"{snap['failures']['total']} failed job(s): `dicomnode jobs list --state failed`"
        )
    if snap["deliveries"]["dead"]:
        out.append(
            f"{snap['deliveries']['dead']} dead deliveries: "
            "`dicomnode deliveries list --state dead`"
        )
    if snap["model"]["error"]:
        out.append(f"model: {snap['model']['error']}")
    return out


def _recent_results(s: Session, limit: int = 5) -> list[RecentResult]:
    rows = s.execute(
        select(Result, Study.study_instance_uid)
        .join(Job, Job.id == Result.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .order_by(Result.id.desc())
        .limit(limit)
    ).all()
    out: list[RecentResult] = []
    for res, study_uid in rows:
        states = list(s.scalars(select(Delivery.state).where(Delivery.result_fk == res.id)))
        sent = states.count("sent")
        if res.status == "withheld":
            outcome = "withheld"
        elif not states:
            outcome = "no destinations"
        elif "dead" in states:
            outcome = "delivery failed"
        elif sent == len(states):
            outcome = "delivered"
        else:
            outcome = "delivering"
        out.append(
            RecentResult(
                result_id=res.id,
                job_id=res.job_fk,
                at=res.created_at.isoformat(),
                study_instance_uid=study_uid,
                status=res.status,
                model_version=res.model_version,
                sent=sent,
                deliveries=len(states),
                outcome=outcome,
            )
        )
    return out


def status_snapshot(engine: Engine, cfg: NodeConfig, now: datetime | None = None) -> StatusSnapshot:
    """The node at a glance: today's traffic (since local midnight), series by state, jobs
    by state and queue depth, running jobs with age and worker, failures with reasons,
    deliveries, free disk, the model version in use and a list of problems."""
    now = now or utcnow()
    local = now.astimezone()
    since = local.replace(hour=0, minute=0, second=0, microsecond=0)
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    with session_factory(engine)() as s:
        jobs, running = _jobs(s, now)
        snap = StatusSnapshot(
            generated_at=now.isoformat(),
            node=NodeInfo(
                ae_title=cfg.ae_title,
                database=safe_url(cfg.database_url),
                archive_dir=str(cfg.archive_dir),
            ),
            schema=SchemaStatus(current=current, head=head, ok=current == head),
            today=_today(s, since),
            series=_series_counts(s),
            jobs=jobs,
            running=running,
            failures=_failures(s, since),
            deliveries=_deliveries(s, now),
            disk=_disk(cfg),
            model=_model_status(s, cfg),
            recent_results=_recent_results(s),
            problems=[],
        )
    snap["problems"] = _problems(snap)
    return snap
