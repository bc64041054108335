"""Tiny synthetic landmark cases (three blobs of different brightness, five with the
"ostia") for fast tests of training, the bundle and the Predictor without the phantom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from glipcore import LANDMARKS
from glipcore.bundle import save_bundle
from glipcore.dataset import Case
from glipcore.geometry import make_affine
from glipcore.preprocess import Preprocessing, to_model_grid
from glipcore.unet import UNetConfig, build_unet
from glipcore.volume import Volume

BLOB_HU = (250.0, 600.0, 1100.0)
OSTIUM_BLOB_HU = (400.0, 850.0)
"""Brightness of the two extra blobs standing for the ostia (LCO, RCO)."""
SHAPE_ZYX = (32, 40, 40)


def toy_hu_volume(seed: int, ostia: bool = False) -> tuple[Volume, np.ndarray]:
    """A HU volume on a 1.6 mm grid with three blobs (five with ``ostia``); returns it and
    the blob centres (3 or 5, 3) in LPS mm (the landmarks, in blob order: RCC, LCC, NCC,
    then LCO, RCO). The three-blob volumes do not depend on ``ostia`` being offered."""
    rng = np.random.default_rng(seed)
    origin = rng.uniform(-50, 50, size=3)
    affine = make_affine(origin, (1.6, 1.6, 1.6))
    z, y, x = SHAPE_ZYX
    centres_ijk: list[np.ndarray] = []
    box_lo = rng.uniform([8, 8, 8], [x - 22, y - 22, z - 22])
    blobs = BLOB_HU + OSTIUM_BLOB_HU if ostia else BLOB_HU
    while len(centres_ijk) < len(blobs):
        c = box_lo + rng.uniform(0, 14, size=3)
        if all(np.linalg.norm(c - o) > 8 for o in centres_ijk):
            centres_ijk.append(c)
    kk, jj, ii = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    hu = np.full(SHAPE_ZYX, -100.0) + rng.normal(0, 20, size=SHAPE_ZYX)
    for c, v in zip(centres_ijk, blobs, strict=True):
        d2 = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2
        hu += (v + 100.0) * np.exp(-d2 / (2 * 1.5**2))
    vol = Volume(hu.astype(np.float32), affine)
    return vol, vol.to_lps(np.array(centres_ijk))


def toy_cases(
    n: int, seed: int = 0, prep: Preprocessing | None = None, ostia: bool = False
) -> list[Case]:
    """``n`` toy cases already on the model grid (preprocessed); with ``ostia`` five blobs
    and the last two as the case's ostia (LCO, RCO)."""
    prep = prep or Preprocessing()
    out = []
    for i in range(n):
        vol, lm = toy_hu_volume(seed * 1000 + i, ostia)
        grid = to_model_grid(vol, prep)
        out.append(Case(f"toy-{seed}-{i:03d}", grid, lm[:3], "3+", lm[3:] if ostia else None))
    return out


def toy_bundle(
    path: Path,
    landmarks: tuple[str, ...] = LANDMARKS,
    *,
    widths: tuple[int, ...] = (4, 8, 16),
    out_channels: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """A one-fold bundle of an untrained (seeded) U-Net predicting ``landmarks``;
    ``out_channels`` defaults to one per landmark."""
    cfg = UNetConfig(widths=widths, out_channels=out_channels or len(landmarks))
    torch.manual_seed(0)
    return save_bundle(
        path,
        name="toy",
        landmarks=landmarks,
        model_cfg=cfg,
        preprocessing=Preprocessing(),
        sigma_mm=1.0,
        fold_states=[build_unet(cfg).state_dict()],
        trained_on="phantom",
        metadata=metadata,
    )
