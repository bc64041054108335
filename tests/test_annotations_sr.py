"""SR annotations: the node's own SR edited in a viewer (file and C-STORE), our unmodified
SR refused, frames of reference, swapped cusps, SCOORD points on a CT image."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from annotation_fixtures import NAMES, Archived, archive_phantom_study
from pydicom.uid import generate_uid

from dicomnode.config import Identity
from dicomnode.db.models import Annotation, Event, Instance, Result
from dicomnode.db.session import session_factory, session_scope
from dicomnode.learn.annotation_input import Outcome
from dicomnode.learn.annotations import (
    hinge_points,
    import_file,
    import_received_series,
    import_received_sr,
    newest_annotations,
)
from dicomnode.learn.sr_points import name_of_text, sr_points
from dicomnode.process.outputs import OutputContext, build_sr

OFFSET = np.array([1.0, -0.5, 0.75])


@pytest.fixture
def study(sqlite_url: str, tmp_path: Path) -> Iterator[Archived]:
    a = archive_phantom_study(sqlite_url, tmp_path)
    yield a
    a.rig.store.close()
    a.engine.dispose()


def headers(a: Archived) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in a.files]


def context_extras() -> dict[str, Any]:
    """Fields another change is adding to OutputContext (the recipe version, the time)."""
    fields = OutputContext.__dataclass_fields__
    extras = {"recipe": "0123456789abcdef01234567", "content_time": datetime.now(UTC)}
    return {k: v for k, v in extras.items() if k in fields}


def our_sr(a: Archived, out: Path) -> Path:
    """The node's SR of the truth points, recorded as one of its results."""
    normal = np.cross(a.hinges[1] - a.hinges[0], a.hinges[2] - a.hinges[0])
    ctx = OutputContext(
        source=headers(a),
        volume=a.volume,
        landmarks_lps=dict(zip(NAMES, a.hinges, strict=True)),
        plane_origin=a.hinges.mean(axis=0),
        plane_normal=normal / np.linalg.norm(normal),
        confidence=dict.fromkeys(NAMES, 0.9),
        model_name="glip-unet",
        model_version="phantom-glip-0123456789ab",
        trained_on_phantom=True,
        warnings=[],
        identity=Identity(),
        **context_extras(),
    )
    ds = build_sr(ctx)
    ds.save_as(out, enforce_file_format=True)
    with session_scope(session_factory(a.engine)) as s:
        uid = str(ds.SOPInstanceUID)
        s.add(
            Result(
                job_fk=a.rig.jobs()[0].id, status="ok", outputs={"sr": [{"sop_instance_uid": uid}]}
            )
        )
    return out


