"""Unit tests of the outputs' arithmetic: UIDs, measurements, C-arm angles, context checks."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from dicomnode.config import Identity
from dicomnode.process.outputs import (
    CoplanarView,
    OutputContext,
    OutputError,
    coplanar_view,
    hinge_distances_mm,
    measurements,
    output_uid,
    plane_tilt_deg,
)
from dicomnode.process.outputs.common import series_description
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import make_affine
from glipcore.volume import Volume

ROOT = Identity().uid_root
RECIPE = "0123456789abcdef01234567"
JOB_TIME = datetime(2025, 3, 1, 9, 30, 15, tzinfo=UTC)
SERIES = "1.2.3.4.5.6.7.8.9"


# --------------------------------------------------------------------------- UIDs


def test_output_uid_is_deterministic_valid_and_distinct() -> None:
    a = output_uid(ROOT, SERIES, "m-0123456789ab", "sr", "series")
    assert a == output_uid(ROOT, SERIES, "m-0123456789ab", "sr", "series")
    assert len(a) <= 64 and UID(a).is_valid and a.startswith(ROOT)
    others = {
        output_uid(ROOT, SERIES, "m-ba9876543210", "sr", "series"),
        output_uid(ROOT, SERIES + ".1", "m-0123456789ab", "sr", "series"),
        output_uid(ROOT, SERIES, "m-0123456789ab", "seg", "series"),
        output_uid(ROOT, SERIES, "m-0123456789ab", "sr", "instance/report"),
    }
    assert a not in others and len(others) == 4


def test_output_uid_fills_long_roots_and_refuses_bad_ones() -> None:
    root = "1." + "2" * 45 + "."  # 48 characters, the longest Identity allows
    uid = output_uid(root, SERIES, "v", "sr")
    assert len(uid) == 64 and UID(uid).is_valid
    assert output_uid("1.2.3", SERIES, "v", "sr").startswith("1.2.3.")
    with pytest.raises(ValueError, match="leading zeros"):
        output_uid("1.02.3.", SERIES, "v", "sr")
    with pytest.raises(ValueError, match="fewer than"):
        output_uid("1." + "2" * 55 + ".", SERIES, "v", "sr")
    with pytest.raises(ValueError, match="non-empty"):
        output_uid(ROOT, SERIES, "", "sr")


# --------------------------------------------------------------------------- measurements


def test_hinge_distances_of_a_known_triangle() -> None:
    d = hinge_distances_mm({"RCC": [0, 0, 0], "LCC": [3, 4, 0], "NCC": [0, 0, 12]})
    assert d == pytest.approx({"RCC-LCC": 5.0, "LCC-NCC": 13.0, "NCC-RCC": 12.0})
    with pytest.raises(OutputError, match="NCC"):
        hinge_distances_mm({"RCC": [0, 0, 0], "LCC": [1, 0, 0]})


@pytest.mark.parametrize("tilt", [0.0, 20.0, 50.0, 80.0])
def test_plane_tilt_from_axial(tilt: float) -> None:
    t = math.radians(tilt)
    assert plane_tilt_deg([0.0, -math.sin(t), math.cos(t)]) == pytest.approx(tilt)
    assert plane_tilt_deg([math.sin(t), 0.0, -math.cos(t)]) == pytest.approx(tilt)  # sign-free


def test_coplanar_view_of_simple_planes() -> None:
    # An axial annulus is edge-on in AP.
    ap = coplanar_view([0.0, 0.0, 1.0])
    assert (ap.lao_deg, ap.cranial_deg) == pytest.approx((0.0, 0.0))
    # Tilted forwards (normal anterior-cranial) by t: seen edge-on from caudal t.
    t = math.radians(35.0)
    v = coplanar_view([0.0, -math.sin(t), math.cos(t)])
    assert (v.lao_deg, v.cranial_deg) == pytest.approx((0.0, -35.0))
    # Tilted to the patient's right (normal right-cranial): edge-on in AP as well,
    # the AP direction already lies in the plane.
    r = coplanar_view([-math.sin(t), 0.0, math.cos(t)])
    assert (r.lao_deg, r.cranial_deg) == pytest.approx((0.0, 0.0), abs=1e-9)
    # A plane containing the lateral axis: edge-on at the matching LAO angle.
    n = np.array([-math.sin(t), -math.cos(t), 0.0])  # vertical plane, normal right-anterior
    lao = coplanar_view(n)
    assert (lao.lao_deg, lao.cranial_deg) == pytest.approx((90 - 35.0, 0.0))
    # Coronal annulus: no unique answer, lateral by convention.
    assert coplanar_view([0.0, -1.0, 0.0]) == CoplanarView(90.0, 0.0)
    with pytest.raises(OutputError):
        coplanar_view([0.0, 0.0, 0.0])


unit_normals = st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(0.05, 1)).filter(
    lambda v: float(np.linalg.norm(v)) > 0.2 and abs(v[1]) < 0.99 * float(np.linalg.norm(v))
)


@settings(max_examples=60, deadline=None)
@given(unit_normals, st.floats(-np.pi, np.pi))
def test_coplanar_view_is_edge_on_and_closest_to_ap(n: Any, phi: float) -> None:
    normal = np.asarray(n) / np.linalg.norm(n)
    view = coplanar_view(normal)
    v = view.detector_direction()
    assert abs(float(v @ normal)) < 1e-9  # annulus seen edge-on
    # Any other edge-on direction is no closer to AP (detector anterior, -y).
    e1 = np.cross(normal, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    other = math.cos(phi) * e1 + math.sin(phi) * e2
    assert -float(v[1]) >= -float(other[1]) - 1e-9
    assert -90.0 <= view.lao_deg <= 90.0 and -90.0 <= view.cranial_deg <= 90.0


def test_coplanar_view_label() -> None:
    assert CoplanarView(12.4, -15.2).label() == "LAO 12° / CAU 15°"
    assert CoplanarView(-7.6, 3.0).label() == "RAO 8° / CRA 3°"
    assert CoplanarView(-0.2, 0.4).label(degree_sign=False) == "LAO 0 deg / CRA 0 deg"
    v = CoplanarView(30.0, -20.0).detector_direction()
    assert v[0] > 0 and v[1] < 0 and v[2] < 0  # left, anterior, caudal


# --------------------------------------------------------------------------- context


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, list[pydicom.Dataset]]:
    """A 16 x 16 x 8 CT (1 mm) around the origin and its headers."""
    vol = Volume(
        np.zeros((8, 16, 16), dtype=np.float32), make_affine([-7.5, -7.5, -3.5], [1, 1, 1])
    )
    paths = write_ct_series(vol, tmp_path_factory.mktemp("tiny"), SeriesMeta.synthetic(5, "t"))
    return vol, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def make_ctx(tiny: tuple[Volume, list[pydicom.Dataset]], **over: Any) -> OutputContext:
    vol, src = tiny
    args: dict[str, Any] = {
        "source": src,
        "volume": vol,
        "landmarks_lps": {"RCC": [3.0, 0, 0], "LCC": [-2.0, 3, 0], "NCC": [-2.0, -3, 0]},
        "plane_origin": [0.0, 0, 0],
        "plane_normal": [0.0, 0, 1],
        "confidence": {"RCC": 0.9, "LCC": 0.8, "NCC": 0.7},
        "model_name": "glip-unet",
        "model_version": "phantom-glip-0123456789ab",
        "trained_on_phantom": True,
        "warnings": [],
        "identity": Identity(),
        "recipe": RECIPE,
        "content_time": JOB_TIME,
    }
    args.update(over)
    return OutputContext(**args)


def test_context_accepts_good_input_and_maps_slices(tiny: Any) -> None:
    ctx = make_ctx(tiny, plane_normal=[0.0, 0.0, 1.0005])
    assert ctx.slice_index == tuple(range(8))
    assert float(np.linalg.norm(ctx.plane_normal)) == pytest.approx(1.0, abs=1e-12)
    caudal = make_ctx(tiny, plane_normal=[0.6, 0.0, -0.8])
    np.testing.assert_allclose(caudal.plane_normal, [-0.6, 0.0, 0.8])  # same plane, cranial
    reversed_ctx = make_ctx(tiny, source=tiny[1][::-1])
    assert reversed_ctx.slice_index == tuple(range(7, -1, -1))
    m = measurements(ctx)
    assert m["plane_tilt_deg"] == pytest.approx(0.0)
    assert m["hinge_distance_lcc_ncc_mm"] == pytest.approx(6.0)
    assert set(m) >= {"coplanar_lao_deg", "coplanar_cranial_deg", "hinge_distance_rcc_lcc_mm"}


def _retagged(src: list[pydicom.Dataset], n: int, **attrs: Any) -> list[pydicom.Dataset]:
    out = [copy.deepcopy(ds) for ds in src]
    for k, v in attrs.items():
        setattr(out[n], k, v)
    return out


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"landmarks_lps": {"RCC": [0, 0, 0], "LCC": [1, 0, 0]}}, "missing \\['NCC'\\]"),
        (
            {"landmarks_lps": {"RCC": [0, 0, 0], "LCC": [1, 0, 0], "NCC": [0, 1, 0], "X": [0] * 3}},
            "unexpected \\['X'\\]",
        ),
        ({"landmarks_lps": {"RCC": [np.nan, 0, 0], "LCC": [1, 0, 0], "NCC": [0, 1, 0]}}, "RCC"),
        ({"landmarks_lps": {"RCC": [0, 0, 0], "LCC": [1, 0, 0], "NCC": [2, 0, 0]}}, "collinear"),
        ({"plane_normal": [0.0, 0.0, 2.0]}, "unit vector"),
        ({"plane_origin": [0.0, np.inf, 0.0]}, "plane_origin"),
        ({"confidence": {"RCC": 0.9, "LCC": 0.8}}, "NCC"),
        ({"confidence": {"RCC": 1.5, "LCC": 0.8, "NCC": 0.1}}, "0..1"),
        ({"model_version": ""}, "model_version"),
        ({"warnings": "one string"}, "warnings"),
        ({"source": []}, "source is empty"),
    ],
)
def test_context_refuses_bad_input(tiny: Any, over: dict[str, Any], message: str) -> None:
    with pytest.raises(OutputError, match=message):
        make_ctx(tiny, **over)


def test_context_refuses_inconsistent_headers(tiny: Any) -> None:
    src = tiny[1]
    with pytest.raises(OutputError, match="SeriesInstanceUID"):
        make_ctx(tiny, source=_retagged(src, 3, SeriesInstanceUID="1.2.3"))
    with pytest.raises(OutputError, match="FrameOfReferenceUID"):
        make_ctx(tiny, source=_retagged(src, 3, FrameOfReferenceUID="1.2.3"))
    with pytest.raises(OutputError, match="8 slices"):
        make_ctx(tiny, source=src[:5])
    with pytest.raises(OutputError, match="grid"):
        make_ctx(tiny, source=_retagged(src, 2, ImagePositionPatient=[-7.5, -7.5, 0.1]))
    missing = [copy.deepcopy(ds) for ds in src]
    del missing[0].PixelSpacing
    with pytest.raises(OutputError, match="PixelSpacing"):
        make_ctx(tiny, source=missing)


def test_series_description_fits_and_names_version(tiny: Any) -> None:
    ctx = make_ctx(tiny)
    assert series_description(ctx, "sr") == "GLIP SR phantom-glip-0123456789ab RUO phantom"
    ctx2 = make_ctx(tiny, trained_on_phantom=False, model_version="x" * 80 + "-0123456789ab")
    text = series_description(ctx2, "keyimage")
    assert len(text) <= 64 and text.startswith("GLIP KEY ~") and text.endswith("0123456789ab RUO")
