"""Planning: one pending :class:`~dicomnode.db.models.Delivery` row per (destination,
object) for a result's output objects."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db.models import Delivery, utcnow
from dicomnode.deliver.states import DeliveryState

log = logging.getLogger(__name__)

KINDS = ("sr", "seg", "keyimage")
"""The object kinds a destination can take (``Destination.kinds``)."""


def _check_objects(objects: Mapping[str, Sequence[tuple[str, Path]]]) -> None:
    unknown = sorted(set(objects) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown object kind(s) {unknown}; expected one of {list(KINDS)}")
    for kind, items in objects.items():
        for uid, path in items:
            if not Path(path).is_absolute():
                raise ValueError(f"{kind} object {uid}: path must be absolute, got {path}")


def plan_deliveries(
    session: Session,
    result_id: int,
    objects: Mapping[str, Sequence[tuple[str, Path]]],
    cfg: NodeConfig,
) -> list[Delivery]:
    """Queue ``objects`` (kind -> [(SOP instance UID, absolute path)]) of result
    ``result_id`` for every destination that takes the kind: one pending row each, due now.

    Idempotent: a row that already exists for (result, destination, SOP instance UID) is
    neither duplicated nor returned. Returns the rows created (flushed, not committed).
    """
    _check_objects(objects)
    existing = {
        (d, u)
        for d, u in session.execute(
            select(Delivery.destination, Delivery.sop_instance_uid).where(
                Delivery.result_fk == result_id
            )
        )
    }
    now = utcnow()
    made: list[Delivery] = []
    for dest in cfg.destinations:
        for kind in dest.kinds:
            for uid, path in objects.get(kind, ()):
                if (dest.name, uid) in existing:
                    continue
                existing.add((dest.name, uid))
                row = Delivery(
                    result_fk=result_id,
                    destination=dest.name,
                    kind=kind,
                    sop_instance_uid=uid,
                    path=str(path),
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                made.append(row)
    session.flush()
    if made:
        log.info("result %d: %d deliveries queued", result_id, len(made))
    return made
