"""Retention: delete the archived images of studies whose results were delivered long ago.

A study is purged when

* it has at least one job in state ``done`` and none that may still need its images
  (every job is done, superseded or cancelled; a failed job can be retried);
* it has at least one delivery, every delivery of its results is ``sent``, and the last
  was sent more than ``retention.delivered_days`` ago;
* no series of it is still receiving;
* it has no annotation (retraining needs its images; this also keeps every study of
  retraining's held-out set, which is chosen among the annotated studies by
  :func:`dicomnode.learn.holdout.split_holdout`, and annotations are never deleted);
* it was not purged yet, or instances arrived after its purge.

Its instance files and the folders they leave empty are deleted; every database row stays,
``Study.purged_at`` is set and an event ``study_purged`` records what was freed. The disk
watermark (``archive.min_free``) stays the last line of defence against a full disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from dicomnode.config import RetentionConfig
from dicomnode.db.models import (
    Annotation,
    Delivery,
    Event,
    Instance,
    Job,
    Result,
    Series,
    Study,
    utcnow,
)
from dicomnode.db.session import session_factory
from dicomnode.deliver.states import DeliveryState
from dicomnode.process.jobs import JobState
from dicomnode.receive.archive import INCOMING

log = logging.getLogger(__name__)

SETTLED_JOB_STATES = (JobState.DONE, JobState.SUPERSEDED, JobState.CANCELLED)
"""Job states that no longer need the study's images."""
JOB_ID = "retention-purge"


@dataclass
class PurgedStudy:
    """One study the purge removed (or, in a dry run, would remove)."""

    study_id: int
    files: int = 0
    bytes: int = 0
    missing: int = 0  # instance rows whose file was already gone


@dataclass
class PurgeReport:
    """What one purge did. ``failed``: study id -> why it was left as it was."""

    dry_run: bool
    cutoff: datetime
    studies: list[PurgedStudy] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def files(self) -> int:
        return sum(s.files for s in self.studies)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.studies)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        verb = "would purge" if self.dry_run else "purged"
        text = f"{verb} {len(self.studies)} studies: {self.files} files, {self.bytes} bytes"
        return text + (f"; {len(self.failed)} failed" if self.failed else "")


def _eligible(cutoff: datetime) -> ColumnElement[bool]:
    """The purge conditions on ``Study`` (see the module docstring)."""
    study_delivery = (
        select(Delivery.id)
        .join(Result, Delivery.result_fk == Result.id)
        .join(Job, Result.job_fk == Job.id)
        .where(Job.study_fk == Study.id)
    )
    last_sent = (
        select(func.max(Delivery.sent_at))
        .join(Result, Delivery.result_fk == Result.id)
        .join(Job, Result.job_fk == Job.id)
        .where(Job.study_fk == Study.id)
        .scalar_subquery()
    )
    late_instance = (
        select(Instance.id)
        .join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == Study.id, Instance.received_at > Study.purged_at)
    )
    return and_(
        or_(Study.purged_at.is_(None), exists(late_instance)),
        exists().where(Job.study_fk == Study.id, Job.state == JobState.DONE),
        ~exists().where(Job.study_fk == Study.id, Job.state.not_in(SETTLED_JOB_STATES)),
        exists(study_delivery),
        ~exists(
            study_delivery.where(
                or_(Delivery.state != DeliveryState.SENT, Delivery.sent_at.is_(None))
            )
        ),
        last_sent < cutoff,
        ~exists().where(Series.study_fk == Study.id, Series.state == "receiving"),
        ~exists().where(Annotation.study_fk == Study.id),
    )


def candidates(engine: Engine, cutoff: datetime) -> list[int]:
    """Ids of the studies the purge would take at ``cutoff`` (oldest first)."""
    with session_factory(engine)() as s:
        return list(s.scalars(select(Study.id).where(_eligible(cutoff)).order_by(Study.id)))


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it stays inside the archive (and outside its incoming folder)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or path.is_relative_to(root / INCOMING) or path == root:
        return None
    return path


def _remove_empty_parents(path: Path, root: Path) -> None:
    """Remove the folders above ``path`` that are now empty, up to (not including) root."""
    parent = path.parent
    while parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        parent = parent.parent