def points_of(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every SCOORD3D POINT item of an SR content tree."""
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "SCOORD3D" and item.get("GraphicType") == "POINT":
            yield item
        yield from points_of(item)


def derived(src: Path, out: Path, *, shift: np.ndarray = OFFSET, **edit: str) -> Path:
    """What a viewer saves after moving the points: a new SOP Instance UID."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for item in points_of(ds):
        item.GraphicData = [float(v) for v in np.asarray(item.GraphicData) + shift]
        for k, v in edit.items():
            setattr(item, k, v)
    ds.save_as(out, enforce_file_format=True)
    return out


def archived_path(a: Archived, sop_uid: str) -> str:
    with session_factory(a.engine)() as s:
        return s.scalars(sa.select(Instance.path).where(Instance.sop_instance_uid == sop_uid)).one()


def test_names() -> None:
    assert name_of_text("RCC hinge point") == "RCC"
    assert name_of_text("lcc") == "LCC"
    assert name_of_text("Non-coronary sinus") == "NCC"
    assert name_of_text("Right sinus of Valsalva") == "RCC"
    assert name_of_text("Left coronary ostium") == "LCO"
    assert name_of_text("Inter-hinge distance RCC-LCC") is None
    assert name_of_text("Annulus plane") is None


def test_our_unmodified_sr_never_becomes_an_annotation(study: Archived, tmp_path: Path) -> None:
    own = our_sr(study, tmp_path / "own.dcm")
    found = sr_points(pydicom.dcmread(own))
    assert [p.name for p in found.points] == list(NAMES) and not found.problems
    report = import_file(study.engine, study.archive, own)
    assert report.rows[0].outcome == Outcome.REFUSED and "own results" in report.rows[0].reason
    study.rig.send([own])
    uid = str(pydicom.dcmread(own).SOPInstanceUID)
    got = import_received_sr(study.engine, study.archive, archived_path(study, uid), "PACS")
    assert got.outcome == Outcome.IGNORED and "own result" in got.reason
    with session_factory(study.engine)() as s:
        assert newest_annotations(s) == []


def test_viewer_edited_sr_imports_from_file_and_cstore(study: Archived, tmp_path: Path) -> None:
    own = our_sr(study, tmp_path / "own.dcm")
    edited = derived(own, tmp_path / "edited.dcm")
    report = import_file(study.engine, study.archive, edited, annotator="JD")
    assert [r.outcome for r in report.rows] == [Outcome.IMPORTED], report.rows
    received = derived(own, tmp_path / "received.dcm", shift=OFFSET * 2)
    study.rig.send([received])
    uid = str(pydicom.dcmread(received).SOPInstanceUID)
    path = archived_path(study, uid)
    got = import_received_sr(study.engine, study.archive, path, "PACS")
    assert got.outcome == Outcome.IMPORTED, got
    with session_factory(study.engine)() as s:
        series_id = s.scalars(sa.select(Instance.series_fk).where(Instance.path == path)).one()
    (again,) = import_received_series(study.engine, study.archive, series_id)
    assert again.outcome == Outcome.DUPLICATE and again.label == path
    with session_factory(study.engine)() as s:
        first, second = s.scalars(sa.select(Annotation).order_by(Annotation.id)).all()
    assert (first.source, first.annotator) == ("sr-file", "JD")
    assert (second.source, second.annotator, second.source_uid) == ("sr-received", "AE PACS", uid)
    assert second.supersedes_fk == first.id and second.source_ref == path
    np.testing.assert_allclose(hinge_points(first), study.hinges + OFFSET, atol=1e-3)
    np.testing.assert_allclose(hinge_points(second), study.hinges + 2 * OFFSET, atol=1e-3)


def test_sr_refusals(study: Archived, tmp_path: Path) -> None:
    own = our_sr(study, tmp_path / "own.dcm")
    other_frame = derived(own, tmp_path / "for.dcm", ReferencedFrameOfReferenceUID="1.2.3.4")
    report = import_file(study.engine, study.archive, other_frame)
    assert "wrong frame of reference" in report.rows[0].reason and not report.written
    swapped = pydicom.dcmread(derived(own, tmp_path / "swap.dcm"))
    items = {p.name: p for p in sr_points(swapped).points}
    by_data = {tuple(np.round(i.GraphicData, 3)): i for i in points_of(swapped)}
    lcc = by_data[tuple(np.round(items["LCC"].lps, 3))]  # type: ignore[arg-type]
    ncc = by_data[tuple(np.round(items["NCC"].lps, 3))]  # type: ignore[arg-type]
    lcc.GraphicData, ncc.GraphicData = list(ncc.GraphicData), list(lcc.GraphicData)
    swapped.save_as(tmp_path / "swap.dcm", enforce_file_format=True)
    study.rig.send([tmp_path / "swap.dcm"])
    got = import_received_sr(
        study.engine, study.archive, archived_path(study, str(swapped.SOPInstanceUID)), "PACS"
    )
    assert got.outcome == Outcome.REFUSED and "swapped" in got.reason
    with session_factory(study.engine)() as s:
        events = s.scalars(sa.select(Event.detail).where(Event.kind == "annotation_refused")).all()
        assert s.scalar(sa.select(sa.func.count(Annotation.id))) == 0
    assert len(events) == 1 and "swapped" in events[0]


def image_sr(a: Archived, out: Path) -> tuple[Path, np.ndarray]:
    """A highdicom SR with SCOORD POINTs on CT slices named by tracking identifier; the
    LPS points they mean."""
    hdrs = headers(a)
    by_k = {
        round(float(a.volume.to_ijk(np.array(h.ImagePositionPatient, float))[2])): h for h in hdrs
    }
    groups, expected = [], []
    for name, p in zip(NAMES, a.hinges, strict=True):
        i, j, k = a.volume.to_ijk(p)
        k = round(k)
        image = by_k[k]
        expected.append(a.volume.to_lps(np.array([i, j, k])))
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POINT,
                    graphic_data=np.array([[i + 0.5, j + 0.5]]),
                    source_image=hd.sr.SourceImageForRegion(
                        referenced_sop_class_uid=image.SOPClassUID,
                        referenced_sop_instance_uid=image.SOPInstanceUID,
                    ),
                ),
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=pydicom.sr.codedict.codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Doe^Jane"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=pydicom.sr.codedict.codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.EnhancedSR(
        evidence=hdrs,
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=77,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="viewer",
    )
    sr.save_as(out, enforce_file_format=True)
    return out, np.stack(expected)


def test_scoord_points_on_ct_images(study: Archived, tmp_path: Path) -> None:
    path, expected = image_sr(study, tmp_path / "image.dcm")
    report = import_file(study.engine, study.archive, path)
    assert [r.outcome for r in report.rows] == [Outcome.IMPORTED], report.rows
    with session_factory(study.engine)() as s:
        (a,) = newest_annotations(s)
    assert a.annotator == "Doe^Jane" and a.source == "sr-file"
    np.testing.assert_allclose(hinge_points(a), expected, atol=1e-3)
    assert np.max(np.abs(hinge_points(a) - study.hinges)) <= 0.63  # on the nearest slice


def test_the_assembler_imports_a_received_sr_when_its_series_completes(
    study: Archived, tmp_path: Path
) -> None:
    own = our_sr(study, tmp_path / "own.dcm")
    edited = derived(own, tmp_path / "corrected.dcm")
    study.rig.send([own, edited])  # our unmodified SR comes back too: never an annotation
    study.rig.sweep_after(5.0)
    with session_factory(study.engine)() as s:
        (ann,) = newest_annotations(s)
        assert ann.source == "sr-received"
        assert ann.source_uid == str(pydicom.dcmread(edited).SOPInstanceUID)
        assert s.scalars(sa.select(sa.func.count()).select_from(Annotation)).one() == 1
    np.testing.assert_allclose(hinge_points(ann), study.hinges + OFFSET, atol=1e-3)
