"""``dicomnode retrain`` end to end on tiny volumes and a tiny model: annotated archived
studies -> a candidate registered with the gate's decision, promoted or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from retrain_fixtures import Site, make_site
from sqlalchemy import select, update
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.db.models import Job, ModelVersion
from dicomnode.db.session import session_factory, session_scope
from dicomnode.learn.gate import PASSED
from dicomnode.learn.registry import active_model, resolve_bundle
from dicomnode.learn.retrain import RetrainOptions, run_retrain
from dicomnode.learn.retrain_dataset import UncoveredLandmarksError, holdout_study_uids
from dicomnode.process.worker import Worker
from glipcore import ALL_LANDMARKS
from glipcore.manifest import read_manifest
from tests.toy_cases import toy_bundle


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    s = make_site(sqlite_url, tmp_path)
    yield s
    s.close()


def test_retrain_registers_and_promotes_a_candidate(site: Site) -> None:
    site.import_points()
    held = holdout_study_uids(site.engine, 0.3, 2)
    assert 2 <= len(held) <= len(site.studies) - 2
    worker = Worker(site.cfg, site.engine)
    before = worker.load_model()
    out = run_retrain(site.cfg, site.engine)
    assert out.decision is not None and out.decision.decision == PASSED
    assert out.promoted and out.candidate is not None
    with session_factory(site.engine)() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.version == out.candidate)).one()
        assert mv.parent_version is not None and mv.parent_version == out.parent
        assert mv.parent_version.startswith("toy-")
        assert mv.decision == PASSED
        assert mv.decision_reasons is not None and len(mv.decision_reasons) == 5
        assert all(r.startswith("ok: ") for r in mv.decision_reasons)
        assert mv.comparison is not None
        assert mv.comparison["holdout"]["candidate"]["cases"] == len(held)
        assert set(mv.comparison["holdout"]["difference"]) == {"median_mm", "worst_mm", "sdr_2mm"}
        assert mv.comparison["reference"]["active"]["cases"] == 1
        assert mv.training is not None
        ds = mv.training["dataset"]
        assert len(ds["holdout_annotation_ids"]) == len(held)
        assert len(ds["train_annotation_ids"]) == len(site.studies) - len(held)
        assert len(ds["sha256"]) == 64
        assert mv.training["config"]["init_from"]  # fine-tuned from the active model
        assert "dicomnode" in mv.training["code_version"]
        active = active_model(s)
        assert active is not None and active.version == out.candidate
        # the workers' bundle: what Worker.load_model resolves before each job
        assert resolve_bundle(s, site.cfg) == Path(mv.path)
    assert holdout_study_uids(site.engine, 0.3, 2) == held  # the same studies next time
    # a running worker switches to the promoted candidate before its next job
    with session_scope(session_factory(site.engine)) as s:
        s.execute(update(Job).values(state="cancelled"))
    assert worker.process_one() is None
    assert worker.predictor is not None
    assert (before, worker.predictor.model_version) == (out.parent, out.candidate)
    assert out.parent is not None
    _check_commands(site, out.candidate, out.parent)


def _check_commands(site: Site, candidate: str, parent: str) -> None:
    config = site.tmp / "node.yaml"
    config.write_text(yaml.safe_dump(site.cfg.model_dump(mode="json")))

    def run(*args: str) -> str:
        res = CliRunner().invoke(app, [*args, "--config", str(config)])
        assert res.exit_code == 0, res.output
        return res.output

    shown = run("models", "show", candidate)
    assert "held-out studies" in shown and "phantom reference set" in shown
    assert "median mm" in shown and "SDR 2mm" in shown and "gate: passed" in shown
    assert f"trained from: {parent}" in shown and shown.count("ok: ") == 5
    assert "retrain: last candidate" in run("status") and "passed (active)" in run("status")
    # the parent was the configuration's bundle (never promoted): rollback returns to it
    assert parent in run("models", "rollback")
    with session_factory(site.engine)() as s:
        assert active_model(s) is None


def test_dry_run_builds_the_dataset_only(sqlite_url: str, tmp_path: Path) -> None:
    site = make_site(sqlite_url, tmp_path, studies=4, phantom_cases=1)
    try:
        _dry_run(site)
    finally:
        site.close()


def _dry_run(site: Site) -> None:
    site.import_points()
    out = run_retrain(site.cfg, site.engine, RetrainOptions(dry_run=True))
    assert out.candidate is None
    held = holdout_study_uids(site.engine, 0.3, 2)
    assert len(out.dataset.train_annotations) == len(site.studies) - len(held)
    rows = read_manifest(out.run_dir / "dataset" / "train.csv", check_paths=False)
    assert len(rows) == len(out.dataset.train_annotations) + 1
    assert out.dataset.phantom_cases == 1 and rows[-1].case_id.startswith("phantom-7000-")
    assert out.dataset.cache_hits == 0
    again = run_retrain(site.cfg, site.engine, RetrainOptions(dry_run=True))
    assert again.dataset.cache_hits == len(site.studies)  # the second retrain reuses the images
    assert again.dataset.sha256 == out.dataset.sha256
    with session_factory(site.engine)() as s:
        assert active_model(s) is None


def test_five_landmark_retrain_needs_a_case_that_knows_the_ostia(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Hinge-only annotations and no phantoms cannot teach a five-landmark model its ostia:
    refused before training, saying how to fix it; a mixed-in phantom carries them."""
    five = toy_bundle(tmp_path / "five", ALL_LANDMARKS, widths=(4, 8, 16))
    site = make_site(sqlite_url, tmp_path, studies=4, bundle=five, phantom_cases=0)
    try:
        site.import_points()
        with pytest.raises(UncoveredLandmarksError, match=r"predicts LCO, RCO .*phantom_cases"):
            run_retrain(site.cfg, site.engine, RetrainOptions(dry_run=True))
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump(site.cfg.model_dump(mode="json")))
        res = CliRunner().invoke(app, ["retrain", "--dry-run", "--config", str(config)])
        assert res.exit_code == 1 and "no training case knows them" in " ".join(res.output.split())
        mixed = site.cfg.model_copy(
            update={"retrain": site.cfg.retrain.model_copy(update={"phantom_cases": 1})}
        )
        out = run_retrain(mixed, site.engine, RetrainOptions(dry_run=True))
        rows = read_manifest(out.run_dir / "dataset" / "train.csv", check_paths=False)
        (phantom,) = [r for r in rows if r.case_id.startswith("phantom-7000-")]
        assert np.all(np.isfinite(phantom.points(("LCO", "RCO"))))
    finally:
        site.close()
