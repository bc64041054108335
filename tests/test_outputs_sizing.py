"""Annulus sizing and coronary ostia in the result objects, on a small phantom CT: the SR's
"Aortic annulus" group (closed contour polygon, NUMs in UCUM units) and ostium groups
(points, finding sites, heights), a refused sizing stated in SR and captions, the contour
and the ostium long-axis views on the key images; dciodvfy, dsrdump and highdicom."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.config import Identity
from dicomnode.process.outputs import OutputContext, OutputError, build_all, build_sr, measurements
from dicomnode.process.outputs.keyimage import CONTOUR_COLOUR, caption_lines
from dicomnode.process.outputs.measurements import HEIGHT_DEFINITION
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import Plane, make_affine
from glipcore.phantom import random_case, render, truth_of
from glipcore.phantom.truth import PhantomTruth
from glipcore.sizing import AnnulusSizing, size_annulus
from glipcore.volume import Volume

NAMES = ("RCC", "LCC", "NCC")
KEY_SIZE = 128
REFUSAL = "no_lumen: no contrast-filled lumen at the plane's origin"


@dataclass(frozen=True)
class Sized:
    volume: Volume
    truth: PhantomTruth
    headers: Sequence[pydicom.Dataset]
    sizing: AnnulusSizing


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Sized:
    """A phantom on 96 x 96 x 60 voxels of 1 mm around its annulus, sized on its truth plane."""
    c = random_case(3, 0)
    truth = truth_of(c)
    shape = (60, 96, 96)
    affine = make_affine(truth.annulus_center - (np.array(shape[::-1]) - 1) / 2.0, [1.0] * 3)
    vol = Volume(render(c, affine, shape), affine)
    paths = write_ct_series(vol, tmp_path_factory.mktemp("ct"), SeriesMeta.synthetic(3, "sz"))
    sizing = size_annulus(
        vol, Plane(truth.annulus_center, truth.annulus_normal), hinges_lps=truth.landmarks_lps
    )
    assert isinstance(sizing, AnnulusSizing), sizing
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return Sized(vol, truth, headers, sizing)


@pytest.fixture
def make_ctx(case: Sized) -> Callable[..., OutputContext]:
    def make(**over: Any) -> OutputContext:
        args: dict[str, Any] = {
            "source": case.headers,
            "volume": case.volume,
            "landmarks_lps": dict(zip(NAMES, case.truth.landmarks_lps, strict=True)),
            "plane_origin": case.truth.annulus_center,
            "plane_normal": case.truth.annulus_normal,
            "confidence": {"RCC": 0.91, "LCC": 0.82, "NCC": 0.73, "LCO": 0.64, "RCO": 0.55},
            "model_name": "glip-unet",
            "model_version": "phantom-five-0123456789ab",
            "trained_on_phantom": True,
            "warnings": [],
            "identity": Identity(),
            "recipe": "0123456789abcdef01234567",
            "content_time": datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
            "sizing": case.sizing,
            "ostia_lps": {"LCO": case.truth.ostia_lps[0], "RCO": case.truth.ostia_lps[1]},
        }
        args.update(over)
        return OutputContext(**args)

    return make


def _valid(ds: pydicom.Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)


def _groups(path: Path) -> dict[str, Any]:
    sr = hd.sr.srread(path)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    return {str(g.tracking_identifier): g for g in report.get_planar_roi_measurement_groups()}


def _texts(ds: pydicom.Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                name = item.ConceptNameCodeSequence[0].CodeMeaning
                out.setdefault(name, []).append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return out


def test_sr_annulus_group_and_ostia_are_valid_and_read_back(
    make_ctx: Callable[..., OutputContext], case: Sized, tmp_path: Path
) -> None:
    ctx = make_ctx()
    path = tmp_path / "sr.dcm"
    _valid(build_sr(ctx), path)
    groups = _groups(path)
    assert set(groups) == {
        *(f"{n} hinge point" for n in NAMES),
        "Annulus plane",
        "Aortic annulus",
        "Left coronary ostium",
        "Right coronary ostium",
    }
    annulus = groups["Aortic annulus"]
    assert annulus.roi.graphic_type == hd.sr.GraphicTypeValues3D.POLYGON
    polygon = np.asarray(annulus.roi.value)
    s = case.sizing
    assert polygon.shape == (len(s.contour_lps) + 1, 3)
    np.testing.assert_array_equal(polygon[0], polygon[-1])  # closed, as DICOM requires
    np.testing.assert_allclose(polygon[:-1], s.contour_lps, atol=1e-4)
    off_plane = (polygon - case.truth.annulus_center) @ case.truth.annulus_normal
    assert np.abs(off_plane).max() < 1e-3
    got = {}
    for m in annulus.get_measurements():
        derivation = m.derivation.meaning if m.derivation is not None else ""
        got[(m.name.meaning, derivation)] = (m.value, m.unit.value)
    assert got == {
        ("Area", ""): (pytest.approx(s.area_mm2), "mm2"),
        ("Perimeter", ""): (pytest.approx(s.perimeter_mm), "mm"),
        ("Area-derived diameter", ""): (pytest.approx(s.area_diameter_mm), "mm"),
        ("Perimeter-derived diameter", ""): (pytest.approx(s.perimeter_diameter_mm), "mm"),
        ("Diameter", "Minimum"): (pytest.approx(s.min_diameter_mm), "mm"),
        ("Diameter", "Maximum"): (pytest.approx(s.max_diameter_mm), "mm"),
        ("Eccentricity", ""): (pytest.approx(s.eccentricity), "1"),
    }
    # The phantom's truth: the sizing is within a few per cent of its analytic annulus.
    assert abs(s.area_mm2 / case.truth.annulus_area_mm2 - 1.0) < 0.05
    sites = {"Left coronary ostium": "1256091001", "Right coronary ostium": "56789007"}
    truth_heights = {
        "Left coronary ostium": case.truth.measurements["left_ostium_height_mm"],
        "Right coronary ostium": case.truth.measurements["right_ostium_height_mm"],
    }
    for i, (label, code) in enumerate(sites.items()):
        g = groups[label]
        assert g.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        np.testing.assert_allclose(g.roi.value[0], case.truth.ostia_lps[i], atol=1e-4)
        (site,) = g.finding_sites
        assert (site.value.value, site.value.scheme_designator) == (code, "SCT")
        assert g.finding_type.value == "264114003"  # Ostium
        values = {m.name.meaning: (m.value, m.unit.value) for m in g.get_measurements()}
        assert values["Height"] == (pytest.approx(truth_heights[label], abs=1e-6), "mm")
        assert "Certainty of Finding" in values
    assert HEIGHT_DEFINITION in _texts(pydicom.dcmread(path))["Comment"]


def test_dsrdump_shows_the_annulus_and_ostia(
    make_ctx: Callable[..., OutputContext], tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    build_sr(make_ctx()).save_as(path, enforce_file_format=True)
    run = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for words in (
        '"Aortic annulus"',
        '"Area")=',
        "(mm2,UCUM",
        '"Eccentricity")=',
        "(1256091001,SCT,",
        "(56789007,SCT,",
        '"Height")=',
        "=(POLYGON,,",
    ):
        assert words in run.stdout, words


def test_refused_sizing_is_stated_and_the_hinges_still_delivered(
    make_ctx: Callable[..., OutputContext], tmp_path: Path
) -> None:
    ctx = make_ctx(sizing=None, sizing_refusal=REFUSAL, ostia_lps={})
    out = build_all(ctx, seg_radius_mm=3.0, keyimage_size_px=KEY_SIZE, keyimage_fov_mm=90.0)
    assert out.sr is not None and out.seg is not None and len(out.keyimages) == 3
    _valid(out.sr, tmp_path / "sr.dcm")
    groups = _groups(tmp_path / "sr.dcm")
    assert "Aortic annulus" not in groups and "RCC hinge point" in groups
    assert _texts(out.sr)["Annulus sizing refused"] == [
        f"Annulus sizing refused: {REFUSAL}; the hinge points stand"
    ]
    assert f"Annulus sizing refused: {REFUSAL}" in caption_lines(ctx)
    assert not any(k.startswith("annulus_") for k in out.measurements)
    assert not any("ostium" in line.lower() for line in caption_lines(ctx))


def _cyan(rgb: np.ndarray[Any, Any]) -> int:
    """Pixels of the contour's colour (cyan: red far below green and blue; grey never)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    assert CONTOUR_COLOUR == "#00e5ff"
    return int(((g - r > 80) & (b - r > 80)).sum())


