"""Deliveries: list them and requeue dead or chosen ones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Delivery, Job, Result, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.deliver.states import DeliveryState
from dicomnode.operate.admin.common import (
    DELIVERY_STATES,
    check_choice,
    equal_to,
    join_job_study,
)
from dicomnode.operate.admin.errors import AdminError
from dicomnode.process.events import add_event


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


def delivery_rows(s: Session, *where: Any, limit: int | None = None) -> list[DeliveryRow]:
    """The deliveries matching ``where`` (on deliveries, results, jobs, studies), newest first."""
    q = join_job_study(
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
        ).join(Result, Result.id == Delivery.result_fk)
    )
    q = q.where(*where).order_by(Delivery.id.desc())
    if limit is not None:
        q = q.limit(limit)
    return [DeliveryRow(*cast(tuple[Any, ...], r)) for r in s.execute(q).all()]


def list_deliveries(
    engine: Engine,
    state: str | None = None,
    destination: str | None = None,
    limit: int = 100,
) -> list[DeliveryRow]:
    """The newest deliveries (optionally by state and destination), newest first."""
    check_choice(state, DELIVERY_STATES, "delivery state")
    where = equal_to((Delivery.state, state), (Delivery.destination, destination))
    with session_factory(engine)() as s:
        return delivery_rows(s, *where, limit=limit)


def requeue_deliveries(
    engine: Engine,
    ids: Sequence[int] | None,
    destination: str | None,
    now: datetime | None = None,
) -> int:
    """Send deliveries again: state pending, attempts 0, next attempt now.

    Without ``ids``: every dead delivery, of ``destination`` when given. With
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
            rows = s.execute(q.where(Delivery.state == DeliveryState.DEAD).with_for_update()).all()
        if destination is not None:
            rows = [r for r in rows if r[0].destination == destination]
        for d, job_id, series_id, study_id in rows:
            detail = (
                f"delivery {d.id} ({d.kind} to {d.destination}) requeued from {d.state} "
                f"after {d.attempts} attempt(s)"
            )
            if d.last_error:
                detail += f"; last error: {d.last_error}"
            d.state, d.attempts, d.next_attempt_at, d.updated_at = (
                DeliveryState.PENDING,
                0,
                now,
                now,
            )
            add_event(
                s, "delivery_requeued", detail, job=job_id, series=series_id, study=study_id, at=now
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
    sent = sorted(d.id for d in found if d.state == DeliveryState.SENT)
    if sent:
        raise AdminError(
            f"deliveries {', '.join(map(str, sent))} were already sent; nothing was requeued",
            hint="only dead or pending deliveries can be requeued",
        )
