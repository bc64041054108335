"""Training crops: landmarks inside with random shifts, heatmaps on the crop's exact
geometry, rotation keeps image and heatmaps together, never a mirror."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from glipcore import ALL_LANDMARKS
from glipcore.dataset import Augment, CropConfig, collate, make_sample
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


def test_five_landmark_sample_zeroes_and_flags_an_unknown_ostium() -> None:
    case = toy_cases(1, seed=10, ostia=True)[0]
    assert case.ostia_lps is not None
    lco_only = np.array([case.ostia_lps[0], [np.nan] * 3])
    partial = dataclasses.replace(case, ostia_lps=lco_only)
    rng = np.random.default_rng(3)
    for _ in range(5):
        s = make_sample(partial, CROP, 1.5, rng, None, 0.0, ALL_LANDMARKS)
        assert s.heatmaps.shape == (5, *CROP.size_zyx)
        assert s.known.tolist() == [True, True, True, True, False]
        assert float(s.heatmaps[4].abs().max()) == 0.0  # RCO unknown: no target
        # the known ones, LCO included, peak inside the crop with their margin
        ijk = lps_to_ijk(s.affine, partial.points(ALL_LANDMARKS)[:4])
        size = np.array(CROP.size_zyx[::-1])
        assert np.all(ijk >= CROP.margin_vox - 1e-6) and np.all(ijk <= size - 1 - 4 + 1e-6)
        assert float(s.heatmaps[3].max()) > 0.5
    batch = collate([make_sample(partial, CROP, 1.5, rng, None, 0.0, ALL_LANDMARKS)] * 2)
    assert batch[2].shape == (2, 5) and batch[2].dtype == torch.bool


def test_three_landmark_samples_ignore_the_ostia() -> None:
    """A hinge-point model's samples are the same whether or not the case knows ostia."""
    with_ostia = toy_cases(1, seed=11, ostia=True)[0]
    without = dataclasses.replace(with_ostia, ostia_lps=None)
    a = make_sample(with_ostia, CROP, 1.5, np.random.default_rng(4), None, 0.0)
    b = make_sample(without, CROP, 1.5, np.random.default_rng(4), None, 0.0)
    assert torch.equal(a.heatmaps, b.heatmaps) and torch.equal(a.image, b.image)
    assert a.heatmaps.shape[0] == 3 and bool(a.known.all())
