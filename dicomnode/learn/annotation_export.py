"""Annotations out: the import CSV (round trip) and a training set in ``glip``'s format.

The training set is a folder holding ``images/<case>.nii.gz`` (the annotated CT of each
study, in LPS through SimpleITK) and ``manifest.csv`` (glipcore's manifest: hinge points,
ostia when annotated, quality), plus ``provenance.json`` (case -> annotation id). Case ids
are a hash of the StudyInstanceUID, so no patient data leaves in names; ``glip train``
reads the manifest directly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from dicomnode import __version__
from dicomnode.db.models import Annotation, Instance, Series, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.learn.annotation_csv import (
    ANNOTATOR,
    HINGE_COLUMNS,
    OSTIUM_COLUMNS,
    QUALITY,
    SERIES,
    STUDY,
)
from dicomnode.learn.annotation_ct import CtLookupError, StudyCt, study_ct
from dicomnode.learn.annotations import hinge_points, newest_annotations, ostium_points
from dicomnode.process.series import SeriesLoadError, volume_of_files
from glipcore import LANDMARKS, OSTIA
from glipcore.manifest import ManifestRow, write_manifest
from glipcore.volume import Volume
from glipcore.volume_io import save_nifti

EXPORT_FORMAT = 1
"""Version of how an archived series becomes an exported image (part of the cache key)."""


@dataclass(frozen=True)
class AnnotationRow:
    """An annotation with the UIDs of its study and series."""

    annotation: Annotation
    study_uid: str
    series_uid: str | None


@dataclass
class DatasetExport:
    """What ``export_dataset`` wrote, and the annotations it skipped with the reason."""

    manifest: Path
    cases: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    cache_hits: int = 0
    """Images taken from the image cache instead of the archive (``image_cache`` only)."""


def _save_atomic(volume: Volume, path: Path) -> None:
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.tmp.nii.gz")
    save_nifti(volume, tmp)
    tmp.replace(path)


def case_id(study_uid: str) -> str:
    """A stable case id without patient data: ``case-`` + 16 hex of the study UID's hash."""
    return "case-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16]


def annotation_rows(engine: Engine, *, all_versions: bool = False) -> list[AnnotationRow]:
    """The newest annotation per study (or every version), with study and series UIDs."""
    with session_factory(engine)() as s:
        anns = (
            newest_annotations(s)
            if not all_versions
            else list(s.scalars(select(Annotation).order_by(Annotation.id)))
        )
        studies = {r[0]: r[1] for r in s.execute(select(Study.id, Study.study_instance_uid))}
        series_ids = {a.series_fk for a in anns if a.series_fk is not None}
        query = select(Series.id, Series.series_instance_uid).where(Series.id.in_(series_ids))
        series = {r[0]: r[1] for r in s.execute(query)}
    return [
        AnnotationRow(a, studies[a.study_fk], series.get(a.series_fk) if a.series_fk else None)
        for a in anns
    ]


def _cells(point: list[float] | None) -> list[str]:
    return [repr(float(v)) for v in point] if point is not None else ["", "", ""]


def annotations_csv(rows: list[AnnotationRow]) -> str:
    """The rows as an import CSV (``dicomnode annotations import`` reads it back)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([STUDY, SERIES, *HINGE_COLUMNS, *OSTIUM_COLUMNS, ANNOTATOR, QUALITY])
    for r in rows:
        lm = r.annotation.landmarks_lps
        points = [c for n in (*LANDMARKS, *OSTIA) for c in _cells(lm.get(n))]
        writer.writerow(
            [
                r.study_uid,
                r.series_uid or "",
                *points,
                r.annotation.annotator or "",
                r.annotation.quality or "",
            ]
        )
    return buf.getvalue()


def series_content_key(engine: Engine, archive_root: Path, ct: StudyCt) -> str:
    """A key of the CT's content: the SOP Instance UIDs of the files that make its volume
    and the code versions that turn them into an image (a changed series, or new code,
    gives a new key)."""
    import glipcore

    with session_factory(engine)() as s:
        rows = s.execute(
            select(Instance.path, Instance.sop_instance_uid).where(
                Instance.series_fk == ct.series_id
            )
        ).all()
    sop_of = {str(r[0]): str(r[1]) for r in rows}
    root = archive_root.resolve()
    sops = []
    for f in ct.files:
        try:
            rel = str(f.resolve().relative_to(root))
        except ValueError:
            rel = str(f)
        sops.append(sop_of.get(rel) or f"file:{rel}")
    parts = [
        ct.series_uid,
        *sorted(sops),
        f"dicomnode {__version__}",
        f"glipcore {glipcore.__version__}",
        f"export {EXPORT_FORMAT}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def export_dataset(
    engine: Engine, archive_root: Path, out_dir: Path, *, image_cache: Path | None = None
) -> DatasetExport:
    """Write the newest annotation of each study and its CT as a glip training set.

    With ``image_cache`` the images are kept there across exports, named by
    :func:`series_content_key`: a study whose series did not change is not read again
    (its file, and so the model-grid cache of training keyed on it, stays the same); the
    manifest points into the cache and :attr:`DatasetExport.cache_hits` counts reuses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = image_cache if image_cache is not None else out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    report = DatasetExport(manifest=out_dir / "manifest.csv")
    manifest: list[ManifestRow] = []
    provenance: dict[str, int] = {}
    for r in annotation_rows(engine):
        a = r.annotation
        case = case_id(r.study_uid)
        try:
            ct = study_ct(engine, archive_root, a.study_fk, series_uid=r.series_uid)
            if image_cache is not None:
                path = images / f"{series_content_key(engine, archive_root, ct)}.nii.gz"
                if path.is_file():
                    report.cache_hits += 1
                else:
                    _save_atomic(volume_of_files(ct.files), path)
            else:
                path = save_nifti(volume_of_files(ct.files), images / f"{case}.nii.gz")
        except (CtLookupError, SeriesLoadError) as exc:
            report.skipped.append((a.id, str(exc)))
            continue
        manifest.append(ManifestRow(case, path, hinge_points(a), a.quality or "", ostium_points(a)))
        provenance[case] = a.id
    write_manifest(
        manifest,
        report.manifest,
        header={
            "source": f"dicomnode annotations export (glip-node {__version__})",
            "exported_at": utcnow().isoformat(timespec="seconds"),
        },
    )
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    report.cases = len(manifest)
    return report


__all__ = [
    "AnnotationRow",
    "DatasetExport",
    "annotation_rows",
    "annotations_csv",
    "case_id",
    "export_dataset",
    "series_content_key",
]
