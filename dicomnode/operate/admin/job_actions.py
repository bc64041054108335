"""Job actions: retry a finished job, cancel a pending or running one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.operate.admin.common import iso
from dicomnode.operate.admin.errors import AdminError
from dicomnode.operate.admin.jobs import JobRow, no_job, one_job
from dicomnode.process import jobs as lifecycle
from dicomnode.process.jobs import CANCELLABLE_JOB_STATES, RETRYABLE_JOB_STATES, JobState

__all__ = ["CANCELLABLE_JOB_STATES", "RETRYABLE_JOB_STATES", "cancel_job", "retry_job"]


def _existing_job(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise no_job(job_id)
    return job


def _changed_meanwhile(job_id: int) -> AdminError:
    return AdminError(f"job {job_id} changed state meanwhile", hint="look again and retry")


def retry_job(engine: Engine, job_id: int, now: datetime | None = None) -> JobRow:
    """Queue a failed, cancelled or done job again (attempts 0, reason cleared).

    Records an Event ``job_retried``. A running, queued, held or superseded job, or one
    whose images were purged, is refused with :class:`AdminError`.
    """
    now = now or utcnow()
    with session_factory(engine)() as s, s.begin():
        job = _existing_job(s, job_id)
        _check_retryable(s, job)
        if not lifecycle.retry_job(s, job_id, job.state, job.reason, now):
            raise _changed_meanwhile(job_id)
    with session_factory(engine)() as s:
        return one_job(s, job_id)


def _check_retryable(s: Session, job: Job) -> None:
    if job.state == JobState.RUNNING:
        lease = f", lease until {iso(job.lease_expires_at)}" if job.lease_expires_at else ""
        raise AdminError(
            f"job {job.id} is running on worker {job.worker_id or '?'}{lease}: "
            "a running job cannot be retried",
            hint=f"wait for it to finish, or `dicomnode jobs cancel {job.id}` first",
        )
    if job.state == JobState.QUEUED:
        raise AdminError(f"job {job.id} is already queued", hint="a worker will take it")
    if job.state == JobState.HELD:
        raise AdminError(
            f"job {job.id} is held: its series is still receiving instances",
            hint="it queues itself when the series completes",
        )
    if job.state == JobState.SUPERSEDED:
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
        job = _existing_job(s, job_id)
        if job.state not in CANCELLABLE_JOB_STATES:
            raise AdminError(
                f"job {job_id} is {job.state}: only queued, held or running jobs can be cancelled"
            )
        was = job.state
        if not lifecycle.cancel_job(
            s, job_id, why, now, expected=(was,), detail=f"{why} (was {was})"
        ):
            raise _changed_meanwhile(job_id)
    with session_factory(engine)() as s:
        return one_job(s, job_id)
