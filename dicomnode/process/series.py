"""Archived instances of a job's series (and phase) -> a glipcore ``Volume``.

Sorting, geometry checks and decompression are the loader's
(``glipcore.volume.load_dicom_series``); a geometry error is recorded on the job as a
readable reason and the job fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select, update

from dicomnode.db.models import Event, Instance, Job, utcnow
from dicomnode.db.session import session_factory
from dicomnode.receive.series_facts import phase_value_str
from glipcore.volume import Volume, VolumeError, load_dicom_series

log = logging.getLogger(__name__)

_PHASE_COLUMNS = {
    "cardiac_phase_percent": Instance.cardiac_phase_percent,
    "temporal_position_index": Instance.temporal_position_index,
    "trigger_time": Instance.trigger_time,
    "acquisition_number": Instance.acquisition_number,
}


class SeriesLoadError(RuntimeError):
    """A job's series cannot become a volume; the reason is also on the job row."""


def job_files(engine: Engine, archive_root: Path, job_id: int) -> list[Path]:
    """The archived files of a job's series, restricted to the job's phase."""
    with session_factory(engine)() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise SeriesLoadError(f"job {job_id} does not exist")
        rows = s.execute(
            select(Instance.path, *_PHASE_COLUMNS.values())
            .where(Instance.series_fk == job.series_fk)
            .order_by(Instance.id)
        ).all()
        key, value = job.phase_key, job.phase_value
    if key is not None and key not in _PHASE_COLUMNS:
        raise SeriesLoadError(f"job {job_id} names an unknown phase attribute {key!r}")
    col = list(_PHASE_COLUMNS).index(key) + 1 if key is not None else None
    files = [
        archive_root / r[0]
        for r in rows
        if col is None or (r[col] is not None and phase_value_str(r[col]) == value)
    ]
    if not files:
        raise SeriesLoadError(f"job {job_id}: no archived instances for its series/phase")
    return files


def volume_of_files(files: Sequence[Path]) -> Volume:
    """A job's archived files as a Volume. Missing files or a bad geometry raise
    :class:`SeriesLoadError` with a readable reason; nothing is written."""
    missing = [f for f in files if not f.exists()]
    if missing:
        raise SeriesLoadError(
            f"archive: {len(missing)} of {len(files)} files are missing, e.g. {missing[0]} "
            "(purged by retention or deleted by hand?)"
        )
    try:
        return load_dicom_series(files)
    except VolumeError as exc:
        raise SeriesLoadError(f"series geometry: {exc}") from exc


def load_job_volume(engine: Engine, archive_root: Path, job_id: int) -> Volume:
    """The job's series as a Volume; on missing files or a geometry error the job is failed
    with the reason recorded (and :class:`SeriesLoadError` raised)."""
    files = job_files(engine, archive_root, job_id)
    try:
        return volume_of_files(files)
    except SeriesLoadError as exc:
        _fail(engine, job_id, str(exc))
        raise SeriesLoadError(f"job {job_id}: {exc}") from exc


def _fail(engine: Engine, job_id: int, reason: str) -> None:
    now = utcnow()
    with session_factory(engine)() as s, s.begin():
        job = s.get(Job, job_id)
        if job is None:
            return
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state="failed", reason=reason, finished_at=now, updated_at=now)
        )
        s.add(
            Event(
                at=now,
                kind="job_failed",
                detail=reason,
                study_fk=job.study_fk,
                series_fk=job.series_fk,
                job_fk=job_id,
            )
        )
    log.warning("job %d failed: %s", job_id, reason)
