"""Series completeness and selection: which received series become jobs.

The rules that judge one series are :mod:`dicomnode.receive.selection` (its phases:
:mod:`dicomnode.receive.phases`); the job transitions are :mod:`dicomnode.process.jobs`.

The C-STORE handler only stamps ``series.last_received_at`` (and re-opens a series that
was complete). One periodic sweep (APScheduler 3 ``BackgroundScheduler``) then

1. holds the queued jobs of series that are receiving again (late instances);
2. completes series quiet for ``quiet_time_s`` (or past ``forced_deadline_s`` since the
   first instance of the current burst); all state is in the database, so a restart in
   the middle of a quiet time still completes the series. Time the node was down does
   not count: no series completes before ``quiet_time_s`` after the assembler started,
   so a series still receiving when the node stopped gets a fresh quiet period, measured
   from the later of its last instance and the start, and a sender that resumes after
   the restart is not cut off;
3. decides each study whose series are all complete: every newly complete series is
   evaluated against the selection rules; of the study's eligible series the best is
   ``selected`` (a queued job), the others are ``superseded by series X``.

A better series completing after a worse one's job was queued: if that job has not been
claimed (queued or held), it is superseded and the better series gets the job; if it was
already claimed (running, done or failed), the better series is still processed (a new
job) and the worse series is recorded as superseded - the study then has two result sets,
the later one from the better series.

Instances arriving after a series' job started follow ``selection.late_instances``:
``reprocess`` queues a new job once the series is quiet again, ``ignore`` records it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db.models import Instance, Job, Series, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.process.events import add_event
from dicomnode.process.jobs import (
    CLAIMED,
    UNCLAIMED,
    JobState,
    cancel_job,
    hold_job,
    queue_job,
    release_job,
    supersede_job,
)
from dicomnode.receive.phases import InstanceInfo
from dicomnode.receive.selection import Evaluation, evaluate_series, why_better

log = logging.getLogger(__name__)


def _count(s: Session, stmt: Any) -> int:
    """Execute an UPDATE and return how many rows it changed."""
    return int(getattr(s.execute(stmt), "rowcount", 0))


class Assembler:
    """The completeness sweep and study decisions. ``start()`` schedules :meth:`sweep`."""

    def __init__(
        self, cfg: NodeConfig, engine: Engine, *, started_at: datetime | None = None
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.sessions = session_factory(engine)
        self._scheduler: BackgroundScheduler | None = None
        self.started_at = started_at or utcnow()
        """When the node started receiving (reset by :meth:`start`): no series received
        before it completes sooner than ``quiet_time_s`` after it."""

    # --- scheduling -------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`sweep` every ``assembler.sweep_interval_s`` in a background thread."""
        if self._scheduler is not None:
            raise RuntimeError("the assembler is already started")
        self.started_at = utcnow()
        sched = BackgroundScheduler(timezone="UTC")
        sched.add_job(
            self._sweep_logged,
            "interval",
            seconds=self.cfg.assembler.sweep_interval_s,
            id="assembler-sweep",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now().astimezone(),
        )
        sched.start()
        self._scheduler = sched
        log.info(
            "assembler sweeping every %g s (quiet time %g s, forced deadline %g s)",
            self.cfg.assembler.sweep_interval_s,
            self.cfg.assembler.quiet_time_s,
            self.cfg.assembler.forced_deadline_s,
        )

    def stop(self) -> None:
        """Stop the schedule, waiting for a running sweep."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def _sweep_logged(self) -> None:
        try:
            self.sweep()
        except Exception:
            log.exception("assembler sweep failed (it will run again)")

    # --- the sweep ----------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> None:
        """One pass: hold, complete, decide."""
        now = now or utcnow()
        self._hold_jobs_of_receiving_series(now)
        completed = self._complete_quiet_series(now)
        self._import_annotations(completed)
        with self.sessions() as s:
            studies = s.scalars(
                select(Series.study_fk)
                .where(Series.state == "complete", Series.decision.is_(None))
                .distinct()
            ).all()
        for study_id in studies:
            self._decide_study(study_id, now)

    def _hold_jobs_of_receiving_series(self, now: datetime) -> None:
        with self.sessions() as s, s.begin():
            for job_id in s.scalars(
                select(Job.id)
                .join(Series, Series.id == Job.series_fk)
                .where(Job.state == JobState.QUEUED, Series.state == "receiving")
            ).all():
                hold_job(s, job_id, now)

    def _import_annotations(self, series_ids: list[int]) -> None:
        """SR series just completed may be hinge-point corrections sent back from a viewer:
        import them as annotations (refusals are events; a failure never stops the sweep)."""
        if not series_ids:
            return
        from dicomnode.learn.annotations import import_received_series

        with self.sessions() as s:
            srs = s.scalars(
                select(Series.id).where(Series.id.in_(series_ids), Series.modality == "SR")
            ).all()
        for sid in srs:
            try:
                import_received_series(self.engine, self.cfg.archive_dir, sid)
            except Exception:
                log.exception("series %d: importing its SR as an annotation failed", sid)

    def _complete_quiet_series(self, now: datetime) -> list[int]:
        """Complete the series that are due; returns their ids."""
        a = self.cfg.assembler
        quiet_cut = now - timedelta(seconds=a.quiet_time_s)
        forced_cut = now - timedelta(seconds=a.forced_deadline_s)
        due = or_(Series.last_received_at <= quiet_cut, Series.burst_started_at <= forced_cut)
        if self.started_at > quiet_cut:
            # the fresh quiet period after the start: only series receiving since the
            # start may be cut off (forced); the others wait for quiet or their sender
            due = and_(
                Series.burst_started_at <= forced_cut, Series.last_received_at >= self.started_at
            )
        completed: list[int] = []
        with self.sessions() as s, s.begin():
            rows = s.execute(
                select(
                    Series.id, Series.study_fk, Series.last_received_at, Series.instance_count
                ).where(Series.state == "receiving", due)
            ).all()
            for sid, study_id, last, count in rows:
                how = "quiet" if last <= quiet_cut else "forced"
                n = _count(
                    s,
                    update(Series)
                    .where(Series.id == sid, Series.state == "receiving", due)
                    .values(
                        state="complete",
                        completed_at=now,
                        completion=how,
                        decision=None,
                        decision_reason=None,
                    ),
                )
                if n:
                    detail = f"complete ({how}), {count} instances"
                    add_event(s, "series_complete", detail, study=study_id, series=sid, at=now)
                    log.info("series %d %s", sid, detail)
                    completed.append(sid)
        return completed

    def _instances(self, s: Session, series_id: int) -> list[InstanceInfo]:
        rows = s.execute(
            select(
                Instance.id,
                Instance.sop_class_uid,
                Instance.image_type,
                Instance.orientation,
                Instance.slice_positions,
                Instance.slice_thickness,
                Instance.acquisition_number,
                Instance.temporal_position_index,
                Instance.trigger_time,
                Instance.cardiac_phase_percent,
                Instance.nominal_interval,
            ).where(Instance.series_fk == series_id)
        ).all()
        return [InstanceInfo(*r) for r in rows]

    def _decide_study(self, study_id: int, now: datetime) -> None:
        with self.sessions() as s, s.begin():
            study = s.execute(
                select(Study).where(Study.id == study_id).with_for_update()
            ).scalar_one()
            all_series = list(
                s.scalars(select(Series).where(Series.study_fk == study_id).order_by(Series.id))
            )
            if any(x.state == "receiving" for x in all_series):
                return  # decide once the whole study is quiet
            pending = [x for x in all_series if x.state == "complete" and x.decision is None]
            if not pending:
                return
            evals: dict[int, Evaluation] = {}
            for x in pending:
                ev = evaluate_series(x, self._instances(s, x.id), self.cfg)
                evals[x.id] = ev
                if not ev.eligible:
                    self._decide(s, x, "not_selected", ev.reason, now)
                    self._cancel_unclaimed(s, x, ev.reason, now)
            current = [x for x in all_series if x.decision == "selected" and x not in pending]
            for x in current:
                evals[x.id] = evaluate_series(x, self._instances(s, x.id), self.cfg)
            candidates = [x for x in pending + current if evals[x.id].eligible]
            if not candidates:
                return
            best = min(candidates, key=lambda x: evals[x.id].rank_key())
            for x in candidates:
                if x is best:
                    continue
                started = self._supersede_jobs(s, x, best, now)
                why = why_better(evals[best.id], evals[x.id])
                tail = f"; its job {started} had already started" if started else ""
                reason = f"superseded by series {best.series_instance_uid} ({why}){tail}"
                self._decide(s, x, "superseded", reason, now)
            if best in pending:
                self._decide(s, best, "selected", evals[best.id].reason, now)
                self._ensure_job(s, study, best, evals[best.id], now)

    def _decide(self, s: Session, x: Series, decision: str, reason: str, now: datetime) -> None:
        x.decision, x.decision_reason = decision, reason
        kind = {"selected": "series_selected", "superseded": "series_superseded"}.get(
            decision, "series_not_selected"
        )
        add_event(s, kind, reason, study=x.study_fk, series=x.id, at=now)
        log.info("series %d: %s", x.id, reason)

    def _cancel_unclaimed(self, s: Session, x: Series, reason: str, now: datetime) -> None:
        """A series that no longer qualifies (after late instances) keeps no waiting job."""
        for job_id in s.scalars(
            select(Job.id).where(Job.series_fk == x.id, Job.state.in_(UNCLAIMED))
        ).all():
            cancel_job(s, job_id, reason, now, expected=UNCLAIMED)

    def _supersede_jobs(self, s: Session, x: Series, best: Series, now: datetime) -> int | None:
        """Supersede the unclaimed jobs of ``x``; the id of a claimed one, if any."""
        started: int | None = None
        for job in s.scalars(select(Job).where(Job.series_fk == x.id).order_by(Job.id)):
            if job.state in UNCLAIMED:
                if supersede_job(s, job.id, best.series_instance_uid, now):
                    continue
                s.refresh(job)
            if job.state in CLAIMED:
                started = job.id
        return started

    def _ensure_job(
        self, s: Session, study: Study, x: Series, ev: Evaluation, now: datetime
    ) -> None:
        """Give the newly selected series ``x`` its job (following the late-instance policy)."""
        phase = ev.chosen_phase()
        latest = s.scalars(
            select(Job).where(Job.series_fk == x.id).order_by(Job.id.desc()).limit(1)
        ).first()
        fields = {
            "phase_key": phase.key,
            "phase_value": phase.value,
            "instance_count": len(phase.instance_ids),
        }
        if latest is not None and latest.state in UNCLAIMED:
            was_held = latest.state == JobState.HELD
            if release_job(s, latest.id, ev.reason, now, was_held=was_held, **fields):
                return
            s.refresh(latest)
        if latest is not None and latest.state in CLAIMED:
            if self.cfg.selection.late_instances == "ignore":
                note = f"; late instances ignored (job {latest.id} had already started)"
                x.decision_reason = (x.decision_reason or "") + note
                add_event(
                    s,
                    "late_instances_ignored",
                    note.lstrip("; "),
                    study=study.id,
                    series=x.id,
                    job=latest.id,
                    at=now,
                )
                return
            reason = f"{ev.reason}; reprocess: instances arrived after job {latest.id} started"
        else:
            reason = ev.reason
        job_id = queue_job(s, series=x.id, study=study.id, reason=reason, now=now, **fields)
        log.info("series %d: job %d queued", x.id, job_id)
