"""Status tallies from the database: traffic, series, jobs, failures, deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import AssociationAudit, Delivery, Instance, Job, Series
from dicomnode.operate.admin.common import (
    DELIVERY_STATES,
    JOB_STATES,
    SERIES_DECISIONS,
    _age,
    _count_by,
    _iso,
)
from dicomnode.operate.admin.jobs import _job_rows
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

STATUS_LIST_LIMIT = 10


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
