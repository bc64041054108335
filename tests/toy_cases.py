"""Tiny synthetic landmark cases (three blobs of different brightness) for fast tests of
training, the bundle and the Predictor without the phantom."""

from __future__ import annotations

import numpy as np

from glipcore.dataset import Case
from glipcore.geometry import make_affine
from glipcore.preprocess import Preprocessing, to_model_grid
from glipcore.volume import Volume

BLOB_HU = (250.0, 600.0, 1100.0)
SHAPE_ZYX = (32, 40, 40)


def toy_hu_volume(seed: int) -> tuple[Volume, np.ndarray]:
    """A HU volume on a 1.6 mm grid with three blobs; returns it and the blob centres
    (3, 3) in LPS mm (the landmarks, in blob order)."""
    rng = np.random.default_rng(seed)
    origin = rng.uniform(-50, 50, size=3)
    affine = make_affine(origin, (1.6, 1.6, 1.6))
    z, y, x = SHAPE_ZYX
    centres_ijk = []
    box_lo = rng.uniform([8, 8, 8], [x - 22, y - 22, z - 22])
    while len(centres_ijk) < 3:
        c = box_lo + rng.uniform(0, 14, size=3)
        if all(np.linalg.norm(c - o) > 8 for o in centres_ijk):
            centres_ijk.append(c)
    kk, jj, ii = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    hu = np.full(SHAPE_ZYX, -100.0) + rng.normal(0, 20, size=SHAPE_ZYX)
    for c, v in zip(centres_ijk, BLOB_HU, strict=True):
        d2 = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2
        hu += (v + 100.0) * np.exp(-d2 / (2 * 1.5**2))
    vol = Volume(hu.astype(np.float32), affine)
    return vol, vol.to_lps(np.array(centres_ijk))


def toy_cases(n: int, seed: int = 0, prep: Preprocessing | None = None) -> list[Case]:
    """``n`` toy cases already on the model grid (preprocessed)."""
    prep = prep or Preprocessing()
    out = []
    for i in range(n):
        vol, lm = toy_hu_volume(seed * 1000 + i)
        out.append(Case(f"toy-{seed}-{i:03d}", to_model_grid(vol, prep), lm, "3+"))
    return out
