"""Where a job's result stands in time: the job's own timestamp (every date and time in
its objects) and the earlier result of the same series that it replaces."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select

from dicomnode.db.models import Job, Result
from dicomnode.db.session import session_factory
from dicomnode.process.outputs.context import PriorResult


def job_created_at(engine: Engine, job_id: int) -> datetime:
    """When the job was queued (UTC, timezone-aware)."""
    with session_factory(engine)() as s:
        return s.scalars(select(Job.created_at).where(Job.id == job_id)).one()


def prior_result(engine: Engine, series_fk: int, sr_uid: str) -> PriorResult | None:
    """The latest delivered-or-flagged result of the series whose SR is another object
    than ``sr_uid`` (withheld results never reached a PACS, so they are passed over)."""
    with session_factory(engine)() as s:
        rows = s.execute(
            select(Result.outputs, Job.id, Job.created_at, Job.instance_count)
            .join(Job, Result.job_fk == Job.id)
            .where(Job.series_fk == series_fk, Result.status != "withheld")
            .order_by(Result.id.desc())
        ).all()
    for outputs, job_id, created, count in rows:
        srs = (outputs or {}).get("sr") or []
        if not srs or srs[0]["sop_instance_uid"] == sr_uid:
            continue
        return PriorResult(
            sr_sop_instance_uid=srs[0]["sop_instance_uid"],
            sr_series_instance_uid=srs[0]["series_instance_uid"],
            description=f"job {job_id} of {created:%Y-%m-%d %H:%M} UTC, {count} instances",
        )
    return None


__all__ = ["job_created_at", "prior_result"]
