"""Job leases: atomic claim, heartbeat and fenced completion.

A worker claims one job with a single UPDATE ... RETURNING whose candidate subquery is
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers, so the statement is
atomic there as it is). The claim hands out a fresh lease token; every later write of the
job (heartbeat, completion, failure) is conditional on that token, so a worker whose lease
expired and was reclaimed by another cannot write results any more (fencing).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.db.models import Event, Job, utcnow
from dicomnode.db.session import session_factory

log = logging.getLogger(__name__)


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


def _claimable(now: datetime, max_attempts: int) -> object:
    expired = and_(Job.state == "running", Job.lease_expires_at < now)
    return and_(
        or_(Job.state == "queued", expired),
        Job.attempts < max_attempts,
    )


def claim_job(
    engine: Engine,
    worker_id: str,
    *,
    lease_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the oldest queued job (or one whose lease expired); None when there is none."""
    now = now or utcnow()
    token = uuid.uuid4().hex
    cond = _claimable(now, max_attempts)
    candidate = select(Job.id).where(cond).order_by(Job.created_at, Job.id).limit(1)  # type: ignore[arg-type]
    if engine.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), cond)  # type: ignore[arg-type]
        .values(
            state="running",
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
        _event(s, "job_claimed", f"attempt {attempt} by {worker_id}", job_id, series_fk, study_fk)
    log.info("job %d claimed (attempt %d)", job_id, attempt)
    return Claim(job_id, token, attempt, series_fk, study_fk)


def fail_exhausted(engine: Engine, max_attempts: int, now: datetime | None = None) -> int:
    """Fail the jobs whose lease expired after their last allowed attempt."""
    now = now or utcnow()
    reason = f"worker lost (lease expired) on each of {max_attempts} attempts"
    with session_factory(engine)() as s, s.begin():
        rows = s.execute(
            update(Job)
            .where(
                Job.state == "running",
                Job.lease_expires_at < now,
                Job.attempts >= max_attempts,
            )
            .values(
                state="failed", reason=reason, finished_at=now, updated_at=now, lease_token=None
            )
            .returning(Job.id, Job.series_fk, Job.study_fk)
            .execution_options(synchronize_session=False)
        ).all()
        for job_id, series_fk, study_fk in rows:
            _event(s, "job_failed", reason, job_id, series_fk, study_fk)
    return len(rows)


def _held(claim: Claim) -> ColumnElement[bool]:
    """The job row as long as ``claim`` still holds its lease."""
    return and_(Job.id == claim.job_id, Job.lease_token == claim.token, Job.state == "running")


def renew(engine: Engine, claim: Claim, lease_s: float, now: datetime | None = None) -> None:
    """Extend the lease; raises :class:`LeaseLostError` when the token no longer holds."""
    now = now or utcnow()
    with session_factory(engine)() as s, s.begin():
        result = s.execute(
            update(Job)
            .where(_held(claim))
            .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        n = result.rowcount  # type: ignore[attr-defined]
    if n != 1:
        raise LeaseLostError(f"job {claim.job_id}: lease lost (another worker holds it now)")


def fence(s: Session, claim: Claim, **values: object) -> None:
    """Inside a transaction: set the job's final fields iff we still hold the lease."""
    now = utcnow()
    final: dict[str, object] = {
        "lease_token": None,
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
    }
    final.update(values)
    result = s.execute(
        update(Job).where(_held(claim)).values(**final).execution_options(synchronize_session=False)
    )
    n = result.rowcount  # type: ignore[attr-defined]
    if n != 1:
        raise LeaseLostError(f"job {claim.job_id}: lease lost before completion; results discarded")


def _event(
    s: Session, kind: str, detail: str, job_id: int, series_fk: int | None, study_fk: int | None
) -> None:
    s.add(
        Event(
            at=utcnow(),
            kind=kind,
            detail=detail,
            job_fk=job_id,
            series_fk=series_fk,
            study_fk=study_fk,
        )
    )


def add_event(s: Session, claim: Claim, kind: str, detail: str) -> None:
    """Record a state change of the claimed job."""
    _event(s, kind, detail, claim.job_id, claim.series_fk, claim.study_fk)


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
