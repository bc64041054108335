"""Training: a tiny run lowers the landmark error; resume; reproducible CV splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glipcore.dataset import CropConfig
from glipcore.metrics import euclidean_errors
from glipcore.phantom_cases import PhantomData
from glipcore.train import (
    CVConfig,
    DataConfig,
    OptimConfig,
    TrainConfig,
    make_split,
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


def test_run_cross_validates_and_writes_a_verified_bundle(tmp_path: Path) -> None:
    from glipcore.bundle import load_bundle
    from glipcore.train import run

    cfg = TrainConfig(
        name="tiny-run",
        out_dir=tmp_path / "run",
        seed=5,
        threads=2,
        data=DataConfig(phantom=PhantomData(cases=10, preset="model"), cache_dir=tmp_path / "c"),
        model=UNetConfig(widths=(4, 8), norm="batch"),
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
