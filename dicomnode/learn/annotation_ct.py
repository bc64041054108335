"""The archived CT an annotation refers to: which series, its files and its voxel grid.

The series is the one named (a CSV's SeriesInstanceUID, an SR point's image), else the one
the node processed for the study (its newest job, restricted to the job's cardiac phase),
else the study's largest CT series. An SR's SCOORD3D frame of reference must be that CT's,
or another CT series of the study in the same frame of reference is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Instance, Job, Series
from dicomnode.db.session import session_factory
from dicomnode.learn.annotation_checks import CtGeometry
from dicomnode.process.jobs import JobState
from dicomnode.process.series import SeriesLoadError, job_files
from dicomnode.receive.series_facts import PROCESSED_CLASSES
from glipcore.slice_stack import Plane, stack_geometry
from glipcore.volume import VolumeError
from glipcore.volume_io import load_volume


class CtLookupError(ValueError):
    """No usable archived CT for an annotation; the message says why."""


@dataclass(frozen=True)
class StudyCt:
    """One archived CT series of a study and the files that make its volume."""

    series_id: int
    series_uid: str
    frame_of_reference_uid: str | None
    files: tuple[Path, ...]


def _is_ct(s: Session, series: Series) -> bool:
    if series.modality == "CT":
        return True
    return (
        s.scalar(
            select(Instance.id)
            .where(Instance.series_fk == series.id, Instance.sop_class_uid.in_(PROCESSED_CLASSES))
            .limit(1)
        )
        is not None
    )


def _newest_job(s: Session, series_ids: Sequence[int]) -> Job | None:
    """The newest done job of these series, else their newest job of any state."""
    if not series_ids:
        return None
    base = select(Job).where(Job.series_fk.in_(series_ids)).order_by(Job.id.desc()).limit(1)
    return s.scalar(base.where(Job.state == JobState.DONE)) or s.scalar(base)


def _files(engine: Engine, archive_root: Path, series: Series, job: Job | None) -> tuple[Path, ...]:
    if job is not None and job.series_fk == series.id:
        try:
            return tuple(job_files(engine, archive_root, job.id))
        except SeriesLoadError as exc:
            raise CtLookupError(str(exc)) from exc
    with session_factory(engine)() as s:
        paths = s.scalars(
            select(Instance.path).where(Instance.series_fk == series.id).order_by(Instance.id)
        ).all()
    if not paths:
        raise CtLookupError(f"series {series.series_instance_uid} has no archived instances")
    return tuple(archive_root / p for p in paths)


def _pick(s: Session, study_id: int, series_uid: str | None, for_uid: str | None) -> Series:
    study_series = list(s.scalars(select(Series).where(Series.study_fk == study_id)))
    cts = [x for x in study_series if _is_ct(s, x)]
    if series_uid is not None:
        named = [x for x in study_series if x.series_instance_uid == series_uid]
        if not named:
            raise CtLookupError(f"series {series_uid} is not archived in this study")
        if named[0] not in cts:
            raise CtLookupError(f"series {series_uid} is not a CT series")
        chosen = named[0]
    else:
        if not cts:
            raise CtLookupError("the study has no archived CT series")
        job = _newest_job(s, [x.id for x in cts])
        chosen = next((x for x in cts if job and x.id == job.series_fk), None) or max(
            cts, key=lambda x: x.instance_count
        )
    if for_uid is None or chosen.frame_of_reference_uid == for_uid:
        return chosen
    same = [x for x in cts if x.frame_of_reference_uid == for_uid]
    if series_uid is None and same:
        return max(same, key=lambda x: x.instance_count)
    raise CtLookupError(
        f"wrong frame of reference: the points refer to {for_uid}, the CT "
        f"{chosen.series_instance_uid} to {chosen.frame_of_reference_uid}"
    )


def study_ct(
    engine: Engine,
    archive_root: Path,
    study_id: int,
    *,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> StudyCt:
    """The CT of a study for an annotation (see the module docstring)."""
    with session_factory(engine)() as s:
        chosen = _pick(s, study_id, series_uid, frame_of_reference_uid)
        job = _newest_job(s, [chosen.id])
    return StudyCt(
        series_id=chosen.id,
        series_uid=chosen.series_instance_uid,
        frame_of_reference_uid=chosen.frame_of_reference_uid,
        files=_files(engine, archive_root, chosen, job),
    )


def _plane(path: Path) -> Plane:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = [float(v) for v in ds.PixelSpacing]
    return Plane(
        label=str(path),
        position=np.array([float(v) for v in ds.ImagePositionPatient]),
        orientation=np.array([float(v) for v in ds.ImageOrientationPatient]),
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
    )


def ct_geometry(ct: StudyCt) -> CtGeometry:
    """The voxel grid of ``ct`` from its headers (one Enhanced CT file is loaded whole)."""
    label = f"the CT (series {ct.series_uid})"
    missing = [f for f in ct.files if not f.is_file()]
    if missing:
        raise CtLookupError(
            f"{len(missing)} of {len(ct.files)} archived CT files are missing (purged?)"
        )
    try:
        if len(ct.files) == 1:
            vol = load_volume(ct.files[0])
            return CtGeometry(vol.affine, vol.shape_zyx, label)
        planes = [_plane(f) for f in ct.files]
        stack = stack_geometry(planes)
    except (VolumeError, AttributeError, ValueError) as exc:
        raise CtLookupError(f"CT geometry: {exc}") from exc
    return CtGeometry(stack.affine, (len(planes), planes[0].rows, planes[0].cols), label)


def instance_header(engine: Engine, archive_root: Path, sop_uid: str) -> pydicom.Dataset | None:
    """The archived header of an instance by SOP Instance UID (None when not archived)."""
    with session_factory(engine)() as s:
        path = s.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_uid))
    if path is None or not (archive_root / path).is_file():
        return None
    return pydicom.dcmread(archive_root / path, stop_before_pixels=True)


__all__ = ["CtLookupError", "StudyCt", "ct_geometry", "instance_header", "study_ct"]
