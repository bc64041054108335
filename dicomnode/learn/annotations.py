"""Annotations, the ground truth of retraining: import from a CSV, an SR file or an SR
received by C-STORE, sanity checks, versions, and the newest annotation per study.

A file is imported all or nothing: when any row is refused (with its reason), no row of
the file is written. Rows that repeat the study's newest annotation are left alone
("unchanged"); an SR imported before is a "duplicate". Every new annotation supersedes the
study's newest one; all versions are kept and the newest (highest id) is the one used.
The node's own results (their SOP Instance UID is one of our outputs) never become
annotations; an SR a viewer derived from ours (a new SOP Instance UID) does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, String, cast, func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import (
    Annotation,
    AssociationAudit,
    Delivery,
    Instance,
    Result,
    Series,
    Study,
)
from dicomnode.db.session import session_factory, session_scope
from dicomnode.learn.annotation_checks import CheckLimits, CtGeometry, landmark_problems
from dicomnode.learn.annotation_csv import read_annotation_csv
from dicomnode.learn.annotation_ct import CtLookupError, ct_geometry, study_ct
from dicomnode.learn.annotation_input import (
    AnnotationSource,
    Candidate,
    ImportReport,
    Outcome,
    RowOutcome,
    quality_problem,
)
from dicomnode.learn.annotation_sr import sr_candidate
from dicomnode.learn.sr_points import is_sr
from dicomnode.process.events import add_event
from glipcore import LANDMARKS, OSTIA
from glipcore.geometry import FloatArray

log = logging.getLogger(__name__)

SR_CLASSES = (
    pydicom.uid.BasicTextSRStorage,
    pydicom.uid.EnhancedSRStorage,
    pydicom.uid.ComprehensiveSRStorage,
    pydicom.uid.Comprehensive3DSRStorage,
)
"""Storage classes whose received instances may be annotations."""


@dataclass(frozen=True)
class Checked:
    """A candidate that passed the checks, with its study and CT series."""

    candidate: Candidate
    study_id: int
    series_id: int


# --------------------------------------------------------------------------- queries


def newest_annotations(s: Session) -> list[Annotation]:
    """The annotation in use per study (its newest version), oldest study first."""
    newest = select(func.max(Annotation.id)).group_by(Annotation.study_fk)
    return list(s.scalars(select(Annotation).where(Annotation.id.in_(newest)).order_by("id")))


def study_versions(s: Session, study_id: int) -> list[Annotation]:
    """Every annotation of a study, oldest first."""
    return list(
        s.scalars(select(Annotation).where(Annotation.study_fk == study_id).order_by(Annotation.id))
    )


def hinge_points(a: Annotation) -> FloatArray:
    """(3, 3) LPS mm in RCC, LCC, NCC order."""
    return np.array([a.landmarks_lps[n] for n in LANDMARKS], dtype=np.float64)


def ostium_points(a: Annotation) -> FloatArray | None:
    """(2, 3) LPS mm in LCO, RCO order (a NaN row for an unknown one); None without ostia."""
    if not any(n in a.landmarks_lps for n in OSTIA):
        return None
    nan = [float("nan")] * 3
    return np.array([a.landmarks_lps.get(n, nan) for n in OSTIA], dtype=np.float64)


def is_own_output(engine: Engine, sop_uid: str) -> bool:
    """Whether ``sop_uid`` is one of the node's result objects (delivered or not)."""
    with session_factory(engine)() as s:
        if s.scalar(select(Delivery.id).where(Delivery.sop_instance_uid == sop_uid).limit(1)):
            return True
        rows = s.scalars(
            select(Result.outputs).where(cast(Result.outputs, String).contains(sop_uid))
        ).all()
    return any(
        item.get("sop_instance_uid") == sop_uid
        for outputs in rows
        for kind, items in (outputs or {}).items()
        if kind != "png"
        for item in items
    )


# --------------------------------------------------------------------------- checks


