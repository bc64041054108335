"""Annulus sizing: the lumen contour on a plane, calcium bridged, refusals, a phantom case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import ellipe

from glipcore import phantom
from glipcore.geometry import Plane, make_affine
from glipcore.lumen_rays import largest_gap_deg
from glipcore.polygon import feret_diameters, polygon_area, polygon_perimeter
from glipcore.reformat import in_plane_axes, reformat
from glipcore.sizing import AnnulusSizing, SizingRefusal, SizingRefusalReason, size_annulus
from glipcore.volume import Volume

SPACING = 0.25
A_MM, B_MM, ANGLE = 13.0, 10.5, math.radians(30.0)


def ellipse_perimeter(a: float, b: float) -> float:
    """Exact perimeter of an ellipse with semi-axes a >= b."""
    return float(4.0 * a * ellipe(1.0 - (b / a) ** 2))


def _lumen_volume(
    *, calcium: bool, blood: float = 350.0, noise: float = 15.0, seed: int = 0
) -> Volume:
    """Axial slab (Z=6) with an elliptic lumen (semi-axes 13 x 10.5 mm, rotated 30 deg) of
    ``blood`` HU in 60 HU wall, blurred 0.6 mm; optionally a 1200 HU ball of radius 1.5 mm
    centred on the wall at the end of the minor axis."""
    n = 240  # 60 mm
    c = (n - 1) / 2.0
    yy, xx = (np.indices((n, n)) - c) * SPACING
    ca, sa = math.cos(ANGLE), math.sin(ANGLE)
    xr, yr = ca * xx + sa * yy, -sa * xx + ca * yy
    img = np.where((xr / A_MM) ** 2 + (yr / B_MM) ** 2 <= 1.0, blood, 60.0)
    if calcium:
        cx, cy = -sa * B_MM, ca * B_MM  # the end of the minor axis, on the wall
        img = np.where(np.hypot(xx - cx, yy - cy) <= 1.5, 1200.0, img)
    img = gaussian_filter(img, 0.6 / SPACING)
    rng = np.random.default_rng(seed)
    arr = np.repeat(img[None], 6, axis=0) + rng.normal(0.0, noise, (6, n, n))
    origin = (-c * SPACING, -c * SPACING, -2.5 * SPACING)
    return Volume(arr.astype(np.float32), make_affine(origin, (SPACING, SPACING, SPACING)))


AXIAL = Plane(origin=np.array([1.0, -0.5, 0.0]), normal=np.array([0.0, 0.0, 1.0]))


def _sized(vol: Volume, plane: Plane = AXIAL) -> AnnulusSizing:
    res = size_annulus(vol, plane)
    if not isinstance(res, AnnulusSizing):
        raise AssertionError(f"refused: {res}")
    return res


def test_polygon_measures_of_a_fine_ellipse() -> None:
    t = np.linspace(0.0, 2.0 * np.pi, 2000, endpoint=False)
    xy = np.stack([5.0 * np.cos(t), 3.0 * np.sin(t)], axis=1)
    assert polygon_area(xy) == pytest.approx(math.pi * 15.0, rel=1e-4)
    assert polygon_perimeter(xy) == pytest.approx(ellipse_perimeter(5.0, 3.0), rel=1e-4)
    assert feret_diameters(xy) == pytest.approx((6.0, 10.0), rel=1e-3)


def test_reformat_axes_and_geometry() -> None:
    n = np.array([0.3, -0.2, 0.9])
    u, v = in_plane_axes(n)
    np.testing.assert_allclose(np.cross(u, v), n / np.linalg.norm(n), atol=1e-12)
    arr = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 20, 20), np.float32)
    vol = Volume(arr, make_affine((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    img = reformat(vol, Plane(np.array([10.0, 10.0, 7.0]), np.array([0.0, 0.0, 1.0])), size_mm=6)
    assert np.allclose(img.array, 7.0)  # an axial plane at z = 7 mm samples slice 7
    far = reformat(vol, Plane(np.array([10.0, 10.0, 50.0]), np.array([0.0, 0.0, 1.0])))
    assert np.isnan(far.array).all()


def test_elliptic_lumen_is_measured_tightly() -> None:
    res = _sized(_lumen_volume(calcium=False))
    area = math.pi * A_MM * B_MM
    assert res.area_mm2 == pytest.approx(area, rel=0.015)
    assert res.perimeter_mm == pytest.approx(ellipse_perimeter(A_MM, B_MM), rel=0.01)
    assert res.min_diameter_mm == pytest.approx(2 * B_MM, abs=0.3)
    assert res.max_diameter_mm == pytest.approx(2 * A_MM, abs=0.3)
    assert res.eccentricity == pytest.approx(math.sqrt(1 - (B_MM / A_MM) ** 2), abs=0.03)
    assert res.contour_lps.shape[1] == 3
    np.testing.assert_allclose(res.contour_lps[:, 2], 0.0, atol=1e-9)  # on the plane
    assert res.bridged_fraction < 0.1
    assert res.edge_blur_mm == pytest.approx(math.hypot(0.6, 0.5), abs=0.15)  # blur (+) smoothing


def test_calcium_at_the_wall_is_bridged_not_counted() -> None:
    clean = _sized(_lumen_volume(calcium=False))
    calc = _sized(_lumen_volume(calcium=True))
    area = math.pi * A_MM * B_MM
    assert calc.area_mm2 == pytest.approx(area, rel=0.015)
    assert calc.perimeter_mm == pytest.approx(ellipse_perimeter(A_MM, B_MM), rel=0.01)
    assert abs(calc.area_mm2 - clean.area_mm2) < 0.01 * area
    assert calc.min_diameter_mm == pytest.approx(2 * B_MM, abs=0.3)  # not pushed out
    assert calc.bridged_fraction > 0.0
    # Without bridging, a contour at the calcium's edge would bite ~2.4 mm^2 out (half
    # the ball) or add it: the tight tolerance above rules out both.


def test_no_lumen_is_a_refusal_with_a_reason() -> None:
    vol = _lumen_volume(calcium=False, blood=60.0)
    res = size_annulus(vol, AXIAL)
    assert isinstance(res, SizingRefusal)
    assert res.reason is SizingRefusalReason.NO_LUMEN and "HU" in res.detail
    outside = Plane(np.array([0.0, 0.0, 80.0]), np.array([0.0, 0.0, 1.0]))
    res2 = size_annulus(vol, outside)
    assert isinstance(res2, SizingRefusal) and res2.reason is SizingRefusalReason.OUTSIDE_VOLUME


def test_lumen_reaching_the_border_is_an_open_contour() -> None:
    arr = np.full((6, 100, 100), 350.0, np.float32)  # blood everywhere
    vol = Volume(arr, make_affine((-20.0, -20.0, -1.0), (0.4, 0.4, 0.4)))
    res = size_annulus(vol, AXIAL)
    assert isinstance(res, SizingRefusal) and res.reason is SizingRefusalReason.OPEN_CONTOUR
    assert res.to_dict()["refused"] == "open_contour"


def test_phantom_annulus_on_the_truth_plane() -> None:
    seed, index = 990_301, 0
    case = phantom.random_case(seed, index, calcium="none")
    truth = phantom.truth_of(case)
    # A 40 mm box around the annulus at 0.4 mm: the full preset's sampling, seconds to draw.
    sp = 0.4
    shape = (100, 100, 100)
    origin = truth.annulus_center - (np.array(shape[::-1]) - 1) / 2.0 * sp
    affine = make_affine(origin, (sp, sp, sp))
    vol = Volume(phantom.render(case, affine, shape, noise=True), affine)
    res = _sized(vol, Plane(truth.annulus_center, truth.annulus_normal))
    assert res.area_mm2 == pytest.approx(truth.annulus_area_mm2, rel=0.04)
    assert res.perimeter_mm == pytest.approx(truth.annulus_perimeter_mm, rel=0.03)


def test_largest_bridged_gap_wraps_around() -> None:
    keep = np.ones(360, dtype=bool)
    assert largest_gap_deg(keep) == 0.0
    keep[:30] = False
    keep[-20:] = False  # one run of 50 rays across theta = 0
    keep[100:140] = False
    assert largest_gap_deg(keep) == pytest.approx(50.0)
    assert largest_gap_deg(np.zeros(36, dtype=bool)) == 360.0


def test_hinges_off_the_contour_refuse_the_sizing() -> None:
    vol = _lumen_volume(calcium=False)
    t = np.radians([90.0, 210.0, 330.0])
    ca, sa = math.cos(ANGLE), math.sin(ANGLE)
    x, y = A_MM * np.cos(t), B_MM * np.sin(t)
    on_wall = np.stack([ca * x - sa * y, sa * x + ca * y, np.zeros(3)], axis=1)
    assert isinstance(size_annulus(vol, AXIAL, hinges_lps=on_wall), AnnulusSizing)
    res = size_annulus(vol, AXIAL, hinges_lps=on_wall * 1.4)  # 4-5 mm outside the wall
    assert isinstance(res, SizingRefusal)
    assert res.reason is SizingRefusalReason.HINGES_OFF_CONTOUR and "mm" in res.detail
