"""A small site for the retraining tests: several archived phantom studies with their
truth imported as annotations, a tiny active model and a tiny training configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from annotation_fixtures import (
    HINGE_COLUMNS,
    SHAPE_ZYX,
    SPACING_MM,
    Archived,
    archive_phantom_study,
    archive_series,
    csv_text,
    point_cells,
)
from ingest_fixtures import node_config
from sqlalchemy import Engine

from dicomnode.config import NodeConfig
from dicomnode.db.session import make_engine
from dicomnode.learn.annotations import import_file
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import make_affine
from glipcore.phantom import random_case, truth_of
from glipcore.unet import UNetConfig
from glipcore.volume import Volume
from tests.toy_cases import toy_bundle

TINY_WIDTHS = (2, 4)
COLUMNS = ["StudyInstanceUID", *HINGE_COLUMNS, "annotator", "quality"]
GENEROUS_GATE = {
    "min_holdout_studies": 2,
    "median_margin_mm": 1000.0,
    "worst_margin_mm": 1000.0,
    "sdr2_margin": 1.0,
    "reference_margin_mm": 1000.0,
}
"""Margins no tiny model can fail: the flow, not the model, is under test."""


@dataclass
class Site:
    """Archived annotated studies, the node configuration and its database."""

    studies: list[Archived]
    cfg: NodeConfig
    engine: Engine
    tmp: Path

    def import_points(self, shift_mm: dict[str, float] | None = None, name: str = "a") -> None:
        """Import every study's truth as annotations (shifted by ``shift_mm[uid]`` mm along
        x for the studies named there)."""
        rows = []
        for st in self.studies:
            dx = (shift_mm or {}).get(st.study_uid, 0.0)
            points = {n: p + np.array([dx, 0.0, 0.0]) for n, p in st.points(ostia=False).items()}
            rows.append({"StudyInstanceUID": st.study_uid, **point_cells(points), "annotator": "T"})
        f = self.tmp / f"{name}.csv"
        f.write_text(csv_text(rows, COLUMNS))
        report = import_file(self.engine, self.cfg.archive_dir, f)
        if not report.written:
            raise RuntimeError(f"annotations not imported: {report.rows}")

    def close(self) -> None:
        for st in self.studies:
            st.rig.store.close()
            st.engine.dispose()
        self.engine.dispose()


def tiny_train_config(path: Path) -> Path:
    """A glip train configuration of a tiny model (the same code path as a real one)."""
    data: dict[str, Any] = {
        "name": "retrained-tiny",
        "model": UNetConfig(widths=TINY_WIDTHS, out_channels=3).model_dump(mode="json"),
        "crop": {"size_zyx": [24, 24, 24], "margin_vox": 2},
        "optim": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 1},
        "augment": {"rotate_deg": 0.0},
        "cv": {"val_max_cases": 1},
    }
    path.write_text(yaml.safe_dump(data))
    return path


BLOB_HU = (300.0, 700.0, 1200.0)
"""Peak HU of the blobs at RCC, LCC and NCC in :func:`blob_ct`."""
BLOB_SIGMA_MM = 2.5


def blob_ct(seed: int) -> tuple[Volume, Any, Any]:
    """The annotation tests' small CT around a phantom annulus (same grid as
    ``phantom_ct``), but learnable: a quiet background with a bright blob at each hinge
    point, brighter from RCC to NCC. Returns the volume, hinges and ostia (LPS mm)."""
    truth = truth_of(random_case(seed, 0))
    spacing = np.array(SPACING_MM)
    origin = truth.annulus_center - (np.array(SHAPE_ZYX[::-1]) - 1) / 2.0 * spacing
    affine = make_affine(origin, list(SPACING_MM))
    rng = np.random.default_rng(seed)
    array = (-100.0 + rng.normal(0.0, 20.0, size=SHAPE_ZYX)).astype(np.float32)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in SHAPE_ZYX), indexing="ij")
    lps = np.stack([ii, jj, kk], axis=-1) * spacing + origin  # LPS-aligned grid
    for point, hu in zip(truth.landmarks_lps, BLOB_HU, strict=True):
        d2 = ((lps - point) ** 2).sum(axis=-1)
        array += ((hu + 100.0) * np.exp(-d2 / (2 * BLOB_SIGMA_MM**2))).astype(np.float32)
    return Volume(array, affine), truth.landmarks_lps, truth.ostia_lps


def archive_blob_study(db_url: str, tmp: Path, seed: int) -> Archived:
    """:func:`blob_ct` written as a CT series, ingested and selected (a job exists)."""
    vol, hinges, ostia = blob_ct(seed)
    files = write_ct_series(vol, tmp / f"blob{seed}", SeriesMeta.synthetic(seed, f"blob{seed}"))
    return archive_series(db_url, tmp / "var", files, vol, hinges, ostia, "blob")


def make_site(
    db_url: str,
    tmp: Path,
    *,
    studies: int = 6,
    blobs: bool = False,
    bundle: Path | None = None,
    **retrain: Any,
) -> Site:
    """``studies`` archived phantom studies (distinct seeds; ``blobs``: learnable
    :func:`blob_ct` images), no annotations yet; the active model is ``bundle`` or an
    untrained tiny one."""
    archive = archive_blob_study if blobs else archive_phantom_study
    archived = [archive(db_url, tmp, seed=31 + i) for i in range(studies)]
    bundle = bundle or toy_bundle(tmp / "active", widths=TINY_WIDTHS)
    settings: dict[str, Any] = {
        "holdout_fraction": 0.3,
        "holdout_min": 2,
        "reference_cases": 1,
        "phantom_cases": 0,
        "bootstrap": 100,
        "threads": 1,
        "budget_min": 5.0,
        "train_config": str(tiny_train_config(tmp / "tiny.yaml")),
        "gate": GENEROUS_GATE,
        **retrain,
    }
    cfg = node_config(db_url, tmp / "var", model={"bundle": str(bundle)}, retrain=settings)
    return Site(archived, cfg, make_engine(db_url), tmp)
