"""The phantom as a sampler: determinism, grids, agreement between samplings, noise, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from glipcore.geometry import ijk_to_lps, make_affine, spacing_of
from glipcore.phantom import (
    GENERATOR_VERSION,
    generate,
    grid_for,
    random_case,
    render,
    sample,
    truth_of,
    voxel_width,
)
from glipcore.phantom.shapes import Ball
from glipcore.preprocess import Preprocessing, model_grid, to_model_grid
from glipcore.volume import Volume

SEED = 31


def _region(centre: np.ndarray, size_mm: float, spacing: tuple[float, float, float]):
    """An LPS-aligned grid of about size_mm around centre."""
    n = [round(size_mm / s) for s in spacing]
    origin = centre - (np.array(n) - 1) / 2.0 * np.array(spacing)
    return make_affine(origin, spacing), (n[2], n[1], n[0])


def test_cases_are_deterministic_per_seed_and_index() -> None:
    assert random_case(SEED, 3) == random_case(SEED, 3)
    assert random_case(SEED, 3) != random_case(SEED, 4)
    assert random_case(SEED, 3) != random_case(SEED + 1, 3)
    a, t1 = generate(SEED, 3, "fast")
    b, t2 = generate(SEED, 3, "fast")
    c, _ = generate(SEED + 1, 3, "fast")
    assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    assert t1.to_dict() == t2.to_dict()
    assert a.array.dtype == np.float32 and a.meta["generator_version"] == GENERATOR_VERSION
    assert c.array.shape == a.array.shape and not np.array_equal(a.array, c.array)


def test_case_parameters_round_trip_through_json() -> None:
    import json

    case = random_case(SEED, 5)
    back = type(case).from_dict(json.loads(json.dumps(case.to_dict())))
    assert back == case


def test_slab_parallel_rendering_equals_serial() -> None:
    case = random_case(SEED, 1)
    affine, shape = grid_for(case, "fast")
    serial = render(case, affine, shape, noise=True, workers=1)
    parallel = render(case, affine, shape, noise=True, workers=2)
    assert np.array_equal(serial, parallel)


def test_grid_presets() -> None:
    offsets = []
    for i in range(40):
        case = random_case(SEED, i)
        truth = truth_of(case)
        affine, shape = grid_for(case, "full")
        ps = case.scan.pixel_spacing_mm
        assert shape == (320, 512, 512)
        assert np.allclose(affine[:3, :3], np.diag([ps, ps, 0.5]))
        assert 0.35 <= ps <= 0.45
        # The root (hinges, ostia, STJ) lies well inside the field of view, off-centre.
        lo = ijk_to_lps(affine, [0, 0, 0])
        hi = ijk_to_lps(affine, [511, 511, 319])
        stj = truth.annulus_center + truth.measurements["sinus_height_mm"] * truth.annulus_normal
        for p in [*truth.landmarks_lps, *truth.ostia_lps, stj]:
            assert np.all(p - lo > 25.0) and np.all(hi - p > 25.0)
        offsets.append(truth.annulus_center - (lo + hi) / 2.0)
        fast_affine, fast_shape = grid_for(case, "fast")
        assert fast_shape == (80, 128, 128) and np.allclose(spacing_of(fast_affine), 1.25)
        m_affine, m_shape = grid_for(case, "model")
        ref_affine, ref_shape = model_grid(affine, shape, 1.6)
        assert np.array_equal(m_affine, ref_affine) and m_shape == ref_shape
    off = np.array(offsets)
    assert np.all(off.std(axis=0) > 8.0)  # the root is not centred: it moves by cm
    with pytest.raises(ValueError, match="preset must be one of"):
        grid_for(random_case(SEED, 0), "huge")


def test_landmarks_are_identical_across_presets() -> None:
    vf, tf = generate(SEED, 2, "fast")
    vm, tm = generate(SEED, 2, "model")
    assert np.array_equal(tf.landmarks_lps, tm.landmarks_lps)
    assert tf.to_dict() == tm.to_dict()
    assert vm.shape_zyx != vf.shape_zyx


def test_full_and_model_samplings_agree_after_resampling() -> None:
    """A full-resolution region, brought to the model grid by the project's anti-aliased
    resampler, matches the same region rendered straight on the model grid."""
    case = random_case(SEED, 6)
    truth = truth_of(case)
    full_affine, full_shape = _region(truth.annulus_center, 64.0, (0.4, 0.4, 0.5))
    full = render(case, full_affine, full_shape, noise=False)
    prep = Preprocessing()
    down = to_model_grid(Volume(full, full_affine), prep)
    m_affine, m_shape = model_grid(full_affine, full_shape, 1.6)
    assert np.array_equal(down.affine, m_affine)
    direct = render(case, m_affine, m_shape, noise=False)
    down_hu = prep.unscale(down.array)
    inner = (slice(3, -3),) * 3  # away from the resampler's borders
    a, b = down_hu[inner], np.clip(direct, prep.hu_min, prep.hu_max)[inner]
    contrast = case.hu.blood - case.hu.fat
    assert np.mean(np.abs(a - b)) < 0.02 * contrast
    thr = 0.5 * (case.hu.blood + max(case.hu.wall, case.hu.myocardium, case.hu.leaflet))
    ma, mb = a > thr, b > thr
    dice = 2.0 * np.sum(ma & mb) / (ma.sum() + mb.sum())
    assert mb.sum() > 1000 and dice > 0.97


def test_rendering_any_grid_matches_point_sampling() -> None:
    """An oblique grid (every structure culled to its bounding box) gives the same values as
    the analytic image evaluated everywhere at its voxel centres."""
    case = random_case(SEED, 7)
    truth = truth_of(case)
    t = math.radians(30.0)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0, 0, 1.0]])
    rot = rot @ np.array(
        [[1.0, 0, 0], [0, math.cos(0.4), -math.sin(0.4)], [0, math.sin(0.4), math.cos(0.4)]]
    )
    shape = (24, 40, 36)
    spacing = np.array([1.1, 0.9, 1.3])
    centre_ijk = (np.array(shape[::-1]) - 1) / 2.0
    origin = truth.annulus_center - rot @ (centre_ijk * spacing)
    affine = make_affine(origin, spacing, rot)
    img = render(case, affine, shape, noise=False)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    pts = ijk_to_lps(affine, np.stack([i, j, k], axis=-1))
    ref = sample(case, pts, voxel_mm=voxel_width(affine))
    assert np.abs(img - ref).max() < 0.05
    assert img.max() > case.hu.blood * 0.9  # the grid does hold the root


def test_noise_sd_scales_with_voxel_volume() -> None:
    case = random_case(SEED, 8)
    centre = truth_of(case).annulus_center
    for spacing in ((0.4, 0.4, 0.5), (1.6, 1.6, 1.6)):
        affine, shape = _region(centre, 40.0, spacing)
        noisy = render(case, affine, shape, noise=True)
        clean = render(case, affine, shape, noise=False)
        expected = case.scan.noise_sd_hu * math.sqrt(0.4 * 0.4 * 0.5 / np.prod(spacing))
        assert np.std(noisy - clean) == pytest.approx(expected, rel=0.03)
        assert abs(np.mean(noisy - clean)) < 0.05 * expected


def test_blurred_ball_matches_a_numerical_blur() -> None:
    step, sigma, radius = 0.05, 0.6, 1.5
    g = np.arange(-4.0, 4.0 + step / 2, step)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    ball = ((x * x + y * y + z * z) <= radius * radius).astype(np.float64)
    blurred = gaussian_filter(ball, sigma / step)
    shape_ball = Ball(np.zeros(3), radius)
    c = len(g) // 2
    for offset in (0, 10, 20, 30, 40):  # 0 to 2 mm from the centre along x
        ref = blurred[c, c, c + offset]
        got = float(
            shape_ball.occupancy((np.array(g[c + offset]), np.array(0.0), np.array(0.0)), sigma)
        )
        assert got == pytest.approx(ref, abs=0.01)


def test_intensities_and_grades_follow_the_figures() -> None:
    cases = [random_case(SEED + 9, i) for i in range(200)]
    assert {c.quality for c in cases} == {"1", "2", "3-", "3+", "4"}
    for c in cases:
        assert 250 <= c.hu.blood <= 550 and 80 <= c.hu.myocardium <= 150
        assert -150 <= c.hu.fat <= -50 and 400 <= c.hu.bone <= 1000
        assert 15 <= c.scan.noise_sd_hu <= 60
        assert all(600 <= k.hu <= 1500 for k in c.calcium)
    by_grade = {g: [c.scan.noise_sd_hu for c in cases if c.quality == g] for g in ("1", "4")}
    assert min(by_grade["1"]) > max(by_grade["4"])
    assert np.mean([len(c.calcium) > 0 for c in cases]) > 0.6
