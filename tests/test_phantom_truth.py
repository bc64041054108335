"""The phantom's ground truth checked against its pixels and against the cohort figures.

Pixels come from noise-free, artefact-free samplings of the analytic image (``sample``)
or from rendered grids. "Blood" means brighter than halfway between the case's blood pool
and its brightest soft tissue (wall, leaflet, myocardium) - an intensity threshold a
reader would use, computed here from the case's intensities, not from the geometry.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from glipcore.geometry import lps_to_ijk, plane_through
from glipcore.phantom import PhantomCase, grid_for, random_case, render, sample, truth_of
from glipcore.phantom.frame import root_frame
from glipcore.phantom.truth import PhantomTruth

SEED = 20240
CASES = [random_case(SEED, i) for i in range(12)]


def blood_threshold(case: PhantomCase) -> float:
    soft = max(case.hu.wall, case.hu.leaflet, case.hu.myocardium)
    return 0.5 * (case.hu.blood + soft)


def clean(case: PhantomCase) -> PhantomCase:
    """The case without calcium (for checks of the soft anatomy around it)."""
    return dataclasses.replace(case, calcium=())


def walls_only(case: PhantomCase) -> PhantomCase:
    """Without calcium and leaflets (for checks of the vessel walls around the sinuses)."""
    return dataclasses.replace(clean(case), valve=dataclasses.replace(case.valve, thickness_mm=0.0))


def outward(truth: PhantomTruth, point: np.ndarray) -> np.ndarray:
    """Unit vector from the annulus axis to the point, within the annulus plane."""
    n = truth.annulus_normal
    d = point - truth.annulus_center
    d = d - (d @ n) * n
    return d / np.linalg.norm(d)


def rotate(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues rotation of v about a unit axis."""
    t = math.radians(deg)
    return v * math.cos(t) + np.cross(axis, v) * math.sin(t) + axis * (axis @ v) * (1 - math.cos(t))


def ellipse_radius(truth: PhantomTruth, direction: np.ndarray) -> float:
    """Radius of the annulus ellipse along an in-plane unit direction (from its axes)."""
    a, b = truth.annulus_major_mm / 2.0, truth.annulus_minor_mm / 2.0
    c, s = direction @ truth.annulus_major_axis, direction @ truth.annulus_minor_axis
    return a * b / math.sqrt((b * c) ** 2 + (a * s) ** 2)


def lowest_blood_height(case: PhantomCase, truth: PhantomTruth, direction: np.ndarray) -> float:
    """Lowest height above the annulus plane at which the image is blood 0.8 mm outside the
    annulus ellipse along ``direction`` (inf if never, within -5..15 mm)."""
    n = truth.annulus_normal
    foot = truth.annulus_center + (ellipse_radius(truth, direction) + 0.8) * direction
    hs = np.arange(-5.0, 15.0, 0.1)
    hu = sample(case, foot[None, :] + hs[:, None] * n[None, :], artefacts=False)
    idx = np.flatnonzero(hu > blood_threshold(case))
    return float(hs[idx[0]]) if idx.size else math.inf


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c.index}")
def test_annulus_centre_is_contrast_filled_lumen(case: PhantomCase) -> None:
    truth = truth_of(case)
    hu = float(sample(case, truth.annulus_center, artefacts=False))
    assert hu > blood_threshold(case)
    assert abs(hu - case.hu.blood) < 0.1 * case.hu.blood


def test_annulus_centre_is_blood_on_rendered_grids() -> None:
    for case in CASES[:3]:
        truth = truth_of(case)
        for preset in ("fast", "model"):
            affine, shape = grid_for(case, preset)
            img = render(case, affine, shape, noise=False, artefacts=False)
            zyx = lps_to_ijk(affine, truth.annulus_center)[::-1]
            hu = float(map_coordinates(img, zyx[:, None], order=1)[0])
            assert hu > blood_threshold(case), (case.index, preset, hu)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c.index}")
