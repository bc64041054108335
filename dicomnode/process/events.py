"""The event rows: one line of history per state change of a job, series, study or
delivery (what `dicomnode jobs show` and `series show` list)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from dicomnode.db.models import Event, utcnow


def add_event(
    s: Session,
    kind: str,
    detail: str,
    *,
    job: int | None = None,
    series: int | None = None,
    study: int | None = None,
    at: datetime | None = None,
) -> None:
    """Add an event row to the session's transaction (``at`` defaults to now)."""
    s.add(
        Event(
            at=at or utcnow(),
            kind=kind,
            detail=detail,
            job_fk=job,
            series_fk=series,
            study_fk=study,
        )
    )
