"""Archived instances of a job's series (and phase) -> a glipcore ``Volume``.

Sorting, geometry checks and decompression are the loader's
(``glipcore.dicom_loader.load_dicom_series``). Missing files and geometry errors raise
:class:`SeriesLoadError` with a readable reason; the worker records it on the job, which
then fails for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select

from dicomnode.db.models import Instance, Job
from dicomnode.db.session import session_factory
from dicomnode.receive.series_facts import phase_value_str
from glipcore.dicom_loader import load_dicom_series
from glipcore.volume import Volume, VolumeError

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
