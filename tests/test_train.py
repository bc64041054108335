"""Training: a tiny run lowers the landmark error; resume; reproducible CV splits; a
five-landmark run with unknown ostia masked, to a bundle the Predictor reads."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from glipcore import ALL_LANDMARKS, LANDMARKS
from glipcore.bundle import save_bundle
from glipcore.dataset import CropConfig
from glipcore.metrics import euclidean_errors
from glipcore.phantom_cases import PhantomData
from glipcore.predict import Predictor
from glipcore.preprocess import Preprocessing
from glipcore.train import (
    CVConfig,
    DataConfig,
    OptimConfig,
    TrainConfig,
    check_coverage,
    load_config,
    make_split,
    naive_offsets,
    predict_cases,
    train_fold,
)
from glipcore.unet import UNetConfig, build_unet
from tests.toy_cases import toy_cases


def _cfg(tmp_path: Path, epochs: int) -> TrainConfig:
    return TrainConfig(
        name="toy",
        out_dir=tmp_path,
        seed=3,
        threads=2,
        data=DataConfig(phantom=PhantomData(cases=10)),
        model=UNetConfig(widths=(8, 16, 32), norm="batch"),
        crop=CropConfig(size_zyx=(24, 32, 32), margin_vox=4),
        optim=OptimConfig(epochs=epochs, steps_per_epoch=40, batch_size=2, lr=3e-3),
        cv=CVConfig(folds=2),
    )


def test_tiny_run_lowers_landmark_error(tmp_path: Path) -> None:
    train, val = toy_cases(8, seed=1), toy_cases(4, seed=2)
    cfg = _cfg(tmp_path, epochs=4)
    truth = np.stack([c.landmarks_lps for c in val])
    torch.manual_seed(cfg.seed * 1000)
    untrained = build_unet(cfg.model).eval()
    before = float(
        np.median(euclidean_errors(predict_cases([untrained], val, torch.device("cpu"))[0], truth))
    )

    result = train_fold(
        cfg, train, val, sigma_mm=2.0, lam=10.0, fold=0, out_dir=tmp_path / "f0", progress=False
    )

    assert len(result.history) == 4
    assert result.best_median_mm < 0.5 * before, (before, result.history)
    assert result.best_median_mm < 4.0
    # the kept checkpoint reproduces the reported validation error
    model = build_unet(cfg.model)
    model.load_state_dict(result.best_state)
    again = predict_cases([model.eval()], val, torch.device("cpu"))[0]
    assert np.median(euclidean_errors(again, truth)) == pytest.approx(result.best_median_mm)
    log = (tmp_path / "f0" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,loss,val_median_mm") and len(log) == 5


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    train, val = toy_cases(4, seed=4), toy_cases(2, seed=5)
    first = train_fold(
        _cfg(tmp_path, 1), train, val, sigma_mm=2, lam=10, fold=0, out_dir=tmp_path, progress=False
    )
    seen: list[float] = []
    second = train_fold(
        _cfg(tmp_path, 2),
        train,
        val,
        sigma_mm=2,
        lam=10,
        fold=0,
        out_dir=tmp_path,
        progress=False,
        on_epoch=lambda row: seen.append(row["epoch"]),
    )
    assert seen == [2]  # only the missing epoch ran
    assert second.history[0] == first.history[0]
    assert len(second.history) == 2


def test_cv_split_is_reproducible_and_disjoint() -> None:
    ids = [f"c{i:03d}" for i in range(50)]
    a = make_split(ids, seed=11, test_fraction=0.2, k=4)
    b = make_split(list(reversed(ids)), seed=11, test_fraction=0.2, k=4)
    c = make_split(ids, seed=12, test_fraction=0.2, k=4)
    assert a == b
    assert a.test != c.test
    assert len(a.test) == 10
    vals = [set(v) for _, v in a.folds]
    assert set().union(*vals) | set(a.test) == set(ids)
    assert sum(len(v) for v in vals) == 40  # validation chunks partition the CV part
    for tr, va in a.folds:
        assert not set(tr) & set(va) and not set(tr) & set(a.test)
        assert len(tr) + len(va) == 40


def test_split_refuses_too_few_cases() -> None:
    with pytest.raises(ValueError, match="cannot make 4 folds"):
        make_split(["a", "b", "c"], seed=0, test_fraction=0.0, k=4)


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom cache for the runs below (its key does not depend on the landmarks)."""
    return tmp_path_factory.mktemp("phantom-cache")


@pytest.mark.parametrize("landmarks", [LANDMARKS, ALL_LANDMARKS], ids=["hinges", "five"])
def test_run_cross_validates_and_writes_a_verified_bundle(
    tmp_path: Path, phantom_cache: Path, landmarks: tuple[str, ...]
) -> None:
    from glipcore.bundle import load_bundle
    from glipcore.train import run

    cfg = TrainConfig(
        name="tiny-run",
        out_dir=tmp_path / "run",
        seed=5,
        threads=2,
        landmarks=landmarks,
        data=DataConfig(phantom=PhantomData(cases=10, preset="model"), cache_dir=phantom_cache),
        model=UNetConfig(widths=(4, 8), norm="batch", out_channels=len(landmarks)),
        crop=CropConfig(size_zyx=(32, 32, 32), margin_vox=2),
        optim=OptimConfig(epochs=1, steps_per_epoch=3, batch_size=2),
        cv=CVConfig(folds=2, test_fraction=0.2),
    )
    result = run(cfg, progress=False)
    bundle = load_bundle(result.bundle_dir)
    assert len(bundle.models) == 2 and bundle.phantom_trained
    meta = bundle.manifest.metadata
    assert meta["test"]["cases"] == 2
    assert meta["sharpness_ref"] == pytest.approx(0.5 * meta["test"]["median_sharpness"], abs=0.1)
    assert meta["sharpness_ref"] > 0
    assert {f["fold"] for f in result.summary["folds"]} == {0, 1}
    assert bundle.manifest.landmarks == landmarks
    assert np.asarray(meta["naive_offsets_mm"]).shape == (len(landmarks), 3)
    assert len(meta["test"]["median_per_landmark_mm"]) == len(landmarks)


