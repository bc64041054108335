"""Helpers shared by the admin modules: record states, JSON values, events, counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dicomnode.db.models import Event
from dicomnode.operate.admin.errors import AdminError

JOB_STATES = ("queued", "held", "running", "done", "failed", "superseded", "cancelled")
SERIES_STATES = ("receiving", "complete")
SERIES_DECISIONS = ("selected", "not_selected", "superseded")
DELIVERY_STATES = ("pending", "sent", "failed", "dead")


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
