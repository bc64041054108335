"""``glip evaluate``: every landmark of the bundle that the manifest has, ostium heights
above the annulus plane, and a degenerate (collinear) prediction as a failed case, not a
crash. Predictions are fixed (the Predictor's output is replaced), so the numbers are
known exactly."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glipcore import ALL_LANDMARKS, LANDMARKS
from glipcore.cli import app
from glipcore.evaluate import evaluate
from glipcore.geometry import plane_or_none
from glipcore.manifest import ManifestRow, write_manifest
from glipcore.predict import LandmarkConfidence, Prediction, Predictor
from glipcore.volume import Volume
from glipcore.volume_io import save_nifti
from tests.toy_cases import toy_bundle, toy_hu_volume


def _cranial_height(hinges: np.ndarray, point: np.ndarray) -> float:
    """By hand: the normal of the hinge triangle, turned to point superior (LPS +z)."""
    n = np.cross(hinges[1] - hinges[0], hinges[2] - hinges[0])
    n = n / np.linalg.norm(n) * (1 if n[2] >= 0 else -1)
    return float((point - hinges.mean(axis=0)) @ n)


@pytest.fixture()
def manifest(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Three toy cases with ostia; the last does not know its RCO."""
    rows, truths = [], []
    for i in range(3):
        vol, lm = toy_hu_volume(40 + i, ostia=True)
        ostia = lm[3:].copy()
        if i == 2:
            ostia[1] = np.nan
        path = save_nifti(vol, tmp_path / f"case{i}.nii.gz")
        rows.append(ManifestRow(f"case{i}", path, lm[:3], "3+", ostia))
        truths.append(np.concatenate([lm[:3], ostia]))
    return write_manifest(rows, tmp_path / "manifest.csv"), truths


def _bundle(tmp_path: Path, landmarks: tuple[str, ...]) -> Path:
    offsets = np.zeros((len(landmarks), 3)).tolist()
    return toy_bundle(
        tmp_path / f"bundle{len(landmarks)}",
        landmarks,
        widths=(4, 8),
        metadata={"naive_offsets_mm": offsets},
    )


def _fixed_predictions(
    monkeypatch: pytest.MonkeyPatch, points: list[np.ndarray], names: tuple[str, ...]
) -> None:
    """The Predictor returns ``points`` (one (L, 3) per case, in manifest order)."""
    queue: Iterator[np.ndarray] = iter(points)

    def predict_grid(self: Predictor, grid: Volume) -> Prediction:
        pts = next(queue)
        conf = LandmarkConfidence(0.0, 500.0, 1.0, 1.0)
        return Prediction(
            names=names,
            landmarks_lps=pts,
            landmarks_argmax_lps=pts,
            fold_landmarks_lps=pts[None],
            hinge_plane=plane_or_none(pts[:3]),
            confidence=(conf,) * len(names),
            model_version=self.model_version,
            timings_s={"inference": 0.0, "decode": 0.0},
        )

    monkeypatch.setattr(Predictor, "predict_grid", predict_grid)


def _five_point_predictions(truths: list[np.ndarray]) -> list[np.ndarray]:
    """Case 0: everything 1 mm to the left; case 1: LCO 2 mm higher; case 2: LCC on RCC."""
    p0 = truths[0] + np.array([1.0, 0.0, 0.0])
    p1 = truths[1].copy()
    h = truths[1][:3]
    n = np.cross(h[1] - h[0], h[2] - h[0])
    p1[3] += 2.0 * n / np.linalg.norm(n) * (1 if n[2] >= 0 else -1)
    p2 = np.nan_to_num(truths[2], nan=0.0)
    p2[1] = p2[0]
    return [p0, p1, p2]


def test_five_landmarks_with_heights_and_a_degenerate_case(
    tmp_path: Path,
    manifest: tuple[Path, list[np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, truths = manifest
    bundle = _bundle(tmp_path, ALL_LANDMARKS)
    _fixed_predictions(monkeypatch, _five_point_predictions(truths), ALL_LANDMARKS)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["evaluate", "-m", str(bundle), "-d", str(path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "collinear" in result.output and "LCO height err" in result.output

    summary = json.loads((out / "summary.json").read_text())
    assert summary["landmarks"] == list(ALL_LANDMARKS)
    m = summary["methods"]["model"]
    assert m["degenerate_cases"] == 1
    assert (m["plane_distance_mm"]["n"], m["plane_distance_mm"]["undefined"]) == (2, 1)
    assert (m["plane_angle_deg"]["n"], m["plane_angle_deg"]["undefined"]) == (2, 1)
    assert m["plane_angle_deg"]["worst"] == pytest.approx(0.0, abs=1e-5)  # shifts, no tilt
    # RCO has no truth in case 2; the collapsed case still has its landmark errors
    assert (m["landmarks"]["RCO"]["n"], m["landmarks"]["RCO"]["undefined"]) == (2, 1)
    assert m["landmarks"]["RCC"]["n"] == 3
    assert m["landmarks"]["RCC"]["worst"] == pytest.approx(1.0)
    lco = m["ostium_height_error_mm"]["LCO"]
    assert (lco["n"], lco["undefined"]) == (2, 1)
    assert lco["median"] == pytest.approx(1.0) and lco["worst"] == pytest.approx(2.0)
    assert m["ostium_height_error_mm"]["RCO"]["worst"] == pytest.approx(0.0, abs=1e-9)

    with open(out / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model_plane_mm"] == "" for r in rows] == [False, False, True]
    assert rows[2]["model_LCO_height_mm"] == "" and rows[2]["true_RCO_height_mm"] == ""
    want = _cranial_height(truths[0][:3], truths[0][3])
    assert float(rows[0]["true_LCO_height_mm"]) == pytest.approx(want, abs=1e-3)
    assert float(rows[1]["model_LCO_height_err_mm"]) == pytest.approx(2.0, abs=1e-3)
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_three_landmark_bundle_reports_the_hinges_only(
    tmp_path: Path,
    manifest: tuple[Path, list[np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, truths = manifest
    bundle = _bundle(tmp_path, LANDMARKS)
    _fixed_predictions(monkeypatch, [t[:3] for t in truths], LANDMARKS)
    summary = evaluate(bundle, path, tmp_path / "r3", progress=False)
    assert summary["landmarks"] == list(LANDMARKS)
    m = summary["methods"]["model"]
    assert set(m["landmarks"]) == set(LANDMARKS) and m["ostium_height_error_mm"] == {}
    assert m["degenerate_cases"] == 0 and m["all_landmarks"]["worst"] == pytest.approx(0.0)
    assert m["sdr"]["1mm"] == 1.0
    header = (tmp_path / "r3" / "cases.csv").read_text().splitlines()[0]
    assert "LCO" not in header


def test_bundle_without_fitting_naive_offsets_is_refused(
    tmp_path: Path, manifest: tuple[Path, list[np.ndarray]]
) -> None:
    path, _ = manifest
    bundle = _bundle(tmp_path, ALL_LANDMARKS)
    m = json.loads((bundle / "bundle.json").read_text())
    m["metadata"]["naive_offsets_mm"] = [[0.0, 0.0, 0.0]] * 3
    (bundle / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"one offset per landmark \(5, 3\)"):
        evaluate(bundle, path, tmp_path / "r", progress=False)