def test_hinges_lie_on_the_lumen_boundary(case: PhantomCase) -> None:
    truth = truth_of(case)
    c = clean(case)
    n = truth.annulus_normal
    thr = blood_threshold(case)
    for k, hinge in enumerate(truth.landmarks_lps):
        out = outward(truth, hinge)
        lvot = hinge - 1.5 * n - 1.5 * out  # just below and inside: LVOT blood
        beside = hinge + 2.0 * out  # outside the annulus: wall / fibrous tissue
        below_beside = hinge + 2.0 * out - 1.5 * n
        hu = sample(c, np.stack([lvot, beside, below_beside]), artefacts=False)
        assert hu[0] > thr, (k, hu)
        assert hu[1] < thr and hu[2] < thr, (k, hu)
        # Just below the annulus plane the blood ends within 1 mm of the hinge's radius.
        s = np.arange(-4.0, 3.0, 0.05)
        ray = hinge - 1.0 * n + s[:, None] * out
        profile = sample(c, ray, artefacts=False)
        first_non_blood = s[np.flatnonzero(profile < thr)[0]]
        assert abs(first_non_blood) <= 1.0, (k, first_non_blood)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c.index}")
def test_hinges_are_the_nadirs_of_their_sinuses(case: PhantomCase) -> None:
    """Above each hinge the sinus bulges out beyond the annulus ellipse; beside it (30 deg
    either way, still within the same sinus) the bulge starts higher: the hinge is the
    lowest point of the sinus along the normal."""
    truth = truth_of(case)
    c = clean(case)
    n = truth.annulus_normal
    for k, hinge in enumerate(truth.landmarks_lps):
        out = outward(truth, hinge)
        at_hinge = lowest_blood_height(c, truth, out)
        assert 0.0 <= at_hinge <= 4.0, (k, at_hinge)
        for deg in (-30.0, 30.0):
            beside = lowest_blood_height(c, truth, rotate(out, n, deg))
            assert beside > at_hinge + 1.0, (k, deg, at_hinge, beside)


def sinus_reach(truth: PhantomTruth, cusp: str) -> float:
    """Upper bound of a sinus's distance from the root axis: its diameter (deepest point to
    the opposite commissure) minus the smallest radius the opposite side can have, plus
    1.5 mm for blur."""
    smallest = min(truth.annulus_minor_mm, truth.measurements["stj_diameter_mm"]) / 2.0
    return truth.measurements[f"sinus_diameter_{cusp}_mm"] - 0.95 * smallest + 1.5


def wall_profile(
    case: PhantomCase, truth: PhantomTruth, direction: np.ndarray, degs: np.ndarray, h: float
) -> tuple[np.ndarray, np.ndarray]:
    """For outward rays at height h, turned by ``degs`` about the normal: the distance from
    the axis at which blood first ends, and whether blood reappears 1.5-4 mm beyond it."""
    n = truth.annulus_normal
    thr = blood_threshold(case)
    s = np.arange(0.0, 40.0, 0.1)
    dirs = np.stack([rotate(direction, n, float(d)) for d in degs])
    start = truth.annulus_center + h * n
    pts = start[None, None, :] + s[None, :, None] * dirs[:, None, :]
    hu = sample(case, pts, artefacts=False)
    ends, again = [], []
    for row in hu:
        ended = np.flatnonzero(row < thr)
        wall = s[ended[0]] if ended.size else s[-1]
        ends.append(wall)
        again.append(bool((row[(s > wall + 1.5) & (s < wall + 4.0)] > thr).any()))
    return np.array(ends), np.array(again)


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: f"case{c.index}")
def test_coronary_ostia_leave_the_left_and_right_sinuses_only(case: PhantomCase) -> None:
    truth = truth_of(case)
    c = walls_only(case)
    n = truth.annulus_normal
    hinge_dirs = [outward(truth, p) for p in truth.landmarks_lps]
    thr = blood_threshold(case)
    for side, (ostium, cusp) in enumerate(zip(truth.ostia_lps, (1, 0), strict=True)):
        height = float((ostium - truth.annulus_center) @ n)
        expected = truth.measurements[("left", "right")[side] + "_ostium_height_mm"]
        assert height == pytest.approx(expected, abs=1e-6)
        d = outward(truth, ostium)
        # Above its own hinge: the nearest hinge direction is LCC for the left ostium, RCC
        # for the right one.
        assert int(np.argmax([d @ hd for hd in hinge_dirs])) == cusp
        hu = sample(c, np.stack([ostium, ostium + 3.0 * d]), artefacts=False)
        assert (hu > thr).all(), (side, hu)
        # Positive control for the check below: along the ostium the lumen reaches far
        # beyond any sinus (the vessel leaves it).
        ends, _ = wall_profile(c, truth, d, np.arange(-20.0, 21.0, 2.0), height)
        assert ends.max() > sinus_reach(truth, ("lcc", "rcc")[side]) + 2.0, (side, ends)
    # The non-coronary sinus: its lumen never reaches beyond the sinus (no vessel leaves it)
    # and no contrast lies just outside its wall.
    top = truth.measurements["sinus_height_mm"]
    reach = sinus_reach(truth, "ncc")
    for h in np.arange(1.0, top + 1.0, 1.0):
        ends, again = wall_profile(c, truth, hinge_dirs[2], np.arange(-36.0, 37.0, 3.0), float(h))
        assert ends.max() < reach, (h, reach, ends)
        assert not again.any(), (h, again)


