"""Job actions: retry a finished job, cancel a pending or running one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.operate.admin.common import _event, _iso, _rowcount
from dicomnode.operate.admin.errors import AdminError
from dicomnode.operate.admin.jobs import JobRow, _one_job

RETRYABLE_JOB_STATES = ("failed", "cancelled", "done")
CANCELLABLE_JOB_STATES = ("queued", "held", "running")


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