def test_config_names_its_landmarks_and_checks_the_channels(tmp_path: Path) -> None:
    base = {"data": {"phantom": {"cases": 10}}}
    assert TrainConfig.model_validate(base).landmarks == LANDMARKS
    five = TrainConfig.model_validate({**base, "landmarks": list(ALL_LANDMARKS)})
    assert five.model.out_channels == 5  # derived when not given
    with pytest.raises(ValidationError, match="out_channels is 3 but 5 landmarks"):
        TrainConfig.model_validate(
            {**base, "landmarks": list(ALL_LANDMARKS), "model": {"out_channels": 3}}
        )
    with pytest.raises(ValidationError, match="unknown landmarks"):
        TrainConfig.model_validate({**base, "landmarks": ["RCC", "LCC", "NCC", "LM"]})
    with pytest.raises(ValidationError, match="must include the hinge points"):
        TrainConfig.model_validate({**base, "landmarks": ["RCC", "LCC", "LCO"]})
    for f in sorted((Path(__file__).resolve().parents[1] / "configs").glob("train-*.yaml")):
        cfg = load_config(f)
        assert cfg.model.out_channels == len(cfg.landmarks), f


def test_five_landmark_run_with_unknown_ostia_gives_a_five_point_bundle(tmp_path: Path) -> None:
    nan = np.full(3, np.nan)
    train = toy_cases(6, seed=21, ostia=True)
    val = toy_cases(2, seed=22, ostia=True)
    # some cases lack an ostium (or both): masked out of the loss and the errors
    train[0] = dataclasses.replace(train[0], ostia_lps=None)
    train[1] = dataclasses.replace(train[1], ostia_lps=np.stack([nan, train[1].points(["RCO"])[0]]))
    val[0] = dataclasses.replace(val[0], ostia_lps=np.stack([val[0].points(["LCO"])[0], nan]))
    cfg = TrainConfig(
        name="toy5",
        out_dir=tmp_path,
        seed=4,
        threads=2,
        landmarks=ALL_LANDMARKS,
        data=DataConfig(phantom=PhantomData(cases=10)),
        model=UNetConfig(widths=(8, 16, 32), norm="batch", out_channels=5),
        crop=CropConfig(size_zyx=(24, 32, 32), margin_vox=4),
        optim=OptimConfig(epochs=2, steps_per_epoch=20, batch_size=2, lr=3e-3),
        cv=CVConfig(folds=2),
    )
    truth = np.stack([c.points(ALL_LANDMARKS) for c in val])
    torch.manual_seed(cfg.seed * 1000)
    untrained = build_unet(cfg.model).eval()
    before = euclidean_errors(predict_cases([untrained], val, torch.device("cpu"))[0], truth)
    result = train_fold(
        cfg, train, val, sigma_mm=2.0, lam=10.0, fold=0, out_dir=tmp_path / "f0", progress=False
    )
    err = result.val_errors_mm
    assert err.shape == (2, 5)
    assert np.isnan(err[0, 4]) and np.isfinite(np.delete(err.ravel(), 4)).all()
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert result.best_median_mm == pytest.approx(float(np.nanmedian(err)))
    assert result.best_median_mm < 0.7 * float(np.nanmedian(before)), result.history

    offsets = naive_offsets(train, Preprocessing(), cfg.landmarks)
    assert offsets.shape == (5, 3) and np.isfinite(offsets).all()
    path = save_bundle(
        tmp_path / "bundle",
        name=cfg.name,
        landmarks=cfg.landmarks,
        model_cfg=cfg.model,
        preprocessing=Preprocessing(),
        sigma_mm=2.0,
        fold_states=[result.best_state],
        trained_on="phantom",
        metadata={"naive_offsets_mm": offsets.tolist()},
    )
    assert json.loads((path / "bundle.json").read_text())["landmarks"] == list(ALL_LANDMARKS)
    pred = Predictor(path, threads=2, tta_passes=0).predict_grid(val[1].volume)
    assert pred.names == ALL_LANDMARKS and pred.landmarks_lps.shape == (5, 3)
    assert np.array_equal(pred.points(("LCO", "RCO")), pred.landmarks_lps[3:])
    assert set(pred.to_dict()["landmarks_lps_mm"]) == set(ALL_LANDMARKS)
    # the plane goes through the hinge points, picked by name
    assert np.allclose(pred.plane.distance(pred.points(LANDMARKS)), 0, atol=1e-6)
    # the bundle reproduces the kept checkpoint's validation points (fp16 weights: within
    # about a voxel)
    assert np.allclose(euclidean_errors(pred.landmarks_lps, truth[1]), err[1], atol=2.0)


def test_training_refuses_a_landmark_no_case_knows() -> None:
    cases = toy_cases(2, seed=23)  # no ostia
    with pytest.raises(ValueError, match=r"no training case has truth for \['LCO', 'RCO'\]"):
        check_coverage(cases, ALL_LANDMARKS)