def test_ostium_heights_above_their_hinges_follow_the_figures() -> None:
    left = [
        truth_of(random_case(SEED, i)).measurements["left_ostium_height_mm"] for i in range(200)
    ]
    right = [
        truth_of(random_case(SEED, i)).measurements["right_ostium_height_mm"] for i in range(200)
    ]
    assert 13.0 < np.mean(left) < 15.0 and 2.0 < np.std(left) < 4.0
    assert 16.0 < np.mean(right) < 18.0 and 2.0 < np.std(right) < 4.0


def test_cohort_figures_over_200_cases() -> None:
    truths = [truth_of(random_case(SEED + 1, i)) for i in range(200)]
    perim = np.array([t.annulus_perimeter_mm for t in truths])
    area = np.array([t.annulus_area_mm2 for t in truths])
    ratio = np.array([t.annulus_minor_mm / t.annulus_major_mm for t in truths])
    tilt = np.array([t.measurements["tilt_deg"] for t in truths])
    sinus = np.array([t.measurements["sinus_diameter_lcc_mm"] for t in truths])
    stj = np.array([t.measurements["stj_diameter_mm"] for t in truths])
    asc = np.array([t.measurements["ascending_diameter_mm"] for t in truths])
    height = np.array([t.measurements["sinus_height_mm"] for t in truths])
    assert 75.0 < perim.mean() < 79.0 and 5.5 < perim.std() < 8.5
    assert perim.min() >= 60.0 and perim.max() <= 95.0
    assert 440.0 < area.mean() < 490.0 and 65.0 < area.std() < 110.0
    assert ratio.min() >= 0.8 and ratio.max() <= 0.95
    assert 48.0 < tilt.mean() < 52.0 and 7.0 < tilt.std() < 11.0
    assert tilt.min() >= 20.0 and tilt.max() <= 80.0
    assert 27.0 < sinus.mean() < 31.0 and 2.0 < sinus.std() < 4.0
    assert 24.5 < stj.mean() < 27.0 and (stj < sinus).all()
    assert asc.min() >= 25.0 and asc.max() <= 34.0 and 27.0 < asc.mean() < 29.5
    assert height.min() >= 19.0 and height.max() <= 22.0
    # Ellipse perimeter by an independent formula (numerical arc length) and area pi*a*b.
    for t in truths[:20]:
        a, b = t.annulus_major_mm / 2.0, t.annulus_minor_mm / 2.0
        u = np.linspace(0.0, 2.0 * np.pi, 20001)
        arc = np.sum(np.hypot(np.diff(a * np.cos(u)), np.diff(b * np.sin(u))))
        assert arc == pytest.approx(t.annulus_perimeter_mm, rel=1e-4)
        assert math.pi * a * b == pytest.approx(t.annulus_area_mm2, rel=1e-9)


def test_hinges_sit_on_the_annulus_ellipse_about_120_degrees_apart() -> None:
    gaps = []
    for i in range(100):
        t = truth_of(random_case(SEED + 2, i))
        n = t.annulus_normal
        assert n[2] > 0 and n[0] < 0 and n[1] < 0  # cranial, patient's right, anterior
        assert np.linalg.norm(n) == pytest.approx(1.0)
        assert np.allclose(plane_through(t.landmarks_lps).normal, n, atol=1e-9)
        assert abs(t.annulus_major_axis @ n) < 1e-9 and abs(t.annulus_minor_axis @ n) < 1e-9
        a, b = t.annulus_major_mm / 2.0, t.annulus_minor_mm / 2.0
        angles = []
        for p in t.landmarks_lps:
            d = p - t.annulus_center
            x, y = d @ t.annulus_major_axis, d @ t.annulus_minor_axis
            assert abs(d @ n) < 1e-9
            assert (x / a) ** 2 + (y / b) ** 2 == pytest.approx(1.0, abs=1e-9)
            angles.append(math.degrees(math.atan2(y, x)))
        ang = np.sort(np.mod(angles, 360.0))
        gaps += list(np.diff(np.concatenate([ang, [ang[0] + 360.0]])))
    gaps_arr = np.array(gaps)
    assert gaps_arr.min() > 100.0 and gaps_arr.max() < 140.0
    assert gaps_arr.mean() == pytest.approx(120.0, abs=0.01)
    assert gaps_arr.std() > 3.0  # jittered, not a perfect triangle


