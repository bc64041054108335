"""bench.retrain's own pieces on a small archived study: the viewer-corrected SR it sends
(points at the truth, a new SOP Instance UID) imports as an annotation, the model version
it reads back from an SR, its truth CSV, and the scenario presets.

The retraining flow itself (dataset, candidate, gate, promotion, worker switch, poisoned
refusal) is covered by test_retrain*.py; the bench adds the node's processes and sizes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
from annotation_fixtures import archive_phantom_study
from test_annotations_sr import our_sr

from bench import retrain as bench
from dicomnode.db.session import session_factory
from dicomnode.learn.annotation_input import Outcome
from dicomnode.learn.annotations import hinge_points, import_file, newest_annotations
from dicomnode.learn.sr_points import sr_points
from glipcore import LANDMARKS
from glipcore.phantom import random_case


def test_corrected_sr_and_truth_csv_import_as_annotations(sqlite_url: str, tmp_path: Path) -> None:
    study = archive_phantom_study(sqlite_url, tmp_path)
    try:
        ours = our_sr(study, tmp_path / "ours.dcm")
        assert bench.sr_model_version(ours) == "phantom-glip-0123456789ab"
        truth = study.hinges + np.array([1.5, -1.0, 0.5])
        fixed = bench.corrected_sr(ours, truth, tmp_path / "fixed.dcm")
        assert fixed is not None
        ds = pydicom.dcmread(fixed)
        assert ds.SOPInstanceUID != pydicom.dcmread(ours).SOPInstanceUID
        moved = {p.name: p.lps for p in sr_points(ds).points if p.lps is not None}
        for i, name in enumerate(LANDMARKS):
            assert np.allclose(moved[name], truth[i], atol=1e-3)
        report = import_file(study.engine, study.archive, fixed)
        assert report.written and [r.outcome for r in report.rows] == [Outcome.IMPORTED]
        with session_factory(study.engine)() as s:
            (ann,) = newest_annotations(s)
            assert np.allclose(hinge_points(ann), truth, atol=1e-3)

        again = study.hinges + np.array([0.0, 0.0, 1.0])
        csv = bench.write_csv(tmp_path / "truth.csv", {study.study_uid: again}, "site")
        report = import_file(study.engine, study.archive, csv)
        assert [r.outcome for r in report.rows] == [Outcome.IMPORTED], report.rows
        with session_factory(study.engine)() as s:
            (ann,) = newest_annotations(s)  # the CSV row supersedes the SR's points
            assert np.allclose(hinge_points(ann), again, atol=1e-3)
    finally:
        study.rig.store.close()
        study.engine.dispose()


def test_scenarios_change_one_thing() -> None:
    assert set(bench.SCENARIOS) >= {"heavy-hinge-calcium", "low-contrast", "low-dose"}
    assert bench.SCENARIOS["difficult-site"].calcium == "heavy"
    assert bench.SCENARIOS["heavy-hinge-calcium"].cli == ("--calcium", "heavy", "--hinge-calcium")
    case = random_case(5, 0)
    low = bench.SCENARIOS["low-contrast"].change
    dose = bench.SCENARIOS["low-dose"].change
    assert low is not None and dose is not None
    changed = low(case)
    assert changed.hu.blood == 180.0 != case.hu.blood
    assert {k: v for k, v in asdict(changed.hu).items() if k != "blood"} == {
        k: v for k, v in asdict(case.hu).items() if k != "blood"
    }
    assert changed.root == case.root and changed.scan == case.scan
    noisy = dose(case)
    assert noisy.scan.noise_sd_hu == 3.0 * case.scan.noise_sd_hu
    assert noisy.hu == case.hu


def test_node_config_sizes_the_gate_to_the_cases(tmp_path: Path) -> None:
    small = bench.node_config(tmp_path, bench.Options(cases=6, budget_min=2.0))
    assert small.retrain.holdout_min == 2 and small.retrain.gate.min_holdout_studies == 2
    assert small.retrain.promote == "auto" and small.retrain.budget_min == 2.0
    assert small.retrain.phantom_cases == 0
    full = bench.node_config(tmp_path, bench.Options(phantom_cases=8))
    assert full.retrain.phantom_cases == 8
    assert full.retrain.holdout_min == 5 and full.retrain.gate.min_holdout_studies == 5
    assert any(a.ae_title == bench.CALLING_AE for a in full.access.allowed)
