"""The job lifecycle: states, every transition with its guard and its event row, and the
lease that fences a claimed job's writes.

::

    (new) --queue_job--> queued --hold_job--> held --release_job--> queued   assembler
    queued|held --supersede_job--> superseded                                 assembler
    queued|held|running --cancel_job--> cancelled                    assembler, operator
    queued, or running with an expired lease --claim_job--> running           worker
    running --finish_job--> done | --fail_job--> failed | --requeue_attempt--> queued
    running, lease expired on the last attempt --fail_exhausted--> failed     worker
    failed|cancelled|done --retry_job--> queued                               operator

Every transition is one UPDATE guarded by the job's current state (and, once claimed, by
its lease token) with its event row, in the caller's transaction; it says whether the
guard held. A worker claims one job with a single UPDATE ... RETURNING whose candidate
subquery is ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers). The claim
hands out a fresh lease token; every later write of the job (heartbeat, completion,
failure) is conditional on that token, so a worker whose lease expired and was reclaimed by
another cannot write results any more (fencing).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.process.events import add_event

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """A job row's ``state`` column."""

    QUEUED = "queued"
    HELD = "held"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
"""The state names, in lifecycle order (for CLI choices and metrics labels)."""
UNCLAIMED: tuple[JobState, ...] = (JobState.QUEUED, JobState.HELD)
"""No worker took the job yet: the assembler may still hold, release or supersede it."""
CLAIMED: tuple[JobState, ...] = (JobState.RUNNING, JobState.DONE, JobState.FAILED)
"""A worker took the job: it runs (or ran) whatever the assembler decides later."""
RETRYABLE_JOB_STATES: tuple[JobState, ...] = (JobState.FAILED, JobState.CANCELLED, JobState.DONE)
CANCELLABLE_JOB_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.HELD, JobState.RUNNING)