def _files(s: Session, study_id: int) -> list[str]:
    return list(
        s.scalars(
            select(Instance.path)
            .join(Series, Instance.series_fk == Series.id)
            .where(Series.study_fk == study_id)
            .order_by(Instance.id)
        )
    )


def _delete(root: Path, relpaths: list[str], study: PurgedStudy, dry_run: bool) -> None:
    """Delete (or, dry, measure) the files; raises OSError on a file it cannot delete."""
    for rel in relpaths:
        path = _inside(root, rel)
        if path is None:
            raise OSError(f"instance path {rel!r} points outside the archive")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            study.missing += 1
            continue
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                study.missing += 1
                continue
            _remove_empty_parents(path, root)
        study.files += 1
        study.bytes += size


def _purge_one(
    engine: Engine, root: Path, study_id: int, cutoff: datetime, now: datetime, dry_run: bool
) -> PurgedStudy | None:
    """Purge one study in one transaction; None when it no longer qualifies."""
    study = PurgedStudy(study_id)
    with session_factory(engine)() as s:  # closing without commit rolls back
        # Lock the study row and check again: a late instance or a new job may have
        # arrived since the candidates were listed.
        still = s.scalar(
            select(Study.id)
            .where(Study.id == study_id, _eligible(cutoff))
            .with_for_update(of=Study)
        )
        if still is None:
            return None
        _delete(root, _files(s, study_id), study, dry_run)
        if dry_run:
            return study
        s.execute(update(Study).where(Study.id == study_id).values(purged_at=now))
        missing = f" ({study.missing} already missing)" if study.missing else ""
        s.add(
            Event(
                at=now,
                kind="study_purged",
                study_fk=study_id,
                detail=f"{study.files} files, {study.bytes} bytes{missing}",
            )
        )
        s.commit()
    return study


def purge(
    engine: Engine,
    archive_root: Path,
    cfg: RetentionConfig,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Delete the archived instances of every study that qualifies (module docstring).

    Files go first, then the study's row is stamped in the same transaction: a crash in
    between leaves the study a candidate, and the next run finishes it. A study whose
    files cannot all be deleted is left unstamped and reported in ``failed``; the others
    go on. ``dry_run`` deletes and records nothing and reports what would go.
    """
    now = now if now is not None else utcnow()
    if now.tzinfo is None:
        raise ValueError("purge needs a timezone-aware time (UTC)")
    now = now.astimezone(UTC)
    cutoff = now - timedelta(days=cfg.delivered_days)
    root = Path(archive_root).resolve()
    report = PurgeReport(dry_run=dry_run, cutoff=cutoff)
    for study_id in candidates(engine, cutoff):
        try:
            done = _purge_one(engine, root, study_id, cutoff, now, dry_run)
        except OSError as exc:
            report.failed[study_id] = str(exc)
            log.error("retention: study %d not purged: %s", study_id, exc)
            continue
        if done is not None:
            report.studies.append(done)
            log.info(
                "retention: %s study %d: %d files, %d bytes",
                "would purge" if dry_run else "purged",
                study_id,
                done.files,
                done.bytes,
            )
    if report.studies or report.failed:
        log.info("retention: %s", report.summary())
    return report


def _purge_logged(engine: Engine, archive_root: Path, cfg: RetentionConfig) -> None:
    try:
        purge(engine, archive_root, cfg)
    except Exception:
        log.exception("retention purge failed (it will run again)")


def schedule_purge(
    scheduler: Any,
    engine: Engine,
    archive_root: Path,
    cfg: RetentionConfig,
    *,
    delay_s: float = 60.0,
) -> Any:
    """Add the purge to an APScheduler 3 ``scheduler``: every ``cfg.interval_h`` hours,
    the first run ``delay_s`` after now, never two at once. Returns the APScheduler job,
    or None when retention is disabled."""
    if not cfg.enabled:
        log.info("retention disabled: archived images are kept until removed by hand")
        return None
    first = datetime.now(UTC) + timedelta(seconds=delay_s)
    job = scheduler.add_job(
        _purge_logged,
        "interval",
        args=(engine, Path(archive_root), cfg),
        hours=cfg.interval_h,
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        next_run_time=first,
    )
    log.info(
        "retention: purging studies delivered more than %g days ago, every %g h",
        cfg.delivered_days,
        cfg.interval_h,
    )
    return job
