"""A job's archived series (and phase) becomes a glipcore Volume; geometry errors are
recorded on the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_fixtures import retag, write_series

from dicomnode.db.models import Job
from dicomnode.process.jobs import claim_job
from dicomnode.process.series import SeriesLoadError, job_files, volume_of_files
from dicomnode.process.worker import JobOutcome, Worker
from glipcore.dicom_loader import load_dicom_series
from glipcore.volume import Volume


def _job_volume(rig: Any, job_id: int) -> Volume:
    """What the worker loads for a job: its archived files, then their volume."""
    return volume_of_files(job_files(rig.engine, rig.cfg.archive_dir, job_id))


def _worker_runs_the_job(rig: Any) -> JobOutcome:
    """A worker claims and runs the queued job (a series that cannot load needs no model)."""
    claim = claim_job(rig.engine, "test-worker", lease_s=60, max_attempts=3)
    assert claim is not None
    return Worker(rig.cfg, rig.engine).run_job(claim)


def test_job_volume_equals_the_sent_series(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    files = write_series(tmp_path / "s", seed=20, case_id="vol")
    rig.send(files)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    vol = _job_volume(rig, job.id)
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
    vol = _job_volume(rig, job.id)  # no duplicate positions
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
        _job_volume(rig, job.id)
    assert _worker_runs_the_job(rig).state == "failed"
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
        _job_volume(rig, job.id)
