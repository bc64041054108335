"""Model bundle round trip, tamper refusal, and the Predictor on a volume in HU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glipcore import ALL_LANDMARKS, LANDMARKS
from glipcore.bundle import BundleError, load_bundle, save_bundle
from glipcore.geometry import plane_or_none
from glipcore.predict import (
    DegeneratePredictionError,
    LandmarkConfidence,
    Prediction,
    Predictor,
    infer_heatmaps,
)
from glipcore.preprocess import Preprocessing
from glipcore.unet import UNetConfig, build_unet
from tests.toy_cases import toy_bundle, toy_hu_volume

CFG = UNetConfig(widths=(4, 8, 16))


def _bundle(tmp_path: Path, folds: int = 2) -> tuple[Path, list[dict[str, torch.Tensor]]]:
    states = []
    for i in range(folds):
        torch.manual_seed(i)
        states.append(build_unet(CFG).state_dict())
    path = save_bundle(
        tmp_path / "b",
        name="toy-model",
        model_cfg=CFG,
        preprocessing=Preprocessing(),
        sigma_mm=1.0,
        fold_states=states,
        trained_on="phantom",
        metadata={"seed": 1},
    )
    return path, states


def test_bundle_round_trip(tmp_path: Path) -> None:
    path, states = _bundle(tmp_path)
    b = load_bundle(path)
    assert len(b.models) == 2 and b.phantom_trained
    assert b.version.startswith("toy-model-") and len(b.version) == len("toy-model-") + 12
    for model, state in zip(b.models, states, strict=True):
        for k, v in model.state_dict().items():
            # fp16 storage: equal to the fp16 rounding of the original
            assert torch.equal(v, state[k].half().float() if v.is_floating_point() else state[k])
    assert load_bundle(path).version == b.version  # deterministic


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path, _ = _bundle(tmp_path)
    f = path / "fold1.pt"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for fold1\.pt"):
        load_bundle(path)


def test_bundle_of_other_code_is_refused(tmp_path: Path) -> None:
    path, _ = _bundle(tmp_path)
    m = json.loads((path / "bundle.json").read_text())
    m["format"] = 99
    (path / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(path)
    m["format"] = 1
    m["model"]["widths"] = [4, 8, 32]  # weights no longer fit
    (path / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not fit the model config"):
        load_bundle(path)
    (path / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        load_bundle(path)


def test_editing_metadata_changes_the_version(tmp_path: Path) -> None:
    path, _ = _bundle(tmp_path)
    v1 = load_bundle(path).version
    m = json.loads((path / "bundle.json").read_text())
    m["metadata"]["seed"] = 2
    (path / "bundle.json").write_text(json.dumps(m))
    assert load_bundle(path).version != v1


def test_slab_inference_matches_whole_volume() -> None:
    torch.manual_seed(0)
    model = build_unet(CFG).eval()
    image = torch.rand(70, 24, 16)
    whole = infer_heatmaps(model, image, slab_z=1000)
    slabs = infer_heatmaps(model, image, slab_z=16, halo_z=24)
    assert slabs.shape == whole.shape == (3, 70, 24, 16)
    # the slabs' kept centres see (almost) the whole receptive field
    assert torch.allclose(slabs, whole, atol=1e-3 * float(whole.abs().max()))


def test_predictor_outputs_lps_plane_and_confidence(tmp_path: Path) -> None:
    path, _ = _bundle(tmp_path)
    vol, _ = toy_hu_volume(3)
    pred = Predictor(path, threads=1).predict(vol)
    assert pred.landmarks_lps.shape == (3, 3) and pred.fold_landmarks_lps.shape == (2, 3, 3)
    # every landmark lies inside the volume's LPS bounding box
    corners = vol.to_lps(
        np.array([[i, j, k] for i in (0, 39) for j in (0, 39) for k in (0, 31)], float)
    )
    assert np.all(pred.landmarks_lps >= corners.min(0) - 1e-6)
    assert np.all(pred.landmarks_lps <= corners.max(0) + 1e-6)
    # the plane passes through the predicted points
    assert np.allclose(pred.plane.distance(pred.landmarks_lps), 0, atol=1e-6)
    for c in pred.confidence:
        assert 0.0 <= c.score <= 1.0 and c.fold_spread_mm >= 0
    d = pred.to_dict()
    assert set(d["landmarks_lps_mm"]) == {"RCC", "LCC", "NCC"}
    assert {"resample", "inference", "decode"} <= set(d["timings_s"])


def test_bundle_landmarks_must_match_the_channels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 output channels but the bundle names 5"):
        toy_bundle(tmp_path / "x", ALL_LANDMARKS, out_channels=3)
    path, _ = _bundle(tmp_path)
    m = json.loads((path / "bundle.json").read_text())
    m["landmarks"] = ["RCC", "LCC", "LCO"]
    (path / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="must include the hinge points"):
        load_bundle(path)


def test_five_landmark_bundle_predicts_points_by_name(tmp_path: Path) -> None:
    path = toy_bundle(tmp_path / "b5", ALL_LANDMARKS)
    vol, _ = toy_hu_volume(3, ostia=True)
    pred = Predictor(path, threads=1).predict(vol)
    assert pred.names == ALL_LANDMARKS and len(pred.confidence) == 5
    by_name = pred.points_by_name()
    assert list(by_name) == list(ALL_LANDMARKS)
    for i, n in enumerate(ALL_LANDMARKS):
        assert np.array_equal(by_name[n], pred.landmarks_lps[i])
    assert np.array_equal(pred.points(), pred.landmarks_lps[:3])  # default: the hinges
    assert list(pred.points_by_name(LANDMARKS)) == list(LANDMARKS)
    with pytest.raises(ValueError, match="no landmark 'LM'"):
        pred.points(["LM"])


def test_degenerate_prediction_has_no_plane_but_stays_a_result() -> None:
    pts = np.array([[0.0, 0, 0], [0.0, 0, 0], [5.0, 1, 0]])  # two hinges on one spot
    conf = LandmarkConfidence(0.0, 500.0, 1.0, 1.0)
    pred = Prediction(
        names=LANDMARKS,
        landmarks_lps=pts,
        landmarks_argmax_lps=pts,
        fold_landmarks_lps=pts[None],
        hinge_plane=plane_or_none(pts),
        confidence=(conf, conf, conf),
        model_version="toy-000000000000",
    )
    assert pred.degenerate and pred.to_dict()["plane"] is None
    with pytest.raises(DegeneratePredictionError, match="collinear"):
        _ = pred.plane
