"""Status tallies from the database: traffic, series, jobs, failures, deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import AssociationAudit, Delivery, Instance, Job, Series
from dicomnode.deliver.states import DeliveryState
from dicomnode.operate.admin.common import (
    DELIVERY_STATES,
    JOB_STATES,
    SERIES_DECISIONS,
    age_s,
    count_by,
    from_attrs,
    iso,
)
from dicomnode.operate.admin.jobs import job_rows
from dicomnode.operate.admin.status_types import (
    DeadDelivery,
    DeliveryCounts,
    FailedJob,
    Failures,
    JobCounts,
    RunningJob,
    SeriesCounts,
    TodayCounts,
)
from dicomnode.process.jobs import JobState

STATUS_LIST_LIMIT = 10


def today_counts(s: Session, since: datetime) -> TodayCounts:
    """Associations and instances received since ``since``."""
    outcomes = count_by(s, AssociationAudit.outcome, AssociationAudit.started_at >= since)
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


def series_counts(s: Session) -> SeriesCounts:
    """Series by state, and complete ones by decision."""
    by_state = count_by(s, Series.state)
    # a NULL decision (complete, not yet decided) counts as "undecided"
    decisions = count_by(s, Series.decision, Series.state == "complete")
    return SeriesCounts(
        receiving=by_state.get("receiving", 0),
        complete=by_state.get("complete", 0),
        by_decision={d: decisions.get(d, 0) for d in (*SERIES_DECISIONS, "undecided")},
    )


def job_counts(s: Session, now: datetime) -> tuple[JobCounts, list[RunningJob]]:
    """Jobs by state and the queue, and the running jobs with their lease."""
    by_state = count_by(s, Job.state)
    oldest = s.execute(
        select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED)
    ).scalar()
    counts = JobCounts(
        by_state={st: by_state.get(st, 0) for st in JOB_STATES},
        queue_depth=by_state.get(JobState.QUEUED, 0),
        oldest_queued_age_s=age_s(now, oldest),
    )
    running = []
    for j in job_rows(s, Job.state == JobState.RUNNING):
        expires = j.lease_expires_at
        running.append(
            from_attrs(
                RunningJob,
                j,
                started_at=iso(j.started_at),
                age_s=age_s(now, j.started_at),
                heartbeat_age_s=age_s(now, j.heartbeat_at),
                lease_expires_in_s=-a if (a := age_s(now, expires)) is not None else None,
                lease_expired=expires is not None and expires < now,
            )
        )
    return counts, running


def failure_counts(s: Session, since: datetime) -> Failures:
    """Failed jobs: in all, since ``since``, and the latest with their reasons."""
    failed = s.execute(
        select(Job.id, Series.series_instance_uid, Job.reason, Job.attempts, Job.finished_at)
        .join(Series, Series.id == Job.series_fk)
        .where(Job.state == JobState.FAILED)
        .order_by(Job.finished_at.desc(), Job.id.desc())
    ).all()
    return Failures(
        total=len(failed),
        today=sum(1 for f in failed if f.finished_at is not None and f.finished_at >= since),
        recent=[
            from_attrs(FailedJob, f, finished_at=iso(f.finished_at))
            for f in failed[:STATUS_LIST_LIMIT]
        ],
    )


def delivery_counts(s: Session, now: datetime) -> DeliveryCounts:
    """Deliveries by state and destination, what is due, and the latest dead ones."""
    by_state = count_by(s, Delivery.state)
    due = s.execute(
        select(func.count()).where(
            Delivery.state == DeliveryState.PENDING,
            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
        )
    ).scalar_one()
    oldest = s.execute(
        select(func.min(Delivery.created_at)).where(Delivery.state == DeliveryState.PENDING)
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
        .where(Delivery.state == DeliveryState.DEAD)
        .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
        .limit(STATUS_LIST_LIMIT)
    ).all()
    return DeliveryCounts(
        by_state={st: by_state.get(st, 0) for st in DELIVERY_STATES},
        pending=by_state.get(DeliveryState.PENDING, 0),
        dead=by_state.get(DeliveryState.DEAD, 0),
        due_now=int(due),
        oldest_pending_age_s=age_s(now, oldest),
        by_destination=dict(sorted(per_dest.items())),
        dead_recent=[from_attrs(DeadDelivery, d, updated_at=iso(d.updated_at)) for d in dead],
    )
