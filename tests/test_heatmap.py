"""Gaussian heatmaps, eq. (1) with the squared distance in mm."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcore.heatmap import gaussian_heatmaps, gaussian_heatmaps_ijk


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(a) for a in (ax, ay, az) for f in (math.cos, math.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx)


def _affine(
    spacing: tuple[float, float, float], rot: np.ndarray, origin: list[float]
) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(spacing)[None, :]
    a[:3, 3] = origin
    return a


def _loop_heatmaps(
    shape_zyx: tuple[int, int, int], affine: np.ndarray, landmarks: Any, sigma: float
) -> np.ndarray:
    """Independent reference: explicit loops over voxels and landmarks."""
    z, y, x = shape_zyx
    out = np.zeros((len(landmarks), z, y, x))
    for n, lm in enumerate(landmarks):
        for k, j, i in itertools.product(range(z), range(y), range(x)):
            g = affine @ np.array([i, j, k, 1.0])
            d2 = float(np.sum((g[:3] - lm) ** 2))
            out[n, k, j, i] = math.exp(-d2 / (2 * sigma**2))
    return out


def test_peak_is_one_at_voxel_centred_landmark_and_offset_value() -> None:
    aff = _affine((0.8, 0.9, 1.6), np.eye(3), [-10.0, 5.0, 30.0])
    ijk = np.array([3.0, 4.0, 5.0])
    lm = (aff @ np.append(ijk, 1.0))[:3]
    sigma = 1.2
    h = gaussian_heatmaps((8, 9, 7), aff, lm[None], sigma)
    assert h.shape == (1, 8, 9, 7) and h.dtype == torch.float32
    assert h[0, 5, 4, 3].item() == pytest.approx(1.0, abs=1e-7)
    assert int(h[0].argmax()) == np.ravel_multi_index((5, 4, 3), (8, 9, 7))
    # one voxel along i is 0.8 mm, along k 1.6 mm, a diagonal (1, 1, 0) step sqrt(0.8^2+0.9^2)
    assert h[0, 5, 4, 4].item() == pytest.approx(math.exp(-(0.8**2) / (2 * sigma**2)), rel=1e-6)
    assert h[0, 6, 4, 3].item() == pytest.approx(math.exp(-(1.6**2) / (2 * sigma**2)), rel=1e-6)
    d2 = 0.8**2 + 0.9**2
    assert h[0, 5, 5, 4].item() == pytest.approx(math.exp(-d2 / (2 * sigma**2)), rel=1e-6)


def test_oblique_anisotropic_matches_loop_reference() -> None:
    aff = _affine((0.7, 1.1, 1.9), _rotation(0.3, -0.5, 1.1), [12.0, -40.0, 100.0])
    shape = (4, 5, 6)
    lms = np.stack(
        [
            (aff @ np.array([2.3, 1.7, 1.2, 1.0]))[:3],
            (aff @ np.array([4.9, 3.1, 2.6, 1.0]))[:3],
            (aff @ np.array([-1.0, 2.0, 0.5, 1.0]))[:3],  # outside the grid
        ]
    )
    got = gaussian_heatmaps(shape, aff, lms, 1.5).numpy()
    want = _loop_heatmaps(shape, aff, lms, 1.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_batched_ijk_variant_matches_loop_reference() -> None:
    spacing = [(0.8, 0.9, 1.6), (1.6, 1.6, 1.6)]
    lms_ijk = torch.tensor([[[1.2, 2.5, 0.7], [3.0, 0.0, 2.0]], [[0.1, 1.9, 2.2], [2.5, 2.5, 1.5]]])
    got = gaussian_heatmaps_ijk((3, 4, 5), lms_ijk, torch.tensor(spacing), sigma_mm=1.0)
    assert got.shape == (2, 2, 3, 4, 5)
    for b in range(2):
        aff = _affine(spacing[b], np.eye(3), [0.0, 0.0, 0.0])
        lps = [(aff @ np.append(lm, 1.0))[:3] for lm in lms_ijk[b].double().numpy()]
        want = _loop_heatmaps((3, 4, 5), aff, lps, 1.0)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-5, atol=1e-7)
    # a single spacing shared by the batch
    one = gaussian_heatmaps_ijk((3, 4, 5), lms_ijk, (1.6, 1.6, 1.6), sigma_mm=1.0)
    torch.testing.assert_close(one[1], got[1])


@settings(max_examples=25, deadline=None)
@given(
    frac=st.tuples(*(st.floats(0.0, 1.0),) * 3),
    sp=st.tuples(*(st.floats(0.3, 3.0),) * 3),
    sigma=st.floats(0.5, 8.0),
)
def test_max_is_at_nearest_voxel_in_mm(
    frac: tuple[float, float, float], sp: tuple[float, float, float], sigma: float
) -> None:
    shape = (5, 6, 7)
    ijk = np.array([1 + 3 * frac[0], 1 + 3 * frac[1], 1 + 2 * frac[2]])
    aff = _affine(sp, np.eye(3), [0.0, 0.0, 0.0])
    h = gaussian_heatmaps(shape, aff, (aff @ np.append(ijk, 1.0))[None, :3], sigma)[0]
    assert float(h.max()) <= 1.0
    near = np.round(ijk).astype(int)
    d2 = float(np.sum(((near - ijk) * np.asarray(sp)) ** 2))
    assert h[near[2], near[1], near[0]].item() == pytest.approx(
        math.exp(-d2 / (2 * sigma**2)), rel=1e-5
    )


@pytest.mark.parametrize(
    ("shape", "lms", "sigma", "match"),
    [
        ((4, 4, 4), [[0.0, 0.0, 0.0]], 0.0, "sigma_mm"),
        ((4, 4, 4), [[0.0, 0.0, 0.0]], float("nan"), "sigma_mm"),
        ((4, 4), [[0.0, 0.0, 0.0]], 1.0, "shape_zyx"),
        ((4, 0, 4), [[0.0, 0.0, 0.0]], 1.0, "shape_zyx"),
        ((4, 4, 4), [0.0, 0.0, 0.0], 1.0, "landmarks_lps"),
        ((4, 4, 4), [[0.0, float("nan"), 0.0]], 1.0, "landmarks_lps"),
    ],
)
def test_bad_input_is_refused(shape, lms, sigma, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        gaussian_heatmaps(shape, np.eye(4), np.asarray(lms), sigma)


def test_singular_affine_and_bad_spacing_are_refused() -> None:
    a = np.eye(4)
    a[2, 2] = 0.0
    with pytest.raises(ValueError, match="singular"):
        gaussian_heatmaps((2, 2, 2), a, [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="spacing"):
        gaussian_heatmaps_ijk((2, 2, 2), torch.zeros(1, 3), (1.0, 0.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="landmarks_ijk"):
        gaussian_heatmaps_ijk((2, 2, 2), torch.zeros(3), (1.0, 1.0, 1.0), 1.0)
