"""Annotations: checks, CSV import (all or nothing), versions, export as a glip training
set, the `dicomnode annotations` commands, and migration 0003 on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from annotation_fixtures import (
    HINGE_COLUMNS,
    OSTIUM_COLUMNS,
    Archived,
    archive_phantom_study,
    csv_text,
    point_cells,
)
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.db import migrate
from dicomnode.db.models import Annotation, Event
from dicomnode.db.session import make_engine, session_factory
from dicomnode.learn.annotation_checks import CheckLimits, CtGeometry, landmark_problems
from dicomnode.learn.annotation_export import annotation_rows, annotations_csv, export_dataset
from dicomnode.learn.annotation_input import Outcome
from dicomnode.learn.annotations import (
    hinge_points,
    import_file,
    newest_annotations,
    ostium_points,
    study_versions,
)
from glipcore.manifest import read_manifest
from glipcore.volume_io import load_nifti

COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", *HINGE_COLUMNS, *OSTIUM_COLUMNS]
COLUMNS += ["annotator", "quality"]


@pytest.fixture
def study(sqlite_url: str, tmp_path: Path) -> Iterator[Archived]:
    a = archive_phantom_study(sqlite_url, tmp_path)
    yield a
    a.rig.store.close()
    a.engine.dispose()


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("# annotations of the test\n" + csv_text(rows, COLUMNS))
    return path


def row(a: Archived, points: dict[str, np.ndarray] | None = None, **cells: str) -> dict[str, str]:
    return {
        "StudyInstanceUID": a.study_uid,
        **point_cells(points if points is not None else a.points()),
        "annotator": "JD",
        "quality": "2",
        **cells,
    }


# --------------------------------------------------------------------------- checks


def test_checks_refuse_what_cannot_be_right(study: Archived) -> None:
    geo = CtGeometry(study.volume.affine, study.volume.shape_zyx)
    good = study.points()
    assert landmark_problems(good, geo) == []
    swapped = {**good, "LCC": good["NCC"], "NCC": good["LCC"]}
    assert "swapped" in landmark_problems(swapped, geo)[0]
    close = {**good, "LCC": good["RCC"] + np.array([3.0, 0.0, 0.0])}
    assert any("RCC-LCC distance 3.0 mm" in p for p in landmark_problems(close, geo))
    far = {n: p + np.array([0.0, 0.0, 60.0]) for n, p in good.items()}
    assert any("outside the CT" in p for p in landmark_problems(far, geo))
    low = {**good, "LCO": study.hinges.mean(axis=0)}
    assert landmark_problems(low, geo) == ["LCO lies 0.0 mm above the annulus plane, not 3-30 mm"]
    assert landmark_problems({"RCC": good["RCC"]}, geo) == ["missing point LCC, NCC"]
    assert landmark_problems(good, geo, CheckLimits(hinge_distance_mm=(30, 40)))


# --------------------------------------------------------------------------- CSV import


def test_csv_import_versions_and_unchanged(study: Archived, tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", [row(study)])
    report = import_file(study.engine, study.archive, f)
    assert report.written and [r.outcome for r in report.rows] == [Outcome.IMPORTED]
    again = import_file(study.engine, study.archive, f)
    assert [r.outcome for r in again.rows] == [Outcome.UNCHANGED] and not again.refused
    moved = {n: p + np.array([0.5, -0.5, 0.0]) for n, p in study.points(ostia=False).items()}
    f2 = write_csv(tmp_path / "b.csv", [row(study, moved, quality="3+", annotator="")])
    second = import_file(study.engine, study.archive, f2, annotator="AB")
    assert second.rows[0].outcome == Outcome.IMPORTED
    with session_factory(study.engine)() as s:
        (newest,) = newest_annotations(s)
        versions = study_versions(s, newest.study_fk)
        events = s.scalars(sa.select(Event.kind).where(Event.kind == "annotation_added")).all()
    assert [v.id for v in versions] == [report.rows[0].annotation_id, newest.id]
    assert newest.supersedes_fk == versions[0].id and versions[0].supersedes_fk is None
    assert (newest.source, newest.annotator, newest.quality) == ("csv", "AB", "3+")
    assert newest.source_ref == "b.csv:3"
    np.testing.assert_allclose(hinge_points(newest), np.stack(list(moved.values())))
    assert ostium_points(newest) is None
    np.testing.assert_allclose(ostium_points(versions[0]), study.ostia)  # type: ignore[arg-type]
    assert len(events) == 2


def test_csv_file_with_a_bad_row_imports_nothing(study: Archived, tmp_path: Path) -> None:
    p = study.points(ostia=False)
    swapped = {**p, "LCC": p["NCC"], "NCC": p["LCC"]}
    rows = [
        row(study),
        row(study, swapped),
        row(study, StudyInstanceUID="1.2.3.4"),
        row(study, SeriesInstanceUID="1.2.3.5"),
        {**row(study), "NCC_z": ""},
        {**row(study), "LCC_x": "", "LCC_y": "", "LCC_z": ""},
        row(study, quality="5"),
    ]
    report = import_file(study.engine, study.archive, write_csv(tmp_path / "bad.csv", rows))
    assert not report.written
    reasons = [(r.label, r.outcome, r.reason) for r in report.rows]
    assert reasons[0][:2] == ("line 3", Outcome.CHECKED)
    assert "swapped" in reasons[1][2] and reasons[1][1] == Outcome.REFUSED
    assert "unknown study 1.2.3.4" in reasons[2][2]
    assert "series 1.2.3.5 is not archived" in reasons[3][2]
    assert reasons[4][2] == "NCC_z: missing value"
    assert reasons[5][2] == "missing point LCC"
    assert "quality '5'" in reasons[6][2]
    with session_factory(study.engine)() as s:
        assert s.scalar(sa.select(sa.func.count(Annotation.id))) == 0


def test_dry_run_writes_nothing(study: Archived, tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", [row(study)])
    report = import_file(study.engine, study.archive, f, dry_run=True)
    assert [r.outcome for r in report.rows] == [Outcome.CHECKED] and not report.written
    with session_factory(study.engine)() as s:
        assert newest_annotations(s) == []


# --------------------------------------------------------------------------- export


def test_export_dataset_and_csv_round_trip(study: Archived, tmp_path: Path) -> None:
    import_file(study.engine, study.archive, write_csv(tmp_path / "a.csv", [row(study)]))
    out = export_dataset(study.engine, study.archive, tmp_path / "ds")
    assert out.cases == 1 and out.skipped == []
    (case,) = read_manifest(out.manifest)
    np.testing.assert_allclose(case.landmarks, study.hinges)
    np.testing.assert_allclose(case.points(("LCO", "RCO")), study.ostia)
    assert case.quality == "2" and study.study_uid not in out.manifest.read_text()
    vol = load_nifti(case.path)
    assert vol.shape_zyx == study.volume.shape_zyx
    np.testing.assert_allclose(vol.affine, study.volume.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, study.volume.array)
    text = annotations_csv(annotation_rows(study.engine))
    back = tmp_path / "back.csv"
    back.write_text(text)
    again = import_file(study.engine, study.archive, back)
    assert [r.outcome for r in again.rows] == [Outcome.UNCHANGED]


# --------------------------------------------------------------------------- commands


def test_commands(study: Archived, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "var_dir": str(study.cfg.var_dir),
                "database": {"url": study.cfg.database_url},
                "archive": {"min_free": "0"},
            }
        )
    )

    def run(*args: str) -> str:
        res = CliRunner().invoke(app, ["annotations", *args, "--config", str(config)])
        if res.exit_code != 0:
            raise AssertionError(f"exit {res.exit_code}: {res.output}")
        return res.output

    good = write_csv(tmp_path / "good.csv", [row(study)])
    p = study.points(ostia=False)
    bad = write_csv(tmp_path / "bad.csv", [row(study, {**p, "LCC": p["NCC"], "NCC": p["LCC"]})])
    res = CliRunner().invoke(app, ["annotations", "import", str(bad), "--config", str(config)])
    assert res.exit_code == 1 and "nothing imported" in res.output and "swapped" in res.output
    assert "imported" in run("import", str(good))
    assert "csv" in run("list") and "csv" in run("list", "--all")
    (listed,) = json.loads(run("list", "--json"))
    assert (listed["source"], listed["annotator"]) == ("csv", "JD")
    assert set(listed["landmarks_lps"]) == {"RCC", "LCC", "NCC", "LCO", "RCO"}
    shown = run("show", study.study_uid)
    assert "(in use)" in shown and "RCC" in shown and study.series_uid in shown
    assert "wrote 1 case(s)" in run("export", "--dataset", str(tmp_path / "ds"))
    assert (tmp_path / "ds" / "manifest.csv").is_file()
    assert study.study_uid in run("export", "--csv", "-")


# --------------------------------------------------------------------------- migration


def test_migration_0003_keeps_old_rows(db_url: str) -> None:
    """Rows written under 0002 survive the upgrade to head and the downgrade back."""
    migrate.upgrade(db_url, "0002")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO patients (id, patient_id, issuer, created_at) "
                    "VALUES (1, 'P', '', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO studies (id, study_instance_uid, patient_fk, created_at) "
                    "VALUES (1, '1.2.3', 1, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO annotations (study_fk, landmarks_lps, source, created_at) "
                    """VALUES (1, '{"RCC": [1, 2, 3]}', 'manual', CURRENT_TIMESTAMP)"""
                )
            )
        migrate.upgrade(db_url)
        columns = {c["name"] for c in sa.inspect(engine).get_columns("annotations")}
        assert {"annotator", "annotated_at", "source_ref", "source_uid", "supersedes_fk"} <= columns
        with session_factory(engine)() as s:
            old = s.scalars(sa.select(Annotation)).one()
            assert old.landmarks_lps == {"RCC": [1, 2, 3]}
            assert old.supersedes_fk is None and old.annotator is None
            s.add(Annotation(study_fk=1, landmarks_lps={}, supersedes_fk=old.id))
            s.commit()
        migrate.downgrade(db_url, "0002")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("annotations")}
        assert "supersedes_fk" not in columns and "annotator" not in columns
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM annotations")).scalar() == 2
    finally:
        engine.dispose()


def test_own_outputs_are_recognised_on_both_backends(engine: sa.Engine) -> None:
    from dicomnode.db.models import Job, Patient, Result, Series, Study, utcnow
    from dicomnode.learn.annotations import is_own_output

    now = utcnow()
    with session_factory(engine)() as s, s.begin():
        patient = Patient(patient_id="P")
        s.add(patient)
        s.flush()
        study = Study(study_instance_uid="1.2.3", patient_fk=patient.id)
        s.add(study)
        s.flush()
        series = Series(
            series_instance_uid="1.2.3.4",
            study_fk=study.id,
            first_received_at=now,
            last_received_at=now,
            burst_started_at=now,
        )
        s.add(series)
        s.flush()
        job = Job(series_fk=series.id, study_fk=study.id)
        s.add(job)
        s.flush()
        outputs = {"sr": [{"sop_instance_uid": "1.2.3.4.5.6"}], "png": ["/x/1.2.3.4.5.7.png"]}
        s.add(Result(job_fk=job.id, status="ok", outputs=outputs))
    assert is_own_output(engine, "1.2.3.4.5.6")
    assert not is_own_output(engine, "1.2.3.4.5")  # a prefix of ours is not ours
    assert not is_own_output(engine, "1.2.3.4.5.7")  # named only in a PNG path
