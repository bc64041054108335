"""Measured confidence: TTA passes map back to LPS, the calibrated score, the Predictor's
JSON and ``bench.confidence`` at a tiny size."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import confidence as bench
from glipcore import ALL_LANDMARKS
from glipcore import confidence as tta
from glipcore.decode import refine_ijk
from glipcore.geometry import ijk_to_lps, make_affine
from glipcore.predict import Predictor
from glipcore.volume import Volume
from tests.toy_cases import toy_bundle, toy_cases, toy_hu_volume


def _blob_grid(centre_ijk: tuple[float, float, float]) -> tuple[Volume, np.ndarray]:
    """A model-grid-like volume (1.6 mm, rotated frame off the origin) with one smooth
    bright blob; returns it and the blob centre in LPS mm."""
    z, y, x = 30, 34, 38
    affine = make_affine((-40.0, 12.5, 300.0), (1.6, 1.6, 1.6))
    kk, jj, ii = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    c = np.array(centre_ijk)
    d2 = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2
    arr = (0.1 + 0.8 * np.exp(-d2 / (2 * 2.5**2))).astype(np.float32)
    return Volume(arr, affine), ijk_to_lps(affine, c)


def _identity(image: torch.Tensor, fold: int) -> torch.Tensor:
    """The image itself as a one-landmark heatmap: its peak is the blob."""
    return image[None].clone()


def test_tta_passes_map_back_to_the_same_lps_point() -> None:
    grid, truth = _blob_grid((17.3, 15.6, 13.2))
    base = ijk_to_lps(grid.affine, refine_ijk(_identity(torch.from_numpy(grid.array), 0)))
    assert np.linalg.norm(base[0] - truth) < 0.2
    pts = tta.tta_points(grid, _identity, tta.TTA_PASSES)
    box = tta.tta_points(grid, _identity, tta.TTA_PASSES, around_lps=truth[None] + 3.0)
    assert np.linalg.norm(box[:, 0] - truth, axis=-1).max() < 0.3  # on a box: the same
    assert pts.shape == (len(tta.TTA_PASSES), 1, 3)
    err = np.linalg.norm(pts[:, 0] - truth, axis=-1)
    assert err.max() < 0.3, err  # every moved grid finds the blob at the same LPS point
    # control: read on the unmoved grid's affine, the moved peaks are off
    wrong = []
    for p in tta.TTA_PASSES:
        moved = tta.augment_grid(grid, p)
        ijk = refine_ijk(_identity(torch.from_numpy(moved.array), 0))
        wrong.append(np.linalg.norm(ijk_to_lps(grid.affine, ijk)[0] - truth))
    assert min(wrong) > 0.6
    assert np.allclose(tta.rms_spread_mm(pts, truth[None]), np.sqrt((err**2).mean()))


def test_whole_voxel_shift_is_exact_and_intensity_scales() -> None:
    grid, _ = _blob_grid((17.0, 15.0, 13.0))
    moved = tta.augment_grid(grid, tta.TtaPass((2.0, -1.0, 3.0), intensity=1.5))
    assert np.allclose(moved.affine[:3, 3], ijk_to_lps(grid.affine, [2.0, -1.0, 3.0]))
    # moved voxel (i, j, k) holds the source voxel (i + 2, j - 1, k + 3), scaled
    np.testing.assert_allclose(
        moved.array[5:20, 5:20, 5:20], 1.5 * grid.array[8:23, 4:19, 7:22], rtol=1e-5
    )
    assert moved.array[:, :, -2:].max() == 0.0  # beyond the source: air


def test_score_is_monotone_in_spread_and_sharpness() -> None:
    spreads = [0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0]
    s = [tta.score(0.0, d, 400.0, sharpness_ref=300.0, tta_passes=2) for d in spreads]
    assert all(0.0 <= v <= 1.0 for v in s)
    assert all(a > b for a, b in itertools.pairwise(s)), s
    fold = [tta.score(d, 0.3, 400.0, sharpness_ref=300.0, n_folds=4) for d in spreads]
    assert all(a > b for a, b in itertools.pairwise(fold)), fold
    sharp = [tta.score(0.0, 0.5, h, sharpness_ref=300.0, tta_passes=2) for h in (50, 200, 800)]
    assert sharp[0] <= sharp[1] <= sharp[2] and sharp[0] < sharp[2]
    # Fold and TTA spreads are pooled on one scale: the same spread in both scores as that
    # spread alone (a root sum of squares counted a two-fold ensemble's disagreement twice).
    for d in (0.3, 1.0, 3.0):
        both = tta.score(d, d, 400.0, sharpness_ref=300.0, tta_passes=2, n_folds=2)
        assert both == pytest.approx(tta.score(0.0, d, 400.0, sharpness_ref=300.0, tta_passes=2))
    assert tta.combined_spread_mm(0.6, 0.8) == pytest.approx(((0.36 + 0.64) / 2) ** 0.5)
    assert tta.combined_spread_mm(0.0, 0.8) == 0.8 and tta.combined_spread_mm(0.5, 0.0, 2) == 0.5
    assert tta.calibration_for(0, 1) is tta.SHARPNESS_ONLY
    assert tta.calibration_for(2, 1) is tta.calibration_for(0, 3) is tta.CALIBRATION
    with pytest.raises(ValueError, match="spread_coef"):
        tta.Calibration(0.0, 1.0, 1.0)


def test_predictor_json_keeps_its_fields_and_tta_leaves_landmarks(tmp_path: Path) -> None:
    path = toy_bundle(tmp_path / "b5", ALL_LANDMARKS, widths=(4, 8))
    vol, _ = toy_hu_volume(2, ostia=True)
    plain = Predictor(path, threads=1, tta_passes=0).predict(vol)
    pred = Predictor(path, threads=1, tta_passes=2).predict(vol)
    np.testing.assert_array_equal(pred.landmarks_lps, plain.landmarks_lps)
    d = pred.to_dict()
    assert set(d["confidence"]) == set(ALL_LANDMARKS)  # follows the bundle's landmarks
    for name, c in d["confidence"].items():
        old_fields = {"score", "fold_spread_mm", "sharpness", "coherence"}
        assert old_fields | {"tta_spread_mm", "tta_passes", "peak_score"} == set(c), name
        assert 0.0 <= c["score"] <= 1.0 and c["tta_passes"] == 2 and c["tta_spread_mm"] >= 0
    assert {"inference", "decode", "confidence_tta", "resample"} <= set(d["timings_s"])
    for a, b in zip(plain.confidence, pred.confidence, strict=True):
        assert a.tta_spread_mm == 0.0 and a.tta_passes == 0
        assert a.sharpness == b.sharpness and a.peak_score == b.peak_score
    assert "confidence_tta" not in plain.timings_s
    with pytest.raises(ValueError, match=r"tta_passes must be 0\.\.4"):
        Predictor(path, threads=1, tta_passes=5)


def test_auroc_confusion_and_fit() -> None:
    bad = np.array([True, True, False, False, False])
    assert bench.auroc(np.array([0.1, 0.2, 0.5, 0.6, 0.9]), bad) == 1.0
    assert bench.auroc(np.array([0.9, 0.3, 0.5, 0.6, 0.1]), bad) == pytest.approx(2 / 6)
    assert bench.auroc(np.full(5, 0.5), bad) == 0.5
    assert bench.confusion(np.array([0.1, 0.5, 0.3, 0.6, 0.9]), bad, 0.4) == {
        "caught": 1,
        "missed": 1,
        "false_flags": 1,
        "passed": 2,
    }
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        spread = float(rng.uniform(0.05, 3.0))
        err = float(abs(rng.normal(0, 0.3)) + 1.5 * spread)  # error grows with spread
        rows.append(bench.Row("x", f"c{i}", "RCC", err, 400.0, 0.0, spread, 1.0, 1.0))
    cal = bench.fit_calibration(rows, 300.0, with_spread=True)
    assert cal.spread_coef < -1.0
    p_small = tta.score(0.0, 0.2, 400.0, sharpness_ref=300.0, calibration=cal)
    p_large = tta.score(0.0, 2.5, 400.0, sharpness_ref=300.0, calibration=cal)
    assert p_small > 0.8 and p_large < 0.2


def test_bench_runs_at_a_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = toy_bundle(tmp_path / "b", widths=(4, 8))
    held = toy_cases(1, seed=1)
    calc = toy_cases(2, seed=2)
    out = tmp_path / "out"
    res = bench.run(
        path,
        cases=1,
        calcified_chunk=1,
        max_calcified=2,
        min_bad=1000,  # never reached: grows to max_calcified
        tta_passes=1,
        threads=1,
        out=out,
        n_boot=50,
        progress=False,
        fit=True,
        held_out=lambda n: held[:n],
        calcified=lambda n: calc[:n],
    )
    text = capsys.readouterr().out
    assert res.calcified_cases == 2 and len(res.rows) == 3 * 3 and len(res.costs) == 3
    assert all(c.tta_s > 0 for c in res.costs)
    for key in ("AUROC", "new / old", "caught", "fewer than 1000 bad", "fitted CALIBRATION"):
        assert key in text, key
    lines = (out / "confidence.csv").read_text().splitlines()
    assert len(lines) == 1 + 9 and lines[0].startswith("cohort,case_id,landmark,error_mm,bad")
    assert sum(line.startswith("heavy+hinge,") for line in lines) == 6
    assert (out / "roc.png").stat().st_size > 1000
