"""The retrain's training step: the generated configuration, fine-tuning's initial
weights, and the candidate made from the best checkpoint when the budget ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from dicomnode.learn.retrain_training import (
    TrainingError,
    bundle_from_checkpoint,
    run_training,
    steps_per_epoch,
    train_config,
)
from glipcore.bundle import load_bundle
from glipcore.dataset import CropConfig
from glipcore.phantom_cases import PhantomData
from glipcore.train import (
    CVConfig,
    DataConfig,
    OptimConfig,
    TrainConfig,
    initial_weights,
    train_fold,
)
from glipcore.unet import UNetConfig, build_unet
from tests.toy_cases import toy_bundle, toy_cases

TINY = UNetConfig(widths=(2, 4), out_channels=3)


def test_config_from_the_active_bundle_fine_tunes_it(tmp_path: Path) -> None:
    active = toy_bundle(tmp_path / "active", widths=(2, 4))
    cfg = train_config(
        active,
        None,
        train_manifest=tmp_path / "train.csv",
        train_cases=3,
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        threads=1,
        fine_tune=True,
    )
    assert cfg["model"]["widths"] == [2, 4] and cfg["init_from"] == str(active)
    assert cfg["cv"] == {"test_fraction": 0.0, "folds": 3, "train_folds": [0]}
    assert cfg["data"]["manifest"] == str(tmp_path / "train.csv")
    checked = TrainConfig.model_validate(cfg)
    assert checked.init_from == active and checked.optim.epochs > 100
    scratch = train_config(
        active,
        {"init_from": "x", "optim": {"epochs": 1}},
        train_manifest=tmp_path / "train.csv",
        train_cases=9,
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        threads=1,
        fine_tune=False,
    )
    assert "init_from" not in scratch and scratch["cv"]["folds"] == 5


def test_fine_tuning_starts_from_the_bundle_weights(tmp_path: Path) -> None:
    active = toy_bundle(tmp_path / "active", widths=(2, 4))
    expected = load_bundle(active).models[0].state_dict()
    got = initial_weights(active, fold=3)  # the bundle has one fold: its last
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_fine_tuning_to_more_landmarks_keeps_the_known_channels(tmp_path: Path) -> None:
    active = toy_bundle(tmp_path / "active", widths=(2, 4))  # RCC, LCC, NCC
    old = load_bundle(active).models[0].state_dict()
    five = ("RCC", "LCO", "LCC", "NCC", "RCO")  # new channels anywhere in the order
    torch.manual_seed(5)
    fresh = build_unet(UNetConfig(widths=(2, 4), out_channels=5)).state_dict()
    got = initial_weights(active, 0, five, fresh)
    for new_i, old_i in ((0, 0), (2, 1), (3, 2)):
        assert torch.equal(got["head.weight"][new_i], old["head.weight"][old_i])
        assert torch.equal(got["head.bias"][new_i], old["head.bias"][old_i])
    for new_i in (1, 4):
        assert torch.equal(got["head.weight"][new_i], fresh["head.weight"][new_i])
    assert torch.equal(got["encoders.0.0.weight"], old["encoders.0.0.weight"])
    build_unet(UNetConfig(widths=(2, 4), out_channels=5)).load_state_dict(got)
    with pytest.raises(ValueError, match="new model's weights"):
        initial_weights(active, 0, five)


def test_the_best_checkpoint_becomes_a_verified_bundle(tmp_path: Path) -> None:
    cfg = TrainConfig(
        name="ck",
        out_dir=tmp_path / "train",
        data=DataConfig(phantom=PhantomData(cases=5)),
        model=TINY,
        crop=CropConfig(size_zyx=(24, 24, 24), margin_vox=2),
        optim=OptimConfig(epochs=1, steps_per_epoch=1, batch_size=1),
        cv=CVConfig(folds=2),
        threads=1,
    )
    train_fold(
        cfg,
        toy_cases(2, seed=7),
        toy_cases(1, seed=8),
        sigma_mm=1.0,
        lam=10.0,
        fold=0,
        out_dir=tmp_path / "train" / "sigma1-lambda10" / "fold0",
        progress=False,
    )
    bundle = load_bundle(bundle_from_checkpoint(cfg, tmp_path / "train", tmp_path / "b"))
    assert bundle.manifest.metadata["stopped_at_deadline"] is True
    assert bundle.manifest.trained_on == "patients" and len(bundle.models) == 1
    with pytest.raises(TrainingError, match="before the first epoch"):
        bundle_from_checkpoint(cfg, tmp_path / "empty", tmp_path / "b2")


def test_training_stopped_before_any_epoch_gives_no_candidate(tmp_path: Path) -> None:
    cfg = {
        "name": "stopped",
        "out_dir": str(tmp_path / "run" / "train"),
        "bundle_dir": str(tmp_path / "run" / "bundle"),
        "data": {"phantom": {"cases": 5}},
        "model": TINY.model_dump(mode="json"),
    }
    ticks: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match="before the first epoch"):
        run_training(cfg, deadline=time.monotonic() + 0.5, tick=ticks.append, tick_s=0.1)
    assert time.monotonic() - t0 < 20  # stopped, not run to the end
    assert ticks and ticks[0].startswith("training")
    assert (tmp_path / "run" / "train.yaml").is_file()


def test_short_budgets_checkpoint_sooner() -> None:
    assert steps_per_epoch(None) == steps_per_epoch(20.0) == steps_per_epoch(60.0) == 50
    assert steps_per_epoch(2.0) == 5 and steps_per_epoch(0.5) == 5 and steps_per_epoch(8.0) == 20
