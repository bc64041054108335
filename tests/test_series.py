"""A job's archived series (and phase) becomes a glipcore Volume; geometry errors are
recorded on the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_fixtures import retag, write_series

from dicomnode.db.models import Job
from dicomnode.process.series import SeriesLoadError, job_files, load_job_volume
from glipcore.volume import load_dicom_series


def test_job_volume_equals_the_sent_series(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    files = write_series(tmp_path / "s", seed=20, case_id="vol")
    rig.send(files)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    vol = load_job_volume(rig.engine, rig.cfg.archive_dir, job.id)
    ref = load_dicom_series(files)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine)


def test_only_the_chosen_phase_is_loaded(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory(selection={"phase": 40})
    files = write_series(tmp_path / "s", seed=21, case_id="ph")
    p40 = retag(files, tmp_path / "a", "40", NominalPercentageOfCardiacPhase=40.0)
    p75 = retag(files, tmp_path / "b", "75", NominalPercentageOfCardiacPhase=75.0)
    rig.send(p75 + p40)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    assert job.phase_value == "40"
    chosen = job_files(rig.engine, rig.cfg.archive_dir, job.id)
    assert len(chosen) == len(files)
    vol = load_job_volume(rig.engine, rig.cfg.archive_dir, job.id)  # no duplicate positions
    assert vol.shape_zyx == load_dicom_series(p40).shape_zyx


def test_geometry_error_fails_the_job_with_a_readable_reason(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory()
    files = write_series(tmp_path / "s", seed=22, case_id="gap")
    del files[10]  # a missing slice: spacing no longer uniform
    rig.send(files)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    with pytest.raises(SeriesLoadError, match="series geometry"):
        load_job_volume(rig.engine, rig.cfg.archive_dir, job.id)
    with rig.sessions() as s:
        failed = s.get(Job, job.id)
        assert failed is not None
        assert failed.state == "failed"
        assert (failed.reason or "").startswith("series geometry: [non_uniform_spacing]")
    assert rig.events()[-1] == "job_failed"


def test_missing_archive_files_fail_the_job(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    rig.send(write_series(tmp_path / "s", seed=23, case_id="gone"))
    rig.sweep_after(2)
    (job,) = rig.jobs()
    victim = job_files(rig.engine, rig.cfg.archive_dir, job.id)[3]
    victim.unlink()
    with pytest.raises(SeriesLoadError, match="1 of 24 files are missing"):
        load_job_volume(rig.engine, rig.cfg.archive_dir, job.id)