def test_key_images_draw_the_contour_and_a_view_per_ostium(
    make_ctx: Callable[..., OutputContext], case: Sized, tmp_path: Path
) -> None:
    ctx = make_ctx()
    out = build_all(ctx, seg_radius_mm=3.0, keyimage_size_px=KEY_SIZE, keyimage_fov_mm=90.0)
    names = [k.name for k in out.keyimages]
    assert names == [
        "annulus-plane",
        "root-long-axis-1",
        "root-long-axis-2",
        "ostium-LCO",
        "ostium-RCO",
    ]
    by_name = {k.name: k.dataset for k in out.keyimages}
    assert [int(ds.InstanceNumber) for ds in by_name.values()] == [1, 2, 3, 4, 5]
    assert len({ds.SOPInstanceUID for ds in by_name.values()}) == 5
    _valid(by_name["ostium-LCO"], tmp_path / "lco.dcm")
    assert "left coronary ostium" in by_name["ostium-LCO"].ImageComments
    bare = build_all(
        make_ctx(sizing=None, ostia_lps={}),
        seg_radius_mm=3.0,
        keyimage_size_px=KEY_SIZE,
        keyimage_fov_mm=90.0,
        kinds=("keyimage",),
    )
    drawn = _cyan(by_name["annulus-plane"].pixel_array)
    assert drawn > 100 and drawn > 5 * _cyan(bare.keyimages[0].dataset.pixel_array)
    lines = caption_lines(ctx)
    assert any(line.startswith(f"Annulus area {case.sizing.area_mm2:.0f} mm²") for line in lines)
    lco = case.truth.measurements["left_ostium_height_mm"]
    assert any(f"LCO {lco:.1f} mm" in line for line in lines)


