"""Series queries: the series list and one series with its instances, jobs and events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Event, Instance, Job, Series, Study
from dicomnode.db.session import session_factory
from dicomnode.operate.admin.common import (
    SERIES_DECISIONS,
    SERIES_STATES,
    check_choice,
    equal_to,
    from_attrs,
)
from dicomnode.operate.admin.errors import AdminError
from dicomnode.operate.admin.jobs import EventRow, JobRow, event_rows, job_rows


@dataclass(frozen=True)
class SeriesRow:
    """A series, its completeness/selection state and its latest job."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    accession_number: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    state: str
    decision: str | None
    decision_reason: str | None
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    completion: str | None
    latest_job_id: int | None
    latest_job_state: str | None


@dataclass(frozen=True)
class InstanceStats:
    """What the archived instances of a series look like."""

    count: int
    bytes: int
    transfer_syntaxes: list[str]
    slice_thickness_mm: list[float]
    matrix: list[str]


@dataclass(frozen=True)
class SeriesDetail:
    """A series with its instances' facts, jobs and history."""

    series: SeriesRow
    manufacturer: str | None
    sop_class_uid: str | None
    frame_of_reference_uid: str | None
    study_purged_at: datetime | None
    instances: InstanceStats
    jobs: list[JobRow]
    events: list[EventRow]


def _series_rows(s: Session, *where: Any, limit: int | None = None) -> list[SeriesRow]:
    q = (
        select(Series, Study.study_instance_uid, Study.accession_number)
        .join(Study, Study.id == Series.study_fk)
        .where(*where)
        .order_by(Series.id.desc())
    )
    if limit is not None:
        q = q.limit(limit)
    rows = s.execute(q).all()
    ids = [x.id for x, _, _ in rows]
    latest: dict[int, tuple[int | None, str | None]] = {}
    if ids:
        for job_id, sid, state in s.execute(
            select(Job.id, Job.series_fk, Job.state).where(Job.series_fk.in_(ids)).order_by(Job.id)
        ).all():
            latest[sid] = (job_id, state)
    out = []
    for x, study_uid, accession in rows:
        jid, jstate = latest.get(x.id, (None, None))
        out.append(
            from_attrs(
                SeriesRow,
                x,
                study_instance_uid=study_uid,
                accession_number=accession,
                latest_job_id=jid,
                latest_job_state=jstate,
            )
        )
    return out


def list_series(
    engine: Engine, state: str | None = None, decision: str | None = None, limit: int = 50
) -> list[SeriesRow]:
    """The newest series (optionally by state and decision), newest first."""
    check_choice(state, SERIES_STATES, "series state")
    check_choice(decision, SERIES_DECISIONS, "series decision")
    where = equal_to((Series.state, state), (Series.decision, decision))
    with session_factory(engine)() as s:
        return _series_rows(s, *where, limit=limit)


def series_detail(engine: Engine, ref: int | str) -> SeriesDetail:
    """A series by database id or SeriesInstanceUID, with instances, jobs and events."""
    ref_s = str(ref).strip()
    by_id = ref_s.isdigit() and "." not in ref_s
    cond = Series.id == int(ref_s) if by_id else Series.series_instance_uid == ref_s
    with session_factory(engine)() as s:
        rows = _series_rows(s, cond)
        x = s.get(Series, rows[0].id) if rows else None
        if x is None:
            raise AdminError(
                f"no series {'with id ' if by_id else ''}{ref_s}",
                hint="`dicomnode series list` shows the series",
            )
        row = rows[0]
        study = s.get(Study, x.study_fk)
        inst = s.execute(
            select(
                Instance.transfer_syntax_uid,
                Instance.slice_thickness,
                Instance.rows,
                Instance.columns,
                Instance.size_bytes,
            ).where(Instance.series_fk == x.id)
        ).all()
        stats = InstanceStats(
            count=len(inst),
            bytes=sum(int(i.size_bytes) for i in inst),
            transfer_syntaxes=sorted({i.transfer_syntax_uid for i in inst}),
            slice_thickness_mm=sorted(
                {float(i.slice_thickness) for i in inst if i.slice_thickness}
            ),
            matrix=sorted({f"{i.rows}x{i.columns}" for i in inst if i.rows and i.columns}),
        )
        return SeriesDetail(
            series=row,
            manufacturer=x.manufacturer,
            sop_class_uid=x.sop_class_uid,
            frame_of_reference_uid=x.frame_of_reference_uid,
            study_purged_at=study.purged_at if study is not None else None,
            instances=stats,
            jobs=job_rows(s, Job.series_fk == x.id),
            events=event_rows(s, Event.series_fk == x.id),
        )
