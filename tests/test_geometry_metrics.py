"""Geometry (planes, affines) and the paper's metrics on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcore.geometry import (
    Plane,
    heights_above,
    ijk_to_lps,
    ijk_to_zyx,
    lps_to_ijk,
    make_affine,
    plane_angle_deg,
    plane_or_none,
    plane_through,
    spacing_of,
    zyx_to_ijk,
)
from glipcore.metrics import (
    SDR_THRESHOLDS_MM,
    euclidean_errors,
    plane_angle,
    plane_errors,
    projection_distance,
    success_detection_rate,
    summarize,
)

TRI = np.array([[10.0, 0.0, 0.0], [-5.0, 8.0, 0.0], [-5.0, -8.0, 0.0]])  # in z = 0


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.asarray(np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k)


# ---- geometry ----


def test_affine_round_trip_oblique_anisotropic() -> None:
    d = _rot(np.array([1.0, 2.0, 3.0]), 0.7)
    aff = make_affine([10.0, -20.0, 30.0], [0.5, 0.7, 1.25], d)
    np.testing.assert_allclose(spacing_of(aff), [0.5, 0.7, 1.25])
    np.testing.assert_allclose(ijk_to_lps(aff, [0, 0, 0]), [10.0, -20.0, 30.0])
    # one step along k moves 1.25 mm along the third direction cosine
    np.testing.assert_allclose(ijk_to_lps(aff, [0, 0, 1]) - [10.0, -20.0, 30.0], 1.25 * d[:, 2])
    pts = np.random.default_rng(0).uniform(-50, 50, (7, 3))
    np.testing.assert_allclose(lps_to_ijk(aff, ijk_to_lps(aff, pts)), pts, atol=1e-9)
    assert zyx_to_ijk([1, 2, 3]).tolist() == [3.0, 2.0, 1.0]
    assert ijk_to_zyx([[1, 2, 3]]).tolist() == [[3.0, 2.0, 1.0]]
    with pytest.raises(ValueError, match="spacing"):
        make_affine([0, 0, 0], [1.0, 0.0, 1.0])


def test_plane_through_normal_distance_projection() -> None:
    p = plane_through(TRI)
    np.testing.assert_allclose(p.origin, TRI.mean(0))
    np.testing.assert_allclose(p.normal, [0.0, 0.0, 1.0])  # right-hand rule p0 -> p1 -> p2
    np.testing.assert_allclose(plane_through(TRI[::-1]).normal, [0.0, 0.0, -1.0])
    assert p.signed_distance([1.0, 2.0, -3.0]) == pytest.approx(-3.0)
    assert p.distance([1.0, 2.0, -3.0]) == pytest.approx(3.0)
    np.testing.assert_allclose(p.project([[1.0, 2.0, -3.0]]), [[1.0, 2.0, 0.0]])
    assert np.linalg.norm(Plane(np.zeros(3), np.array([0.0, 3.0, 4.0])).normal) == pytest.approx(1)


@pytest.mark.parametrize(
    "pts",
    [
        [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
        [[0, 0, 0], [0, 0, 0], [1, 0, 0]],
        [[1, 2, 3], [1, 2, 3], [1, 2, 3]],
    ],
)
def test_collinear_or_coincident_points_are_refused(pts: list[list[float]]) -> None:
    with pytest.raises(ValueError, match="collinear"):
        plane_through(pts)
    with pytest.raises(ValueError, match="collinear"):
        projection_distance(pts, TRI)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="three 3-D points"):
        plane_through(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="normal"):
        Plane(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="shape mismatch"):
        euclidean_errors(np.zeros((3, 3)), np.zeros((2, 3)))


# ---- plane metrics ----


def test_coincident_planes() -> None:
    # other points of the same plane, in another order
    other = np.array([[0.0, 3.0, 0.0], [7.0, 1.0, 0.0], [2.0, -9.0, 0.0]])
    assert projection_distance(other, TRI) == pytest.approx(0.0, abs=1e-12)
    assert plane_angle(other, TRI) == pytest.approx(0.0, abs=1e-6)
    assert plane_angle(TRI[::-1], TRI) == pytest.approx(0.0, abs=1e-6)  # flipped normal


def test_parallel_planes_at_known_distance() -> None:
    shifted = TRI + np.array([1.0, -2.0, 2.5])
    assert projection_distance(shifted, TRI) == pytest.approx(2.5)
    assert plane_angle(shifted, TRI) == pytest.approx(0.0, abs=1e-6)


def test_perpendicular_planes() -> None:
    vertical = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert plane_angle(vertical, TRI) == pytest.approx(90.0)
    a = plane_through(vertical)
    assert plane_angle_deg(a, plane_through(TRI)) == pytest.approx(90.0)


def test_tilted_plane_projection_distance_by_hand() -> None:
    h = 0.6
    true = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pred = true.copy()
    pred[2, 2] = h
    # pred points to the true plane z = 0: 0, 0, h; the predicted plane has normal
    # (0, -h, 1)/sqrt(1 + h^2), so the true points lie at 0, 0, h/sqrt(1 + h^2)
    want = (h + h / math.sqrt(1 + h * h)) / 6
    assert projection_distance(pred, true) == pytest.approx(want)
    assert projection_distance(true, pred) == pytest.approx(want)
    assert plane_angle(pred, true) == pytest.approx(math.degrees(math.atan(h)))


@settings(max_examples=30, deadline=None)
@given(
    axis=st.tuples(*(st.floats(-1, 1),) * 3).filter(lambda v: np.linalg.norm(v) > 0.1),
    angle=st.floats(0.0, math.pi),
    shift=st.tuples(*(st.floats(-50, 50),) * 3),
)
def test_metrics_are_invariant_to_rigid_motion(
    axis: tuple[float, float, float], angle: float, shift: tuple[float, float, float]
) -> None:
    pred = TRI + np.array([[0.3, -0.2, 0.5], [0.0, 0.4, -0.3], [-0.1, 0.2, 0.8]])
    r, t = _rot(np.asarray(axis), angle), np.asarray(shift)
    moved_p, moved_t = pred @ r.T + t, TRI @ r.T + t
    assert projection_distance(moved_p, moved_t) == pytest.approx(projection_distance(pred, TRI))
    assert plane_angle(moved_p, moved_t) == pytest.approx(plane_angle(pred, TRI), abs=1e-5)
    np.testing.assert_allclose(
        euclidean_errors(moved_p, moved_t), euclidean_errors(pred, TRI), atol=1e-9
    )


# ---- landmark errors, SDR, summaries ----


def test_euclidean_errors_batched() -> None:
    true = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    pred[0, 1] = [3.0, 4.0, 0.0]
    pred[1, 2] = [1.0, 2.0, 2.0]
    np.testing.assert_allclose(euclidean_errors(pred, true), [[0, 5, 0], [0, 0, 3]])


def test_success_detection_rate() -> None:
    assert SDR_THRESHOLDS_MM == (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
    errs = [0.5, 1.0, 1.2, 2.0, 2.4, 3.9, 10.0, 0.0]
    sdr = success_detection_rate(errs)
    # strictly below: 1 mm -> {0.5, 0.0}; 1.5 -> +1.0, 1.2; 2 -> same; 2.5 -> +2.0, 2.4; ...
    assert sdr == {1.0: 2 / 8, 1.5: 4 / 8, 2.0: 4 / 8, 2.5: 6 / 8, 3.0: 6 / 8, 4.0: 7 / 8}
    assert success_detection_rate(np.array([[1.0, 3.0]]), thresholds=[2.0]) == {2.0: 0.5}
    with pytest.raises(ValueError, match="no errors"):
        success_detection_rate([])


def test_summarize() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s.n, s.mean, s.median, s.q1, s.q3, s.worst) == (5, 4.0, 3.0, 2.0, 4.0, 10.0)
    assert s.iqr == 2.0
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_degenerate_points_give_no_plane_and_undefined_plane_metrics() -> None:
    same_spot = np.array([TRI[0], TRI[0], TRI[2]])
    on_a_line = np.array([[0.0, 0, 0], [1.0, 1, 1], [3.0, 3, 3]])
    for pts in (same_spot, on_a_line, np.array([TRI[0], TRI[1], [np.nan] * 3])):
        assert plane_or_none(pts) is None
        dist, angle = plane_errors(pts, TRI)
        assert math.isnan(dist) and math.isnan(angle)
    assert plane_or_none(TRI) is not None
    assert plane_errors(TRI + np.array([0, 0, 2.5]), TRI) == pytest.approx((2.5, 0.0), abs=1e-6)
    with pytest.raises(ValueError, match="collinear"):
        plane_errors(TRI, same_spot)  # a truth without a plane is bad data, not a result


def test_heights_above_use_the_cranial_normal() -> None:
    """Signed distance along the normal turned superior (LPS +z), whatever the point order."""
    tilted = TRI @ _rot(np.array([1.0, 0.0, 0.0]), math.radians(30)).T
    ostium = tilted.mean(axis=0) + np.array([0.0, 0.0, 10.0])
    up = heights_above(plane_through(tilted), ostium)
    assert up == pytest.approx(10.0 * math.cos(math.radians(30)))
    assert heights_above(plane_through(tilted[::-1]), ostium) == pytest.approx(up)
    below = tilted.mean(axis=0) - np.array([0.0, 0.0, 4.0])
    assert float(heights_above(plane_through(tilted), below)) < 0


def test_summaries_count_undefined_values() -> None:
    s = summarize([4.0, math.nan, 1.0, 3.0, 2.0, 10.0, math.nan])
    assert (s.n, s.undefined, s.median, s.worst) == (5, 2, 3.0, 10.0)
    empty = summarize([math.nan, math.nan])
    assert (empty.n, empty.undefined) == (0, 2) and math.isnan(empty.median)
    assert success_detection_rate([0.5, math.nan, 3.0], thresholds=[1.0]) == {1.0: 0.5}
