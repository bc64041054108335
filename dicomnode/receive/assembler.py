"""Series completeness and selection: which received series become jobs.

The C-STORE handler only stamps ``series.last_received_at`` (and re-opens a series that
was complete). One periodic sweep (APScheduler 3 ``BackgroundScheduler``) then

1. holds the queued jobs of series that are receiving again (late instances);
2. completes series quiet for ``quiet_time_s`` (or past ``forced_deadline_s`` since the
   first instance of the current burst); all state is in the database, so a restart in
   the middle of a quiet time still completes the series;
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
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.uid import UID
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db.models import Event, Instance, Job, Series, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.receive.series_facts import PHASE_ATTRIBUTES, PROCESSED_CLASSES, phase_value_str

log = logging.getLogger(__name__)

POSITION_DECIMALS = 2  # positions equal to 0.01 mm are the same slice position
ORIENTATION_TOL = 1e-4
UNCLAIMED = ("queued", "held")
CLAIMED = ("running", "done", "failed")


@dataclass(frozen=True)
class InstanceInfo:
    """The columns of one instance that selection reads."""

    id: int
    sop_class_uid: str
    image_type: str | None
    orientation: list[float] | None
    slice_positions: list[float] | None
    slice_thickness: float | None
    acquisition_number: int | None = None
    temporal_position_index: int | None = None
    trigger_time: float | None = None
    cardiac_phase_percent: float | None = None
    nominal_interval: float | None = None


@dataclass(frozen=True)
class Phase:
    """One phase of a series: its instances and slice positions (mm along the normal)."""

    key: str | None
    value: str | None
    percent: float | None
    instance_ids: tuple[int, ...]
    positions: tuple[float, ...]
    thickness: float | None

    @property
    def label(self) -> str:
        if self.key is None:
            return "single phase"
        attr = dict(PHASE_ATTRIBUTES)[self.key]
        pct = f" ({self.percent:g}% R-R)" if self.percent is not None else ""
        return f"{attr}={self.value}{pct}"

    @property
    def slices(self) -> int:
        return len(self.positions)

    @property
    def coverage_mm(self) -> float:
        return self.positions[-1] - self.positions[0] if self.positions else 0.0

    @property
    def spacing_mm(self) -> float | None:
        if len(self.positions) < 2:
            return None
        gaps = [b - a for a, b in zip(self.positions, self.positions[1:], strict=False)]
        return float(statistics.median(gaps))

    @property
    def resolution_mm(self) -> float:
        """The coarser of slice thickness and slice spacing (what 'thin slices' means)."""
        vals = [v for v in (self.thickness, self.spacing_mm) if v is not None]
        return max(vals) if vals else float("inf")


@dataclass(frozen=True)
class Evaluation:
    """The selection rules applied to one complete series."""

    eligible: bool
    reason: str
    phase: Phase | None = None
    phase_distance: float = 0.0
    series_number: int | None = None
    series_uid: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def rank_key(self) -> tuple[float, float, float, int, int, str]:
        """Smaller is better: phase match, thin slices, z-coverage, slices, number, UID."""
        p = self.phase
        assert p is not None
        return (
            round(self.phase_distance, 3),
            round(p.resolution_mm, 2),
            -round(p.coverage_mm, 1),
            -p.slices,
            self.series_number if self.series_number is not None else 1 << 30,
            self.series_uid,
        )


def why_better(a: Evaluation, b: Evaluation) -> str:
    """Why series evaluation ``a`` ranks before ``b``, in words."""
    pa, pb = a.phase, b.phase
    assert pa is not None and pb is not None
    ka, kb = a.rank_key(), b.rank_key()
    if ka[0] != kb[0]:
        return f"phase closer to the configured one ({pa.label} vs {pb.label})"
    if ka[1] != kb[1]:
        return f"thinner slices ({pa.resolution_mm:g} mm vs {pb.resolution_mm:g} mm)"
    if ka[2] != kb[2]:
        return f"larger z-coverage ({pa.coverage_mm:.1f} mm vs {pb.coverage_mm:.1f} mm)"
    if ka[3] != kb[3]:
        return f"more slices ({pa.slices} vs {pb.slices})"
    if ka[4] != kb[4]:
        return "equal quality, lower series number"
    return "equal quality, first by series UID"


def _image_type_values(s: str | None) -> list[str]:
    return [v.strip().upper() for v in s.split("\\")] if s else []


def split_phases(instances: Sequence[InstanceInfo]) -> list[Phase] | str:
    """Group instances into phases; a reason string when positions repeat and no phase
    attribute separates them (or when geometry is missing)."""
    slots: list[tuple[InstanceInfo, float]] = []
    for inst in instances:
        if not inst.slice_positions:
            return "an instance lacks ImagePositionPatient/ImageOrientationPatient"
        slots.extend((inst, round(p, POSITION_DECIMALS)) for p in inst.slice_positions)

    def thickness(members: Sequence[InstanceInfo]) -> float | None:
        vals = [m.slice_thickness for m in members if m.slice_thickness is not None]
        return float(statistics.median(vals)) if vals else None

    def make(key: str | None, value: Any, members: list[tuple[InstanceInfo, float]]) -> Phase:
        insts = list({m.id: m for m, _ in members}.values())
        percent: float | None = None
        if key == "cardiac_phase_percent":
            percent = float(value)
        elif key == "trigger_time":
            rr = [m.nominal_interval for m in insts if m.nominal_interval]
            if rr:
                percent = round(100.0 * float(value) / float(statistics.median(rr)), 1)
        return Phase(
            key=key,
            value=None if key is None else phase_value_str(value),
            percent=percent,
            instance_ids=tuple(sorted(m.id for m in insts)),
            positions=tuple(sorted(p for _, p in members)),
            thickness=thickness(insts),
        )

    positions = [p for _, p in slots]
    if len(set(positions)) == len(positions):
        return [make(None, None, slots)]
    for key, _attr in PHASE_ATTRIBUTES:
        values = [getattr(inst, key) for inst, _ in slots]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        groups: dict[Any, list[tuple[InstanceInfo, float]]] = {}
        for (inst, p), v in zip(slots, values, strict=True):
            groups.setdefault(v, []).append((inst, p))
        if all(len({p for _, p in g}) == len(g) for g in groups.values()):
            return [make(key, v, g) for v, g in sorted(groups.items())]
    return (
        "several instances at the same position and no phase attribute "
        f"({', '.join(a for _, a in PHASE_ATTRIBUTES)}) separates them"
    )


def _own_output(series: Series, cfg: NodeConfig) -> str | None:
    ident = cfg.identity
    if series.series_instance_uid.startswith(ident.uid_root):
        return f"UID root {ident.uid_root}"
    if (series.manufacturer or "") == ident.manufacturer:
        return f"Manufacturer {ident.manufacturer}"
    if (series.series_description or "").startswith(ident.series_description_prefix):
        return f"SeriesDescription starting with {ident.series_description_prefix}"
    return None


def _phase_problem(p: Phase, cfg: NodeConfig) -> str | None:
    sel = cfg.selection
    if p.slices < sel.min_slices:
        return f"{p.slices} slices (at least {sel.min_slices} required)"
    if p.resolution_mm > sel.max_slice_thickness_mm:
        return (
            f"slice thickness/spacing {p.resolution_mm:g} mm "
            f"(at most {sel.max_slice_thickness_mm:g} mm allowed)"
        )
    if p.coverage_mm < sel.min_z_coverage_mm:
        return f"z-coverage {p.coverage_mm:.1f} mm (at least {sel.min_z_coverage_mm:g} mm required)"
    return None


def evaluate_series(
    series: Series, instances: Sequence[InstanceInfo], cfg: NodeConfig
) -> Evaluation:
    """Apply the selection rules to a complete series."""
    sel = cfg.selection

    def no(reason: str) -> Evaluation:
        return Evaluation(False, f"not selected: {reason}", series_uid=series.series_instance_uid)

    if sel.skip_own_outputs and (why := _own_output(series, cfg)) is not None:
        return no(f"this node's own output ({why})")
    if not instances:
        return no("no instances")
    classes = {i.sop_class_uid for i in instances}
    other = sorted(classes - set(PROCESSED_CLASSES))
    if other:
        return no(f"{UID(other[0]).name} is archived only")
    modality = series.modality or "(none)"
    if modality not in sel.modalities:
        return no(f"modality {modality} (expected {', '.join(sel.modalities)})")
    types = [_image_type_values(i.image_type) for i in instances]
    if sel.require_original and any(not t or t[0] != "ORIGINAL" for t in types):
        bad = next(t for t in types if not t or t[0] != "ORIGINAL")
        return no(f"image type {bad[0] if bad else '(missing)'} (ORIGINAL required)")
    if sel.exclude_localizers and any("LOCALIZER" in t for t in types):
        return no("localizer")
    orients = [i.orientation for i in instances]
    if any(o is None or len(o) != 6 for o in orients):
        return no("an instance lacks ImageOrientationPatient")
    first = orients[0]
    assert first is not None
    if any(
        max(abs(a - b) for a, b in zip(o, first, strict=True)) > ORIENTATION_TOL
        for o in orients
        if o
    ):
        return no("ImageOrientationPatient differs between instances")
    phases = split_phases(instances)
    if isinstance(phases, str):
        return no(phases)
    problems = {p: _phase_problem(p, cfg) for p in phases}
    ok = [p for p in phases if problems[p] is None]
    multi = len(phases) > 1
    if not ok:
        worst = max(phases, key=lambda p: (p.slices, p.coverage_mm))
        where = f" (best of {len(phases)} phases: {worst.label})" if multi else ""
        return no(f"{problems[worst]}{where}")
    chosen, why, distance = _choose_phase(ok, sel.phase)
    detail = (
        f"{chosen.slices} slices, {chosen.resolution_mm:g} mm, "
        f"z-coverage {chosen.coverage_mm:.1f} mm"
    )
    if multi:
        detail += f"; {len(phases)} phases, chose {chosen.label}: {why}"
    return Evaluation(
        True,
        f"selected: {detail}",
        phase=chosen,
        phase_distance=distance,
        series_number=series.series_number,
        series_uid=series.series_instance_uid,
    )


def _choose_phase(phases: Sequence[Phase], policy: str | float) -> tuple[Phase, str, float]:
    """(phase, why, distance from the configured percent) for a phase policy."""
    most = max(phases, key=lambda p: (p.slices, p.coverage_mm, -phases.index(p)))
    if policy == "most_complete":
        return most, "the most complete phase", 0.0
    target = float(policy)
    known = [p for p in phases if p.percent is not None]
    if not known:
        return most, f"no phase percent known; chose the most complete (wanted {target:g}%)", 0.0
    best = min(known, key=lambda p: (abs(float(p.percent or 0) - target), -p.slices))
    dist = abs(float(best.percent or 0) - target)
    return best, f"closest to the configured {target:g}%", dist


def _count(s: Session, stmt: Any) -> int:
    """Execute an UPDATE and return how many rows it changed."""
    return int(getattr(s.execute(stmt), "rowcount", 0))


class Assembler:
    """The completeness sweep and study decisions. ``start()`` schedules :meth:`sweep`."""

    def __init__(self, cfg: NodeConfig, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.sessions = session_factory(engine)
        self._scheduler: BackgroundScheduler | None = None

    # --- scheduling -------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`sweep` every ``assembler.sweep_interval_s`` in a background thread."""
        if self._scheduler is not None:
            raise RuntimeError("the assembler is already started")
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
        self._complete_quiet_series(now)
        with self.sessions() as s:
            studies = s.scalars(
                select(Series.study_fk)
                .where(Series.state == "complete", Series.decision.is_(None))
                .distinct()
            ).all()
        for study_id in studies:
            self._decide_study(study_id, now)

    def _event(
        self,
        s: Session,
        kind: str,
        detail: str,
        *,
        study: int | None = None,
        series: int | None = None,
        job: int | None = None,
        now: datetime,
    ) -> None:
        s.add(Event(at=now, kind=kind, detail=detail, study_fk=study, series_fk=series, job_fk=job))

    def _hold_jobs_of_receiving_series(self, now: datetime) -> None:
        with self.sessions() as s, s.begin():
            rows = s.execute(
                select(Job.id, Job.series_fk, Job.study_fk)
                .join(Series, Series.id == Job.series_fk)
                .where(Job.state == "queued", Series.state == "receiving")
            ).all()
            for job_id, series_id, study_id in rows:
                n = _count(
                    s,
                    update(Job)
                    .where(Job.id == job_id, Job.state == "queued")
                    .values(state="held", updated_at=now, reason="held: late instances arriving"),
                )
                if n:
                    self._event(
                        s,
                        "job_held",
                        "late instances arriving; waiting for quiet",
                        study=study_id,
                        series=series_id,
                        job=job_id,
                        now=now,
                    )

    def _complete_quiet_series(self, now: datetime) -> None:
        a = self.cfg.assembler
        quiet_cut = now - timedelta(seconds=a.quiet_time_s)
        forced_cut = now - timedelta(seconds=a.forced_deadline_s)
        due = or_(Series.last_received_at <= quiet_cut, Series.burst_started_at <= forced_cut)
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
                    self._event(s, "series_complete", detail, study=study_id, series=sid, now=now)
                    log.info("series %d %s", sid, detail)

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
        self._event(s, kind, reason, study=x.study_fk, series=x.id, now=now)
        log.info("series %d: %s", x.id, reason)

    def _cancel_unclaimed(self, s: Session, x: Series, reason: str, now: datetime) -> None:
        """A series that no longer qualifies (after late instances) keeps no waiting job."""
        for job_id in s.scalars(
            select(Job.id).where(Job.series_fk == x.id, Job.state.in_(UNCLAIMED))
        ).all():
            n = _count(
                s,
                update(Job)
                .where(Job.id == job_id, Job.state.in_(UNCLAIMED))
                .values(state="cancelled", finished_at=now, updated_at=now, reason=reason)
                .execution_options(synchronize_session=False),
            )
            if n:
                self._event(
                    s, "job_cancelled", reason, study=x.study_fk, series=x.id, job=job_id, now=now
                )

    def _supersede_jobs(self, s: Session, x: Series, best: Series, now: datetime) -> int | None:
        """Supersede the unclaimed jobs of ``x``; the id of a claimed one, if any."""
        started: int | None = None
        for job in s.scalars(select(Job).where(Job.series_fk == x.id).order_by(Job.id)):
            if job.state in UNCLAIMED:
                n = _count(
                    s,
                    update(Job)
                    .where(Job.id == job.id, Job.state.in_(UNCLAIMED))
                    .values(
                        state="superseded",
                        finished_at=now,
                        updated_at=now,
                        reason=f"superseded by series {best.series_instance_uid}",
                    )
                    .execution_options(synchronize_session=False),
                )
                if n:
                    self._event(
                        s,
                        "job_superseded",
                        f"superseded by series {best.series_instance_uid}",
                        study=x.study_fk,
                        series=x.id,
                        job=job.id,
                        now=now,
                    )
                    continue
                s.refresh(job)
            if job.state in CLAIMED:
                started = job.id
        return started

    def _ensure_job(
        self, s: Session, study: Study, x: Series, ev: Evaluation, now: datetime
    ) -> None:
        """Give the newly selected series ``x`` its job (following the late-instance policy)."""
        phase = ev.phase
        assert phase is not None
        latest = s.scalars(
            select(Job).where(Job.series_fk == x.id).order_by(Job.id.desc()).limit(1)
        ).first()
        fields = {
            "phase_key": phase.key,
            "phase_value": phase.value,
            "instance_count": len(phase.instance_ids),
        }
        if latest is not None and latest.state in UNCLAIMED:
            was_held = latest.state == "held"
            n = _count(
                s,
                update(Job)
                .where(Job.id == latest.id, Job.state.in_(UNCLAIMED))
                .values(state="queued", updated_at=now, reason=ev.reason, **fields)
                .execution_options(synchronize_session=False),
            )
            if n:
                if was_held:
                    self._event(
                        s,
                        "job_requeued",
                        "series quiet again; job released",
                        study=study.id,
                        series=x.id,
                        job=latest.id,
                        now=now,
                    )
                return
            s.refresh(latest)
        if latest is not None and latest.state in CLAIMED:
            if self.cfg.selection.late_instances == "ignore":
                note = f"; late instances ignored (job {latest.id} had already started)"
                x.decision_reason = (x.decision_reason or "") + note
                self._event(
                    s,
                    "late_instances_ignored",
                    note.lstrip("; "),
                    study=study.id,
                    series=x.id,
                    job=latest.id,
                    now=now,
                )
                return
            reason = f"{ev.reason}; reprocess: instances arrived after job {latest.id} started"
        else:
            reason = ev.reason
        job = Job(
            series_fk=x.id,
            study_fk=study.id,
            state="queued",
            reason=reason,
            created_at=now,
            updated_at=now,
            **fields,
        )
        s.add(job)
        s.flush()
        self._event(s, "job_queued", reason, study=study.id, series=x.id, job=job.id, now=now)
        log.info("series %d: job %d queued", x.id, job.id)
