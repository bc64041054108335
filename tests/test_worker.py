"""The worker on real archived phantom series (fast preset) with the shipped model:
result rows, output files, planned deliveries, failures, retries, fencing, withholding."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicomnode.db.models import Delivery, Event, Job, Result, utcnow
from dicomnode.process.jobs import claim_job
from dicomnode.process.worker import Worker
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors

SEED = 880_001
DEST = [
    {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 1,
        "kinds": ["sr", "keyimage"],
    }
]


@pytest.fixture(scope="module")
def fast_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Any]:
    vol, truth = phantom.generate(SEED, 0, "fast")
    out = tmp_path_factory.mktemp("fast-ct")
    return write_ct_series(vol, out, SeriesMeta.synthetic(SEED, "worker-0")), truth


def _queued(rig_factory: Any, files: list[Path], **overrides: Any) -> Any:
    rig = rig_factory(destinations=DEST, **overrides)
    rig.send(files)
    rig.sweep_after(5)
    jobs = rig.jobs()
    assert [j.state for j in jobs] == ["queued"]
    return rig


def test_worker_processes_a_job(rig_factory: Any, fast_case: tuple[list[Path], Any]) -> None:
    files, truth = fast_case
    rig = _queued(rig_factory, files)
    w = Worker(rig.cfg, rig.engine, worker_id="test-worker")
    outcome = w.process_one()
    assert outcome is not None and outcome.state == "done", outcome
    assert w.process_one() is None  # queue empty
    with rig.sessions() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == "done" and job.lease_token is None and job.worker_id == "test-worker"
        res = s.scalars(select(Result)).one()
        pts = np.array([res.landmarks_lps[n] for n in ("RCC", "LCC", "NCC")])
        assert np.all(euclidean_errors(pts, truth.landmarks_lps) < 4.0)
        assert res.status in ("ok", "flagged")
        assert res.model_version and res.model_version.startswith("phantom-glip-")
        assert {"load", "resample", "inference", "decode", "sizing", "encode"} <= set(
            res.timings or {}
        )
        # The annulus sized on the predicted plane; the shipped model also finds the ostia.
        m = res.measurements or {}
        assert abs(m["annulus_area_mm2"] / truth.annulus_area_mm2 - 1.0) < 0.15, m
        assert m["annulus_min_diameter_mm"] <= m["annulus_max_diameter_mm"]
        assert "annulus_sizing_refusal" not in m
        truth_heights = [truth.measurements[f"{s}_ostium_height_mm"] for s in ("left", "right")]
        assert abs(m["lco_height_mm"] - truth_heights[0]) < 2.0, m
        assert abs(m["rco_height_mm"] - truth_heights[1]) < 2.0, m
        assert len((res.outputs or {})["keyimage"]) == 5  # three views and one per ostium
        outputs = res.outputs or {}
        for kind in ("sr", "seg", "keyimage"):
            assert outputs.get(kind), kind
            for o in outputs[kind]:
                ds = dcmread(o["path"], stop_before_pixels=True)
                assert ds.SOPInstanceUID == o["sop_instance_uid"]
                assert (
                    ds.StudyInstanceUID
                    == dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
                )
        assert outputs["png"] and all(
            Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in outputs["png"]
        )
        # The destination takes SR and key images only.
        kinds = sorted(d.kind for d in s.scalars(select(Delivery)))
        assert kinds == sorted(
            ["sr"] * len(outputs["sr"]) + ["keyimage"] * len(outputs["keyimage"])
        )
        assert all(d.state == "pending" for d in s.scalars(select(Delivery)))
        assert "job_done" in s.scalars(select(Event.kind)).all()


def test_reprocessing_gives_the_same_uids(
    rig_factory: Any, fast_case: tuple[list[Path], Any]
) -> None:
    files, _ = fast_case
    rig = _queued(rig_factory, files)
    w = Worker(rig.cfg, rig.engine)
    assert (w.process_one() or None) is not None
    with rig.sessions() as s:
        first = s.scalars(select(Result)).one().outputs
        job = s.scalars(select(Job)).one()
    from dicomnode.operate.admin import retry_job

    retry_job(rig.engine, job.id)
    assert w.process_one() is not None
    with rig.sessions() as s:
        second = s.scalars(select(Result).order_by(Result.id.desc())).first()
        assert second is not None and second.outputs is not None and first is not None
        for kind in ("sr", "seg", "keyimage"):
            assert [o["sop_instance_uid"] for o in second.outputs[kind]] == [
                o["sop_instance_uid"] for o in first[kind]
            ]
            # The same job encoded again: the same bytes (times come from the job).
            assert [Path(o["path"]).read_bytes() for o in second.outputs[kind]] == [
                Path(o["path"]).read_bytes() for o in first[kind]
            ]


def test_missing_archive_files_fail_the_job_for_good(
    rig_factory: Any, fast_case: tuple[list[Path], Any]
) -> None:
    files, _ = fast_case
    rig = _queued(rig_factory, files)
    for f in (rig.cfg.archive_dir).rglob("*.dcm"):
        f.unlink()
        break
    outcome = Worker(rig.cfg, rig.engine).process_one()
    assert outcome is not None and outcome.state == "failed"
    with rig.sessions() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == "failed" and "missing" in (job.reason or "")
        assert s.scalars(select(Result)).first() is None


def test_transient_error_is_retried_then_failed(
    rig_factory: Any, fast_case: tuple[list[Path], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = fast_case
    rig = _queued(rig_factory, files, worker={"max_attempts": 2})
    w = Worker(rig.cfg, rig.engine)
    w.load_model()
    assert w.predictor is not None

    def boom(*_a: Any, **_k: Any) -> Any:  # an inference fault cannot be produced for real
        raise MemoryError("simulated allocation failure")

    monkeypatch.setattr(w.predictor, "predict", boom)
    first = w.process_one()
    assert first is not None and first.state == "queued" and "attempt 1" in first.detail
    second = w.process_one()
    assert second is not None and second.state == "failed" and "MemoryError" in second.detail
    assert w.process_one() is None


def test_lost_lease_writes_nothing(rig_factory: Any, fast_case: tuple[list[Path], Any]) -> None:
    files, _ = fast_case
    rig = _queued(rig_factory, files, worker={"lease_s": 5})
    w = Worker(rig.cfg, rig.engine)
    w.load_model()
    mine = claim_job(rig.engine, "slow", lease_s=5, max_attempts=3)
    assert mine is not None
    thief = claim_job(
        rig.engine, "fast", lease_s=600, max_attempts=3, now=utcnow() + timedelta(seconds=30)
    )
    assert thief is not None and thief.job_id == mine.job_id
    outcome = w.run_job(mine)
    assert outcome.state == "lost"
    with rig.sessions() as s:
        assert s.scalars(select(Result)).first() is None
        assert s.scalars(select(Delivery)).first() is None
        assert s.scalars(select(Job)).one().worker_id == "fast"


def test_withheld_result_is_not_delivered(
    rig_factory: Any, fast_case: tuple[list[Path], Any]
) -> None:
    files, _ = fast_case
    rig = _queued(
        rig_factory,
        files,
        plausibility={"plane_tilt_deg": [0.0, 1.0]},  # withheld by default
    )
    outcome = Worker(rig.cfg, rig.engine).process_one()
    assert outcome is not None and outcome.state == "done"
    with rig.sessions() as s:
        res = s.scalars(select(Result)).one()
        assert res.status == "withheld" and any("tilt" in f for f in res.flags or [])
        assert s.scalars(select(Delivery)).first() is None
        assert "result_withheld" in s.scalars(select(Event.kind)).all()


def test_worker_command_once(
    rig_factory: Any, fast_case: tuple[list[Path], Any], tmp_path: Path
) -> None:
    import yaml
    from typer.testing import CliRunner

    from dicomnode.cli import app

    files, _ = fast_case
    rig = _queued(rig_factory, files)
    cfg_file = tmp_path / "node.yaml"
    cfg_file.write_text(yaml.safe_dump(rig.cfg.model_dump(mode="json")))
    r = CliRunner().invoke(app, ["--config", str(cfg_file), "worker", "--once"])
    assert r.exit_code == 0, r.output
    with rig.sessions() as s:
        assert s.scalars(select(Job.state)).one() == "done"
        assert s.scalars(select(Result)).one().status in ("ok", "flagged")


def test_worker_switches_to_a_promoted_model(
    rig_factory: Any, fast_case: tuple[list[Path], Any], tmp_path: Path
) -> None:
    import json
    import shutil

    from dicomnode.config import SHIPPED_BUNDLE
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.learn.registry import promote, register_bundle
    from dicomnode.operate.admin import retry_job

    files, _ = fast_case
    rig = _queued(rig_factory, files)
    w = Worker(rig.cfg, rig.engine)
    first = w.process_one()
    assert first is not None and first.state == "done"
    # A second bundle: the same weights under another name (hence another version).
    other = tmp_path / "other-bundle"
    shutil.copytree(SHIPPED_BUNDLE, other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["name"] = "phantom-glip-other"
    (other / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with session_scope(session_factory(rig.engine)) as s:
        version = promote(s, register_bundle(s, other).version).version
    retry_job(rig.engine, first.job_id)
    again = w.process_one()
    assert again is not None and again.state == "done"
    with rig.sessions() as s:
        models = [r.model_version for r in s.scalars(select(Result).order_by(Result.id))]
    assert models[0] != version and models[1] == version
