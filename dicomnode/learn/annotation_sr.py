"""An SR's landmark points as an annotation candidate: image points converted to LPS
through the archived image, the study found (the SR's own, an image's, or its evidence),
and one frame of reference and one series at most (conventions: :mod:`.sr_points`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from sqlalchemy import Engine, select

from dicomnode.db.models import Study
from dicomnode.db.session import session_factory
from dicomnode.learn.annotation_ct import instance_header
from dicomnode.learn.annotation_input import AnnotationSource, Candidate, Outcome, RowOutcome
from dicomnode.learn.sr_points import image_point_to_lps, sr_points
from glipcore import LANDMARKS
from glipcore.geometry import FloatArray


def _archived_study(engine: Engine, uids: Sequence[str]) -> str | None:
    with session_factory(engine)() as s:
        for uid in uids:
            if s.scalar(select(Study.id).where(Study.study_instance_uid == uid)) is not None:
                return uid
    return None


def _evidence_studies(ds: pydicom.Dataset) -> list[str]:
    out = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        out += [
            str(item.StudyInstanceUID) for item in ds.get(keyword, []) if "StudyInstanceUID" in item
        ]
    return out


def sr_candidate(
    engine: Engine,
    archive_root: Path,
    ds: pydicom.Dataset,
    *,
    source: AnnotationSource,
    label: str,
    source_ref: str,
    annotator: str | None = None,
) -> Candidate | RowOutcome:
    """An SR's landmark points as a candidate (image points converted to LPS through the
    archived image); IGNORED when it names no hinge point; REFUSED with the reason."""
    found = sr_points(ds)
    own_study = str(ds.get("StudyInstanceUID", ""))

    def refuse(reason: str) -> RowOutcome:
        return RowOutcome(label, Outcome.REFUSED, reason, own_study or None)

    if not any(p.name in LANDMARKS for p in found.points) and not found.problems:
        return RowOutcome(label, Outcome.IGNORED, "no hinge points in the SR", own_study or None)
    if found.problems:
        return refuse("; ".join(found.problems))
    points: dict[str, FloatArray] = {}
    frames: set[str] = set()
    image_series: set[str] = set()
    image_studies: list[str] = []
    for p in found.points:
        if p.lps is not None:
            points[p.name] = p.lps
            frames.add(str(p.frame_of_reference_uid))
            continue
        if p.image_uid is None or p.column_row is None:
            continue
        header = instance_header(engine, archive_root, p.image_uid)
        if header is None:
            return refuse(f"{p.name} is drawn on image {p.image_uid}, which is not archived")
        try:
            points[p.name] = image_point_to_lps(header, *p.column_row)
        except (AttributeError, ValueError) as exc:
            return refuse(f"{p.name}: image {p.image_uid} has no usable geometry ({exc})")
        frames.add(str(header.get("FrameOfReferenceUID", "")))
        image_series.add(str(header.SeriesInstanceUID))
        image_studies.append(str(header.StudyInstanceUID))
    if len(frames) > 1:
        return refuse(f"the points refer to {len(frames)} frames of reference")
    if len(image_series) > 1:
        return refuse("the points are drawn on images of several series")
    study = _archived_study(engine, [*image_studies, own_study, *_evidence_studies(ds)])
    return Candidate(
        label=label,
        study_uid=study or own_study,
        points=points,
        source=source,
        series_uid=next(iter(image_series), None),
        frame_of_reference_uid=next(iter(frames), None) or None,
        annotator=(found.annotator or annotator or "")[:64] or None,
        annotated_at=found.content_time,
        source_ref=source_ref,
        source_uid=str(ds.SOPInstanceUID),
    )


__all__ = ["sr_candidate"]
