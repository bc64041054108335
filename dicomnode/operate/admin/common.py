"""Helpers shared by the admin modules: record states, JSON values, filters, rows, counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from sqlalchemy import Select, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, Result, Study
from dicomnode.deliver.states import DELIVERY_STATES
from dicomnode.operate.admin.errors import AdminError
from dicomnode.process.jobs import JOB_STATES

SERIES_STATES = ("receiving", "complete")
SERIES_DECISIONS = ("selected", "not_selected", "superseded")

__all__ = [
    "DELIVERY_STATES",
    "JOB_STATES",
    "SERIES_DECISIONS",
    "SERIES_STATES",
    "age_s",
    "check_choice",
    "count_by",
    "equal_to",
    "from_attrs",
    "iso",
    "join_job_study",
    "jsonable",
    "safe_url",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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


def iso(t: datetime | None) -> str | None:
    """``t`` in ISO 8601, None stays None."""
    return t.isoformat() if t is not None else None


def age_s(now: datetime, t: datetime | None) -> float | None:
    """Seconds from ``t`` to ``now`` (0.1 s), None when ``t`` is None."""
    return round((now - t).total_seconds(), 1) if t is not None else None


def check_choice(value: str | None, choices: Sequence[str], what: str) -> None:
    """Refuse a ``value`` that is not one of ``choices`` (None: no choice made)."""
    if value is not None and value not in choices:
        raise AdminError(f"unknown {what} {value!r}; one of: {', '.join(choices)}")


def equal_to(*filters: tuple[Any, object | None]) -> list[Any]:
    """WHERE clauses ``column == value`` for each (column, value) whose value is given."""
    return [column == value for column, value in filters if value is not None]


def count_by(s: Session, column: Any, *where: Any) -> dict[str, int]:
    """Rows per value of ``column`` (a NULL value counts as "undecided")."""
    rows = s.execute(select(column, func.count()).where(*where).group_by(column)).all()
    return {"undecided" if k is None else str(k): int(n) for k, n in rows}


def join_job_study(q: Select[*Ts]) -> Select[*Ts]:
    """``q`` on results joined with their job and the job's study."""
    return q.join(Job, Job.id == Result.job_fk).join(Study, Study.id == Job.study_fk)


def from_attrs(record: Callable[..., T], obj: Any, **given: Any) -> T:
    """A ``record`` (dataclass or TypedDict) from ``obj``'s attributes of the same names;
    ``given`` sets the fields ``obj`` lacks (or transforms)."""
    names = [f.name for f in fields(record)] if is_dataclass(record) else record.__annotations__
    return record(**{n: getattr(obj, n) for n in names if n not in given}, **given)


def safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)