def test_a_naive_offset_predictor_misses_clearly() -> None:
    """Even knowing the annulus centre exactly, the mean offsets of the hinges from it miss
    by several mm: the pose and the cusp pattern vary, so finding the hinges takes anatomy."""
    train = [truth_of(random_case(SEED + 3, i)) for i in range(150)]
    test = [truth_of(random_case(SEED + 4, i)) for i in range(100)]
    mean_offset = np.mean([t.landmarks_lps - t.annulus_center for t in train], axis=0)
    errors = np.concatenate(
        [np.linalg.norm(t.annulus_center + mean_offset - t.landmarks_lps, axis=1) for t in test]
    )
    assert np.median(errors) > 3.3


def test_truth_dict_round_trip_and_errors() -> None:
    t = truth_of(CASES[0])
    back = PhantomTruth.from_dict(t.to_dict())
    for name in ("landmarks_lps", "annulus_center", "annulus_normal", "ostia_lps"):
        assert np.array_equal(getattr(back, name), getattr(t, name))
    assert back.quality == t.quality and back.measurements == t.measurements
    bad = t.to_dict()
    del bad["annulus_normal"]
    with pytest.raises(ValueError, match="annulus_normal"):
        PhantomTruth.from_dict(bad)


# --------------------------------------------------------------------- with heavy calcium

CALCIFIED = [random_case(SEED, i, calcium="heavy", hinge_calcium=True) for i in range(6)]


def test_calcium_options_leave_the_anatomy_of_the_default_cases() -> None:
    """The checks above strip the calcium, so with calcium options they see the very same
    anatomy: the options change nothing else."""
    for case, calcified in zip(CASES, CALCIFIED, strict=False):
        assert clean(calcified) == dataclasses.replace(
            clean(case), scan=dataclasses.replace(case.scan, streaks=calcified.scan.streaks)
        )
        assert len(calcified.calcium) > len(case.calcium)


def near(point: np.ndarray, radius: float, count: int = 400) -> np.ndarray:
    """Points spread through a ball around ``point`` (a fixed pseudo-random cloud)."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return point + radius * rng.random((count, 1)) ** (1 / 3) * d


@pytest.mark.parametrize("case", CALCIFIED, ids=lambda c: f"case{c.index}")
def test_hinges_stay_on_the_lumen_boundary_with_heavy_and_hinge_calcium(
    case: PhantomCase,
) -> None:
    """Heavy calcium plus nodules 0-2 mm from every hinge: the calcium shows in the pixels
    right beside each hinge, yet the lumen that defines the hinge (the LVOT just inside it,
    the blood to within 1 mm of the hinge's radius just below the plane) reads as without
    calcium, so the checks of the calcium-free anatomy above hold for the calcified case."""
    truth = truth_of(case)
    bare = clean(case)
    n = truth.annulus_normal
    thr = blood_threshold(case)
    centre = float(sample(case, truth.annulus_center, artefacts=False))
    assert abs(centre - case.hu.blood) < 0.1 * case.hu.blood
    frame = root_frame(case.pose)
    nodules = [(frame.to_world(np.asarray(c.center_local)), c.radius_mm) for c in case.calcium]
    for k, hinge in enumerate(truth.landmarks_lps):
        gaps = [float(np.linalg.norm(hinge - c)) - r for c, r in nodules]
        assert 0.0 <= min(gaps) <= 2.0, (k, min(gaps))
        cloud = near(hinge, 2.5)
        added = sample(case, cloud, artefacts=False) - sample(bare, cloud, artefacts=False)
        assert added.max() > 150.0, (k, added.max())  # calcium right beside the hinge
        out = outward(truth, hinge)
        s = np.arange(-4.0, -0.95, 0.05)
        lumen = np.concatenate([hinge - 1.0 * n + s[:, None] * out, [hinge - 1.5 * (n + out)]])
        hu = sample(case, lumen, artefacts=False)
        assert (hu > thr).all(), (k, hu.min())
        assert np.abs(hu - sample(bare, lumen, artefacts=False)).max() < 0.1 * case.hu.blood