def _transition(
    s: Session,
    job_id: int,
    guard: ColumnElement[bool],
    values: dict[str, Any],
    event: tuple[str, str] | None,
    at: datetime | None,
) -> bool:
    """Update job ``job_id`` iff ``guard`` holds and record ``event`` (kind, detail)."""
    row = s.execute(
        update(Job)
        .where(Job.id == job_id, guard)
        .values(**values)
        .returning(Job.series_fk, Job.study_fk)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return False
    if event is not None:
        add_event(s, *event, job=job_id, series=row[0], study=row[1], at=at)
    return True


# --- before a worker takes it: the assembler's and the operator's transitions -----------


def queue_job(
    s: Session, *, series: int, study: int, reason: str, now: datetime, **fields: Any
) -> int:
    """A new queued job for a selected series (``fields``: its phase); returns its id."""
    job = Job(
        series_fk=series,
        study_fk=study,
        state=JobState.QUEUED,
        reason=reason,
        created_at=now,
        updated_at=now,
        **fields,
    )
    s.add(job)
    s.flush()
    add_event(s, "job_queued", reason, job=job.id, series=series, study=study, at=now)
    return job.id


def hold_job(s: Session, job_id: int, now: datetime) -> bool:
    """queued -> held: its series receives late instances again."""
    return _transition(
        s,
        job_id,
        Job.state == JobState.QUEUED,
        {"state": JobState.HELD, "updated_at": now, "reason": "held: late instances arriving"},
        ("job_held", "late instances arriving; waiting for quiet"),
        now,
    )


def release_job(
    s: Session, job_id: int, reason: str, now: datetime, *, was_held: bool, **fields: Any
) -> bool:
    """queued|held -> queued with the series' new selection (``fields``: its phase); a held
    job's release is an event."""
    return _transition(
        s,
        job_id,
        Job.state.in_(UNCLAIMED),
        {"state": JobState.QUEUED, "updated_at": now, "reason": reason, **fields},
        ("job_requeued", "series quiet again; job released") if was_held else None,
        now,
    )


def supersede_job(s: Session, job_id: int, by_series_uid: str, now: datetime) -> bool:
    """queued|held -> superseded by a better series of the study."""
    why = f"superseded by series {by_series_uid}"
    return _transition(
        s,
        job_id,
        Job.state.in_(UNCLAIMED),
        {"state": JobState.SUPERSEDED, "finished_at": now, "updated_at": now, "reason": why},
        ("job_superseded", why),
        now,
    )


def cancel_job(
    s: Session,
    job_id: int,
    reason: str,
    now: datetime,
    *,
    expected: Sequence[str] = CANCELLABLE_JOB_STATES,
    detail: str | None = None,
) -> bool:
    """queued|held|running (those of ``expected``) -> cancelled. The lease is dropped, so a
    running job's worker is fenced off: it stores and sends nothing."""
    return _transition(
        s,
        job_id,
        and_(Job.state.in_(expected), Job.state.in_(CANCELLABLE_JOB_STATES)),
        {
            "state": JobState.CANCELLED,
            "reason": reason,
            "lease_token": None,
            "lease_expires_at": None,
            "finished_at": now,
            "updated_at": now,
        },
        ("job_cancelled", detail or reason),
        now,
    )


def retry_job(
    s: Session, job_id: int, from_state: str, old_reason: str | None, now: datetime
) -> bool:
    """failed|cancelled|done -> queued, attempts 0 (guard: still ``from_state``)."""
    if from_state not in RETRYABLE_JOB_STATES:
        raise ValueError(f"a {from_state} job cannot be retried")
    was = f"was {from_state}" + (f": {old_reason}" if old_reason else "")
    return _transition(
        s,
        job_id,
        Job.state == from_state,
        {
            "state": JobState.QUEUED,
            "attempts": 0,
            "reason": None,
            "lease_token": None,
            "lease_expires_at": None,
            "worker_id": None,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "updated_at": now,
        },
        ("job_retried", f"queued again by the operator ({was})"),
        now,
    )


# --- the lease: a worker's claim and its fenced writes -------------------------------------


class LeaseLostError(RuntimeError):
    """The job's lease token no longer matches: another worker owns the job now."""


@dataclass(frozen=True)
class Claim:
    """A job this worker holds, with the token that fences its writes."""

    job_id: int
    token: str
    attempt: int
    series_fk: int
    study_fk: int


def _claimable(now: datetime, max_attempts: int) -> ColumnElement[bool]:
    expired = and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
    return and_(or_(Job.state == JobState.QUEUED, expired), Job.attempts < max_attempts)


def claim_job(
    engine: Engine,
    worker_id: str,
    *,
    lease_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> Claim | None:
    """queued (or running with an expired lease) -> running: claim the oldest such job;
    None when there is none."""
    now = now or utcnow()
    token = uuid.uuid4().hex
    cond = _claimable(now, max_attempts)
    candidate = select(Job.id).where(cond).order_by(Job.created_at, Job.id).limit(1)
    if engine.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), cond)
        .values(
            state=JobState.RUNNING,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            worker_id=worker_id[:128],
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
        )
        .returning(Job.id, Job.attempts, Job.series_fk, Job.study_fk)
        .execution_options(synchronize_session=False)
    )
    with session_factory(engine)() as s, s.begin():
        row = s.execute(stmt).first()
        if row is None:
            return None
        job_id, attempt, series_fk, study_fk = row
        add_event(
            s,
            "job_claimed",
            f"attempt {attempt} by {worker_id}",
            job=job_id,
            series=series_fk,
            study=study_fk,
        )
    log.info("job %d claimed (attempt %d)", job_id, attempt)
    return Claim(job_id, token, attempt, series_fk, study_fk)


