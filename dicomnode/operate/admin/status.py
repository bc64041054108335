"""The status snapshot: the node at a glance, with a list of problems."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db import migrate
from dicomnode.db.models import Delivery, ModelVersion, Result, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.deliver.states import DeliveryState
from dicomnode.learn.registry import active_model
from dicomnode.learn.retrain_lease import lease_info
from dicomnode.operate.admin.common import iso, join_job_study, safe_url
from dicomnode.operate.admin.status_counts import (
    delivery_counts,
    failure_counts,
    job_counts,
    series_counts,
    today_counts,
)
from dicomnode.operate.admin.status_types import (
    DiskStatus,
    ModelStatus,
    NodeInfo,
    RecentResult,
    RetrainStatus,
    SchemaStatus,
    StatusSnapshot,
)


def _disk(cfg: NodeConfig) -> DiskStatus:
    path = Path(cfg.archive_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe if probe.exists() else Path.cwd())
    except OSError as exc:
        return DiskStatus(
            path=str(path),
            free_bytes=None,
            total_bytes=None,
            min_free_bytes=None,
            below_watermark=False,
            error=str(exc),
        )
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    watermark = cfg.archive.min_free_bytes(total)
    return DiskStatus(
        path=str(path),
        free_bytes=free,
        total_bytes=total,
        min_free_bytes=watermark,
        below_watermark=free < watermark,
        error=None,
    )


def _model_status(s: Session, cfg: NodeConfig) -> ModelStatus:
    from glipcore.bundle import BundleError, read_manifest

    mv = active_model(s)
    if mv is not None:
        missing = not Path(mv.path).is_dir()
        return ModelStatus(
            source="database",
            version=mv.version,
            name=mv.name,
            path=mv.path,
            trained_on_phantom=mv.trained_on_phantom,
            promoted_at=iso(mv.promoted_at),
            error=f"bundle folder {mv.path} is missing" if missing else None,
        )
    path = cfg.bundle_path
    try:
        manifest, version = read_manifest(path)
    except BundleError as exc:
        return ModelStatus(
            source="config",
            version=None,
            name=None,
            path=str(path),
            trained_on_phantom=None,
            promoted_at=None,
            error=str(exc).splitlines()[0],
        )
    return ModelStatus(
        source="config",
        version=version,
        name=manifest.name,
        path=str(path),
        trained_on_phantom=manifest.trained_on == "phantom",
        promoted_at=None,
        error=None,
    )


def _problems(snap: StatusSnapshot) -> list[str]:
    out = []
    if not snap["schema"]["ok"]:
        out.append(
            f"database schema at {snap['schema']['current'] or '(empty)'}, node needs "
            f"{snap['schema']['head']}: run `dicomnode db upgrade`"
        )
    disk = snap["disk"]
    if disk["below_watermark"]:
        out.append(
            f"free disk {disk['free_bytes']} B below the watermark {disk['min_free_bytes']} B: "
            "the node refuses new images"
        )
    if disk["error"]:
        out.append(f"free disk unknown: {disk['error']}")
    stale = [r["id"] for r in snap["running"] if r["lease_expired"]]
    if stale:
        out.append(
            f"{len(stale)} running job(s) with an expired lease (worker gone?): "
            + ", ".join(map(str, stale))
        )
    if snap["failures"]["total"]:
        out.append(
            f"{snap['failures']['total']} failed job(s): `dicomnode jobs list --state failed`"
        )
    if snap["deliveries"]["dead"]:
        out.append(
            f"{snap['deliveries']['dead']} dead deliveries: "
            "`dicomnode deliveries list --state dead`"
        )
    if snap["model"]["error"]:
        out.append(f"model: {snap['model']['error']}")
    return out


def _recent_results(s: Session, limit: int = 5) -> list[RecentResult]:
    rows = s.execute(
        join_job_study(select(Result, Study.study_instance_uid))
        .order_by(Result.id.desc())
        .limit(limit)
    ).all()
    out: list[RecentResult] = []
    for res, study_uid in rows:
        states = list(s.scalars(select(Delivery.state).where(Delivery.result_fk == res.id)))
        sent = states.count(DeliveryState.SENT)
        if res.status == "withheld":
            outcome = "withheld"
        elif not states:
            outcome = "no destinations"
        elif DeliveryState.DEAD in states:
            outcome = "delivery failed"
        elif sent == len(states):
            outcome = "delivered"
        else:
            outcome = "delivering"
        out.append(
            RecentResult(
                result_id=res.id,
                job_id=res.job_fk,
                at=res.created_at.isoformat(),
                study_instance_uid=study_uid,
                status=res.status,
                model_version=res.model_version,
                sent=sent,
                deliveries=len(states),
                outcome=outcome,
            )
        )
    return out


def _retrain_status(s: Session, now: datetime) -> RetrainStatus:
    lease = lease_info(s)
    running = lease is not None and not lease.expired(now)
    last = s.scalars(
        select(ModelVersion)
        .where(ModelVersion.decision.is_not(None))
        .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    ).first()
    return RetrainStatus(
        running=running,
        holder=lease.holder if lease is not None and running else None,
        started_at=iso(lease.acquired_at) if lease is not None and running else None,
        stage=lease.stage if lease is not None and running else None,
        last_candidate=last.version if last else None,
        last_decision=last.decision if last else None,
        last_at=iso(last.created_at) if last else None,
        last_active=last.active if last else None,
    )


def status_snapshot(engine: Engine, cfg: NodeConfig, now: datetime | None = None) -> StatusSnapshot:
    """The node at a glance: today's traffic (since local midnight), series by state, jobs
    by state and queue depth, running jobs with age and worker, failures with reasons,
    deliveries, free disk, the model version in use and a list of problems."""
    now = now or utcnow()
    local = now.astimezone()
    since = local.replace(hour=0, minute=0, second=0, microsecond=0)
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    with session_factory(engine)() as s:
        jobs, running = job_counts(s, now)
        snap = StatusSnapshot(
            generated_at=now.isoformat(),
            node=NodeInfo(
                ae_title=cfg.ae_title,
                database=safe_url(cfg.database_url),
                archive_dir=str(cfg.archive_dir),
            ),
            schema=SchemaStatus(current=current, head=head, ok=current == head),
            today=today_counts(s, since),
            series=series_counts(s),
            jobs=jobs,
            running=running,
            failures=failure_counts(s, since),
            deliveries=delivery_counts(s, now),
            disk=_disk(cfg),
            model=_model_status(s, cfg),
            retrain=_retrain_status(s, now),
            recent_results=_recent_results(s),
            problems=[],
        )
    snap["problems"] = _problems(snap)
    return snap