def check_candidate(
    engine: Engine,
    archive_root: Path,
    cand: Candidate,
    limits: CheckLimits | None = None,
    geometries: dict[int, CtGeometry] | None = None,
) -> Checked | RowOutcome:
    """The candidate with its study and CT, or the reason it cannot be used.
    ``geometries`` caches CT grids by series id across the rows of a file."""
    geometries = geometries if geometries is not None else {}

    def refuse(reason: str) -> RowOutcome:
        return RowOutcome(cand.label, Outcome.REFUSED, reason, cand.study_uid)

    with session_factory(engine)() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == cand.study_uid))
        seen = cand.source_uid and s.scalar(
            select(Annotation.id).where(Annotation.source_uid == cand.source_uid).limit(1)
        )
    if study is None:
        return refuse(f"unknown study {cand.study_uid} (not archived)")
    if study.purged_at is not None:
        return refuse("the study's images were purged by retention")
    if seen:
        return RowOutcome(
            cand.label, Outcome.DUPLICATE, f"already imported as annotation {seen}", cand.study_uid
        )
    problem = quality_problem(cand.quality)
    if problem:
        return refuse(problem)
    try:
        ct = study_ct(
            engine,
            archive_root,
            study.id,
            series_uid=cand.series_uid,
            frame_of_reference_uid=cand.frame_of_reference_uid,
        )
        if ct.series_id not in geometries:
            geometries[ct.series_id] = ct_geometry(ct)
    except CtLookupError as exc:
        return refuse(str(exc))
    problems = landmark_problems(cand.points, geometries[ct.series_id], limits)
    if problems:
        return refuse("; ".join(problems))
    return Checked(cand, study.id, ct.series_id)


# --------------------------------------------------------------------------- storing


def _landmarks_json(points: dict[str, FloatArray]) -> dict[str, list[float]]:
    order = [n for n in (*LANDMARKS, *OSTIA) if n in points]
    return {n: [float(v) for v in points[n]] for n in order}


def _same(a: Annotation, ck: Checked) -> bool:
    c = ck.candidate
    mine = _landmarks_json(c.points)
    if set(a.landmarks_lps) != set(mine) or a.series_fk != ck.series_id:
        return False
    if (a.quality, a.annotator) != (c.quality, c.annotator):
        return False
    return all(np.allclose(a.landmarks_lps[n], mine[n], atol=1e-4) for n in mine)


def store(engine: Engine, checked: Sequence[Checked]) -> list[RowOutcome]:
    """Write checked candidates in one transaction, each superseding its study's newest."""
    out: list[RowOutcome] = []
    with session_scope(session_factory(engine)) as s:
        for ck in checked:
            c = ck.candidate
            newest = s.scalar(
                select(Annotation)
                .where(Annotation.study_fk == ck.study_id)
                .order_by(Annotation.id.desc())
                .limit(1)
            )
            if newest is not None and _same(newest, ck):
                out.append(
                    RowOutcome(
                        c.label,
                        Outcome.UNCHANGED,
                        f"same as annotation {newest.id}",
                        c.study_uid,
                        newest.id,
                    )
                )
                continue
            a = Annotation(
                study_fk=ck.study_id,
                series_fk=ck.series_id,
                landmarks_lps=_landmarks_json(c.points),
                quality=c.quality,
                source=c.source.value,
                annotator=c.annotator,
                annotated_at=c.annotated_at,
                source_ref=c.source_ref,
                source_uid=c.source_uid,
                supersedes_fk=newest.id if newest is not None else None,
            )
            s.add(a)
            s.flush()
            after = f", supersedes {newest.id}" if newest is not None else ""
            add_event(
                s,
                "annotation_added",
                f"annotation {a.id} ({c.source.value}, {c.annotator or 'annotator unknown'}"
                f"{after})",
                study=ck.study_id,
                series=ck.series_id,
            )
            out.append(RowOutcome(c.label, Outcome.IMPORTED, "", c.study_uid, a.id))
    return out


def _read_dicom(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError):
        return None


def _looks_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


# --------------------------------------------------------------------------- imports


def _file_candidates(
    engine: Engine, archive_root: Path, path: Path, annotator: str | None
) -> list[Candidate | RowOutcome]:
    if not _looks_dicom(path):
        rows = read_annotation_csv(path)
        if annotator:
            rows = [_with_annotator(r, annotator) for r in rows]
        return rows
    ds = _read_dicom(path)
    label = path.name
    if ds is None or not is_sr(ds):
        return [RowOutcome(label, Outcome.REFUSED, "not a DICOM SR file")]
    if is_own_output(engine, str(ds.SOPInstanceUID)):
        return [
            RowOutcome(
                label,
                Outcome.REFUSED,
                "this SR is one of the node's own results, not an annotation; correct the "
                "points in a viewer (it saves a new SR) and import that",
                str(ds.get("StudyInstanceUID", "")),
            )
        ]
    cand = sr_candidate(
        engine,
        archive_root,
        ds,
        source=AnnotationSource.SR_FILE,
        label=label,
        source_ref=str(path),
        annotator=annotator,
    )
    if isinstance(cand, RowOutcome) and cand.outcome == Outcome.IGNORED:
        return [RowOutcome(label, Outcome.REFUSED, cand.reason, cand.study_uid)]
    return [cand]


