"""Training crops: landmarks inside with random shifts, heatmaps on the crop's exact
geometry, rotation keeps image and heatmaps together, never a mirror."""

from __future__ import annotations

import numpy as np
import torch

from glipcore.dataset import Augment, CropConfig, make_sample
from glipcore.geometry import lps_to_ijk
from glipcore.preprocess import Preprocessing
from tests.toy_cases import BLOB_HU, toy_cases

CROP = CropConfig(size_zyx=(24, 32, 32), margin_vox=4)


def test_crops_hold_landmarks_with_varying_shifts() -> None:
    case = toy_cases(1, seed=7)[0]
    rng = np.random.default_rng(0)
    positions = []
    for _ in range(20):
        s = make_sample(case, CROP, 2.0, rng, None, 0.0)
        ijk = lps_to_ijk(s.affine, case.landmarks_lps)
        size = np.array(CROP.size_zyx[::-1])
        assert np.all(ijk >= CROP.margin_vox - 1e-6) and np.all(ijk <= size - 1 - 4 + 1e-6)
        positions.append(ijk[0])
    assert np.ptp(np.array(positions), axis=0).min() > 2  # shifts vary on every axis


def test_rotated_crop_keeps_blobs_under_their_heatmap_peaks() -> None:
    prep = Preprocessing()
    case = toy_cases(1, seed=8, prep=prep)[0]
    rng = np.random.default_rng(1)
    aug = Augment(rotate_deg=20, intensity_scale=0, intensity_shift=0, noise_sd=0)
    for _ in range(5):
        s = make_sample(case, CROP, 1.5, rng, aug, 0.0)
        hu = prep.unscale(s.image[0].numpy())
        for lm, blob_hu in enumerate(BLOB_HU):
            peak = np.unravel_index(int(torch.argmax(s.heatmaps[lm])), CROP.size_zyx)
            # the image at the heatmap's peak is the blob of that landmark (not another one)
            assert abs(hu[peak] - blob_hu) < 0.35 * (blob_hu + 100), (lm, hu[peak])
        # the rotated crop's affine is a proper rotation (det > 0): never a mirror
        assert np.linalg.det(s.affine[:3, :3]) > 0


def test_heatmap_peak_is_one_at_the_landmark() -> None:
    case = toy_cases(1, seed=9)[0]
    s = make_sample(case, CROP, 1.0, np.random.default_rng(2), None, 0.0)
    ijk = lps_to_ijk(s.affine, case.landmarks_lps)
    for lm in range(3):
        i, j, k = ijk[lm]
        d2 = ((np.array([i, j, k]) - np.round([i, j, k])) * 1.6) ** 2
        expected = np.exp(-d2.sum() / 2.0)
        got = float(s.heatmaps[lm, round(k), round(j), round(i)])
        assert abs(got - expected) < 1e-5