def test_measurements_carry_sizing_and_heights(
    make_ctx: Callable[..., OutputContext], case: Sized
) -> None:
    m = measurements(make_ctx())
    assert m["annulus_area_mm2"] == case.sizing.area_mm2
    assert m["annulus_eccentricity"] == case.sizing.eccentricity
    assert m["lco_height_mm"] == pytest.approx(
        case.truth.measurements["left_ostium_height_mm"], abs=1e-9
    )
    assert m["rco_height_mm"] == pytest.approx(
        case.truth.measurements["right_ostium_height_mm"], abs=1e-9
    )
    # A caudal normal is the same plane: the heights stay positive.
    flipped = measurements(make_ctx(plane_normal=-case.truth.annulus_normal))
    assert flipped["lco_height_mm"] == pytest.approx(m["lco_height_mm"])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sizing_refusal": REFUSAL}, "exclude each other"),
        ({"sizing": None, "sizing_refusal": " "}, "must say why"),
        ({"ostia_lps": {"NCO": [0.0, 0.0, 0.0]}}, "unexpected \\['NCO'\\]"),
        ({"ostia_lps": {"LCO": [0.0, np.nan, 0.0]}}, "ostium LCO must be a finite"),
    ],
)
def test_context_refuses_bad_sizing_or_ostia(
    make_ctx: Callable[..., OutputContext], over: dict[str, Any], message: str
) -> None:
    with pytest.raises(OutputError, match=message):
        make_ctx(**over)