def _with_annotator(row: Candidate | RowOutcome, annotator: str) -> Candidate | RowOutcome:
    if isinstance(row, RowOutcome) or row.annotator:
        return row
    return replace(row, annotator=annotator)


def import_file(
    engine: Engine,
    archive_root: Path,
    path: Path,
    *,
    annotator: str | None = None,
    dry_run: bool = False,
    limits: CheckLimits | None = None,
) -> ImportReport:
    """Import a CSV or an SR file, all or nothing (see the module docstring).
    ``annotator`` fills rows that name none; ``dry_run`` checks without writing."""
    report = ImportReport(path)
    geometries: dict[int, CtGeometry] = {}
    checked: list[Checked] = []
    for item in _file_candidates(engine, archive_root, path, annotator):
        result = (
            item
            if isinstance(item, RowOutcome)
            else check_candidate(engine, archive_root, item, limits, geometries)
        )
        if isinstance(result, Checked):
            checked.append(result)
            report.rows.append(
                RowOutcome(result.candidate.label, Outcome.CHECKED, "", item.study_uid)
            )
        else:
            report.rows.append(result)
    if report.refused or dry_run or not checked:
        return report
    stored = {r.label: r for r in store(engine, checked)}
    report.rows = [stored.get(r.label, r) for r in report.rows]
    report.written = True
    return report


def import_received_sr(
    engine: Engine,
    archive_root: Path,
    instance_path: Path | str,
    calling_ae: str,
    limits: CheckLimits | None = None,
) -> RowOutcome:
    """Import an SR archived by the SCP (``instance_path`` relative to ``archive_root``, or
    absolute) as an annotation when it references an archived study and carries hinge
    points; never when it is one of the node's own results. The annotator is the SR's
    person observer, else ``AE <calling_ae>``. A refusal is logged and recorded as an
    ``annotation_refused`` event on the SR's series."""
    path = archive_root / instance_path
    ds = _read_dicom(path)
    label = str(instance_path)
    if ds is None or not is_sr(ds):
        return RowOutcome(label, Outcome.IGNORED, "not an SR")
    sop_uid = str(ds.SOPInstanceUID)
    if is_own_output(engine, sop_uid):
        return RowOutcome(label, Outcome.IGNORED, f"the node's own result {sop_uid}")
    cand = sr_candidate(
        engine,
        archive_root,
        ds,
        source=AnnotationSource.SR_RECEIVED,
        label=label,
        source_ref=label,
        annotator=f"AE {calling_ae}",
    )
    result = (
        cand
        if isinstance(cand, RowOutcome)
        else check_candidate(engine, archive_root, cand, limits)
    )
    if isinstance(result, Checked):
        (outcome,) = store(engine, [result])
        log.info(
            "SR %s from %s: %s annotation %s",
            sop_uid,
            calling_ae,
            outcome.outcome,
            outcome.annotation_id,
        )
        return outcome
    if result.outcome == Outcome.REFUSED:
        log.warning(
            "SR %s from %s not imported as an annotation: %s", sop_uid, calling_ae, result.reason
        )
        _refusal_event(engine, sop_uid, result.reason)
    return result


def import_received_series(engine: Engine, archive_root: Path, series_id: int) -> list[RowOutcome]:
    """:func:`import_received_sr` for each SR instance of a completed series, with the
    calling AE of the association that brought it (the assembler's hook)."""
    with session_factory(engine)() as s:
        rows = s.execute(
            select(Instance.path, AssociationAudit.calling_ae)
            .outerjoin(AssociationAudit, AssociationAudit.id == Instance.association_fk)
            .where(Instance.series_fk == series_id, Instance.sop_class_uid.in_(SR_CLASSES))
            .order_by(Instance.id)
        ).all()
    return [import_received_sr(engine, archive_root, path, ae or "unknown") for path, ae in rows]


def _refusal_event(engine: Engine, sop_uid: str, reason: str) -> None:
    with session_scope(session_factory(engine)) as s:
        row = s.execute(
            select(Series.id, Series.study_fk)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Instance.sop_instance_uid == sop_uid)
        ).first()
        series_id, study_id = (row[0], row[1]) if row else (None, None)
        add_event(
            s, "annotation_refused", f"SR {sop_uid}: {reason}", series=series_id, study=study_id
        )


__all__ = [
    "Checked",
    "check_candidate",
    "hinge_points",
    "import_file",
    "import_received_series",
    "import_received_sr",
    "is_own_output",
    "newest_annotations",
    "ostium_points",
    "store",
    "study_versions",
]
