"""A poisoned retrain (the training split's annotations shifted by 10 mm) is refused by the
gate's error rules, not by the study count, and the active model stays.

The studies are learnable (a blob at each hinge point, :func:`retrain_fixtures.blob_ct`)
and the active model has learnt them, so the candidate fine-tuned on shifted points is
measurably worse on the clean held-out studies. (An LCC/NCC swap never gets this far: the
import refuses it, see test_annotations.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from retrain_fixtures import blob_ct, make_site
from sqlalchemy import select

from dicomnode.db.models import ModelVersion
from dicomnode.db.session import session_factory
from dicomnode.learn.registry import active_model, resolve_bundle
from dicomnode.learn.retrain import run_retrain
from dicomnode.learn.retrain_dataset import holdout_study_uids
from glipcore import LANDMARKS
from glipcore.bundle import save_bundle
from glipcore.dataset import Case, CropConfig
from glipcore.phantom_cases import PhantomData
from glipcore.preprocess import Preprocessing, to_model_grid
from glipcore.train import (
    CVConfig,
    DataConfig,
    GridConfig,
    OptimConfig,
    TrainConfig,
    train_fold,
)
from glipcore.unet import UNetConfig

WIDTHS = (8, 16, 32)
SIGMA_MM = 3.0
TEST_GATE = {
    "min_holdout_studies": 2,
    "median_margin_mm": 0.0,
    "worst_margin_mm": 2.0,
    "sdr2_margin": 0.0,
    # the blob models know nothing of phantoms: the reference set cannot judge them
    "reference_margin_mm": 1000.0,
}
"""The default error rules, sized for a site of six studies (two held out)."""


def _cases(seeds: range) -> list[Case]:
    prep = Preprocessing()
    out = []
    for s in seeds:
        vol, hinges, _ostia = blob_ct(s)
        out.append(Case(f"blob-{s}", to_model_grid(vol, prep), hinges, "3+", None))
    return out


def _trained_active(tmp: Path) -> Path:
    """An active model that has learnt the blob studies (other seeds than the site's)."""
    model = UNetConfig(widths=WIDTHS, norm="batch")
    cfg = TrainConfig(
        name="blob",
        out_dir=tmp / "pretrain",
        seed=3,
        threads=2,
        data=DataConfig(phantom=PhantomData(cases=10)),
        model=model,
        crop=CropConfig(size_zyx=(24, 24, 24), margin_vox=2),
        optim=OptimConfig(epochs=3, steps_per_epoch=30, batch_size=2, lr=3e-3),
        grid=GridConfig(sigma_mm=(SIGMA_MM,)),
        cv=CVConfig(folds=2),
    )
    fold = train_fold(
        cfg,
        _cases(range(131, 135)),
        _cases(range(135, 137)),
        sigma_mm=SIGMA_MM,
        lam=10.0,
        fold=0,
        out_dir=tmp / "pretrain" / "f0",
        progress=False,
    )
    assert fold.best_median_mm < 2.0, fold.history  # it has learnt the blobs
    return save_bundle(
        tmp / "active-blob",
        name="blob",
        landmarks=LANDMARKS,
        model_cfg=model,
        preprocessing=Preprocessing(),
        sigma_mm=SIGMA_MM,
        fold_states=[fold.best_state],
        trained_on="phantom",
    )


def _retrain_config(path: Path) -> Path:
    data: dict[str, Any] = {
        "name": "retrained-blob",
        "model": UNetConfig(widths=WIDTHS, norm="batch").model_dump(mode="json"),
        "crop": {"size_zyx": [24, 24, 24], "margin_vox": 2},
        "optim": {"epochs": 2, "steps_per_epoch": 20, "batch_size": 2, "lr": 3e-3},
        "grid": {"sigma_mm": [SIGMA_MM]},
        "augment": {"rotate_deg": 0.0},
        "cv": {"val_max_cases": 2},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_poisoned_candidate_is_refused_by_the_error_rules(sqlite_url: str, tmp_path: Path) -> None:
    site = make_site(
        sqlite_url,
        tmp_path,
        blobs=True,
        bundle=_trained_active(tmp_path),
        threads=2,
        gate=TEST_GATE,
        train_config=str(_retrain_config(tmp_path / "retrain.yaml")),
    )
    try:
        site.import_points()
        held = holdout_study_uids(site.engine, 0.3, 2)
        assert len(held) == 2
        shifted = {st.study_uid: 10.0 for st in site.studies if st.study_uid not in held}
        site.import_points(shifted, name="poisoned")
        with session_factory(site.engine)() as s:
            before = resolve_bundle(s, site.cfg)
        out = run_retrain(site.cfg, site.engine)
        assert out.decision is not None and not out.decision.passed and not out.promoted
        verdicts = {r.rule: r.ok for r in out.decision.rules}
        assert verdicts["enough_studies"] and verdicts["reference"]  # not the count's doing
        assert not verdicts["median"] and not verdicts["sdr_2mm"], out.decision.reasons()
        with session_factory(site.engine)() as s:
            mv = s.scalars(select(ModelVersion).where(ModelVersion.version == out.candidate)).one()
            assert mv.decision == "refused" and mv.active is False
            reasons = mv.decision_reasons or []
            assert reasons[0].startswith("ok: 2 held-out studies")
            assert any(r.startswith("FAILED: held-out median error") for r in reasons), reasons
            assert any(r.startswith("FAILED: held-out SDR at 2 mm") for r in reasons), reasons
            ds = mv.training["dataset"] if mv.training else {}
            first_ids = set(range(1, len(site.studies) + 1))
            # training used the poisoned (newer) versions, the held-out kept the clean ones
            assert not set(ds["train_annotation_ids"]) & first_ids
            assert set(ds["holdout_annotation_ids"]) <= first_ids
            table = (mv.comparison or {})["holdout"]
            # the poison moved the predictions: several mm worse on the clean studies
            assert table["candidate"]["median_mm"] > table["active"]["median_mm"] + 2.0, table
            assert table["active"]["median_mm"] < 2.0, table
            assert np.isfinite(table["difference"]["median_mm"]["lo"])
            assert active_model(s) is None  # nothing promoted
            assert resolve_bundle(s, site.cfg) == before
    finally:
        site.close()
