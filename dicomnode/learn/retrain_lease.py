"""One retrain at a time: an expiring lease row in the database.

The running retrain holds the row ``retrain_leases.name == "retrain"`` and renews it while
it works; a lease that was not renewed in time (a crashed retrain) is taken over by the
next retrain. Taking and renewing are single conditional statements, so two retrains that
start together cannot both win.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomnode.db.models import RetrainLease, utcnow
from dicomnode.db.session import session_factory, session_scope

LEASE_NAME = "retrain"


class RetrainBusyError(RuntimeError):
    """Another retrain holds an unexpired lease."""


@dataclass(frozen=True)
class LeaseInfo:
    """The current lease: who holds it, since when, until when, and its stage."""

    holder: str
    acquired_at: datetime
    expires_at: datetime
    stage: str | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())


def holder_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """A held retrain lease; renew it while working, release it when done."""

    def __init__(self, engine: Engine, token: str, lease_s: float) -> None:
        self.engine = engine
        self.token = token
        self.lease_s = lease_s

    def renew(self, stage: str | None = None, now: datetime | None = None) -> None:
        """Extend the lease by ``lease_s`` (and record the stage); raises
        :class:`RetrainBusyError` when it was lost to another retrain."""
        now = now or utcnow()
        values: dict[str, object] = {"expires_at": now + timedelta(seconds=self.lease_s)}
        if stage is not None:
            values["stage"] = stage[:255]
        with session_scope(session_factory(self.engine)) as s:
            done = s.execute(
                update(RetrainLease)
                .where(RetrainLease.name == LEASE_NAME, RetrainLease.token == self.token)
                .values(**values)
            )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise RetrainBusyError("the retrain lease expired and was taken over")

    def release(self) -> None:
        """Drop the lease (only if still ours)."""
        with session_scope(session_factory(self.engine)) as s:
            s.execute(
                delete(RetrainLease).where(
                    RetrainLease.name == LEASE_NAME, RetrainLease.token == self.token
                )
            )


def acquire(engine: Engine, lease_s: float, *, now: datetime | None = None) -> Lease:
    """Take the retrain lease (free, or expired); :class:`RetrainBusyError` when held."""
    now = now or utcnow()
    token = uuid.uuid4().hex
    expires = now + timedelta(seconds=lease_s)
    values = {"holder": holder_name(), "token": token, "acquired_at": now, "expires_at": expires}
    factory = session_factory(engine)
    try:
        with session_scope(factory) as s:
            s.add(RetrainLease(name=LEASE_NAME, stage="starting", **values))
        return Lease(engine, token, lease_s)
    except IntegrityError:
        pass
    with session_scope(factory) as s:
        taken = s.execute(
            update(RetrainLease)
            .where(RetrainLease.name == LEASE_NAME, RetrainLease.expires_at <= now)
            .values(stage="starting (took over an expired lease)", **values)
        )
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        return Lease(engine, token, lease_s)
    info = current_lease(engine)
    held = f" by {info.holder} since {info.acquired_at:%Y-%m-%d %H:%M:%S} UTC" if info else ""
    raise RetrainBusyError(f"another retrain is running{held}; try again later")


def lease_info(session: Session) -> LeaseInfo | None:
    """The lease row, expired or not, read in ``session``; None when no retrain has one."""
    row = session.scalars(select(RetrainLease).where(RetrainLease.name == LEASE_NAME)).one_or_none()
    if row is None:
        return None
    return LeaseInfo(row.holder, row.acquired_at, row.expires_at, row.stage)


def current_lease(engine: Engine) -> LeaseInfo | None:
    """:func:`lease_info` in a session of its own."""
    with session_factory(engine)() as s:
        return lease_info(s)


__all__ = [
    "LEASE_NAME",
    "Lease",
    "LeaseInfo",
    "RetrainBusyError",
    "acquire",
    "current_lease",
    "holder_name",
    "lease_info",
]