def fail_exhausted(engine: Engine, max_attempts: int, now: datetime | None = None) -> int:
    """running -> failed for the jobs whose lease expired after their last allowed attempt;
    returns how many."""
    now = now or utcnow()
    reason = f"worker lost (lease expired) on each of {max_attempts} attempts"
    with session_factory(engine)() as s, s.begin():
        rows = s.execute(
            update(Job)
            .where(
                Job.state == JobState.RUNNING,
                Job.lease_expires_at < now,
                Job.attempts >= max_attempts,
            )
            .values(
                state=JobState.FAILED,
                reason=reason,
                finished_at=now,
                updated_at=now,
                lease_token=None,
            )
            .returning(Job.id, Job.series_fk, Job.study_fk)
            .execution_options(synchronize_session=False)
        ).all()
        for job_id, series_fk, study_fk in rows:
            add_event(s, "job_failed", reason, job=job_id, series=series_fk, study=study_fk)
    return len(rows)


def latest_study_job(s: Session, study_uid: str) -> Job | None:
    """The newest job of the study with this StudyInstanceUID (None: none yet)."""
    return s.scalars(
        select(Job)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid)
        .order_by(Job.id.desc())
    ).first()


def _held(claim: Claim) -> ColumnElement[bool]:
    """The job row as long as ``claim`` still holds its lease."""
    return and_(
        Job.id == claim.job_id, Job.lease_token == claim.token, Job.state == JobState.RUNNING
    )


def renew(engine: Engine, claim: Claim, lease_s: float, now: datetime | None = None) -> None:
    """Extend the lease; raises :class:`LeaseLostError` when the token no longer holds."""
    now = now or utcnow()
    with session_factory(engine)() as s, s.begin():
        row = s.execute(
            update(Job)
            .where(_held(claim))
            .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).first()
    if row is None:
        raise LeaseLostError(f"job {claim.job_id}: lease lost (another worker holds it now)")


def fence(s: Session, claim: Claim, **values: object) -> None:
    """Inside a transaction: set the job's final fields iff we still hold the lease (the
    lease is released); raises :class:`LeaseLostError` otherwise."""
    now = utcnow()
    final: dict[str, object] = {
        "lease_token": None,
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
    }
    final.update(values)
    row = s.execute(
        update(Job)
        .where(_held(claim))
        .values(**final)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise LeaseLostError(f"job {claim.job_id}: lease lost before completion; results discarded")


def claim_event(s: Session, claim: Claim, kind: str, detail: str) -> None:
    """An event row about the claimed job."""
    add_event(s, kind, detail, job=claim.job_id, series=claim.series_fk, study=claim.study_fk)


def finish_job(
    s: Session, claim: Claim, summary: str, detail: str, model_version_fk: int | None
) -> None:
    """running -> done (fenced): the result is stored in the same transaction."""
    fence(s, claim, state=JobState.DONE, reason=summary, model_version_fk=model_version_fk)
    claim_event(s, claim, "job_done", detail)


def fail_job(s: Session, claim: Claim, reason: str) -> None:
    """running -> failed (fenced): for good, until an operator retries it."""
    fence(s, claim, state=JobState.FAILED, reason=reason)
    claim_event(s, claim, "job_failed", reason)


def requeue_attempt(s: Session, claim: Claim, reason: str) -> None:
    """running -> queued (fenced): the attempt failed, another one may succeed."""
    fence(s, claim, state=JobState.QUEUED, reason=reason, finished_at=None)
    claim_event(s, claim, "job_retry", reason)


class Heartbeat:
    """Renews a claim's lease every ``lease_s / 3`` seconds in a daemon thread.

    ``lost`` is set when renewal finds the lease taken; the job's work then stops writing.
    """

    def __init__(self, engine: Engine, claim: Claim, lease_s: float) -> None:
        self.engine = engine
        self.claim = claim
        self.lease_s = lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{claim.job_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                renew(self.engine, self.claim, self.lease_s)
            except LeaseLostError:
                log.warning("job %d: lease lost", self.claim.job_id)
                self.lost.set()
                return
            except Exception:  # a database hiccup: the next beat tries again
                log.exception("job %d: heartbeat failed", self.claim.job_id)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the heartbeat found the lease taken."""
        if self.lost.is_set():
            raise LeaseLostError(f"job {self.claim.job_id}: lease lost")
