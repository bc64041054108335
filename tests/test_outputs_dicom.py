"""The result objects on a small phantom CT: SR, SEG, key images, UIDs, dciodvfy, dsrdump."""

from __future__ import annotations

import copy
import io
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.image import imread
from pydicom.sr.codedict import codes

from dicomnode.config import Identity
from dicomnode.process.outputs import (
    KINDS,
    OutputContext,
    OutputError,
    PriorResult,
    build_all,
    build_key_images,
    build_seg,
    build_sr,
    coplanar_view,
    hinge_distances_mm,
    plane_tilt_deg,
)
from dicomnode.process.outputs.common import PATIENT_STUDY_KEYWORDS
from dicomnode.process.outputs.keyimage import views
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import make_affine
from glipcore.phantom import random_case, render, truth_of
from glipcore.phantom.truth import PhantomTruth
from glipcore.volume import Volume

NAMES = ("RCC", "LCC", "NCC")
VERSION = "phantom-glip-0123456789ab"
KEY_SIZE = 256
RECIPE = "0123456789abcdef01234567"
JOB_TIME = datetime(2025, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)


@dataclass(frozen=True)
class Ct:
    volume: Volume
    truth: PhantomTruth
    headers: list[pydicom.Dataset]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Ct:
    """A phantom case rendered on 96 x 96 x 60 voxels of 1 mm around its annulus."""
    case = random_case(3, 0)
    truth = truth_of(case)
    shape = (60, 96, 96)
    origin = truth.annulus_center - (np.array(shape[::-1]) - 1) / 2.0
    affine = make_affine(origin, [1.0, 1.0, 1.0])
    vol = Volume(render(case, affine, shape), affine)
    paths = write_ct_series(vol, tmp_path_factory.mktemp("ct"), SeriesMeta.synthetic(3, "out"))
    return Ct(vol, truth, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths])


@pytest.fixture
def make_ctx(ct: Ct) -> Callable[..., OutputContext]:
    def make(**over: Any) -> OutputContext:
        args: dict[str, Any] = {
            "source": ct.headers,
            "volume": ct.volume,
            "landmarks_lps": dict(zip(NAMES, ct.truth.landmarks_lps, strict=True)),
            "plane_origin": ct.truth.annulus_center,
            "plane_normal": ct.truth.annulus_normal,
            "confidence": {"RCC": 0.91, "LCC": 0.82, "NCC": 0.73},
            "model_name": "glip-unet",
            "model_version": VERSION,
            "trained_on_phantom": True,
            "warnings": ["NCC-RCC distance unusually short"],
            "identity": Identity(),
            "recipe": RECIPE,
            "content_time": JOB_TIME,
        }
        args.update(over)
        return OutputContext(**args)

    return make


def dciodvfy(ds: pydicom.Dataset, path: Path) -> str:
    """Write ``ds`` and run dciodvfy; fail on any error line, return the warnings."""
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    print(report)  # warnings are allowed; show them
    errors = [line for line in report.splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)
    return report


def assert_patient_study_copied(ds: pydicom.Dataset, ct: Ct) -> None:
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert str(ds.get(keyword, "")) == str(ct.headers[0].get(keyword, "")), keyword
    assert ds.Manufacturer == "glip-node"


# --------------------------------------------------------------------------- SR


def test_sr_is_valid_and_reads_back_exactly(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    ctx = make_ctx()
    ds = build_sr(ctx)
    dciodvfy(ds, tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.SeriesDescription == f"GLIP SR {VERSION} RUO phantom"
    assert_patient_study_copied(sr, ct)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = {g.tracking_identifier: g for g in report.get_planar_roi_measurement_groups()}
    assert set(groups) == {"RCC hinge point", "LCC hinge point", "NCC hinge point", "Annulus plane"}
    for name in NAMES:
        g = groups[f"{name} hinge point"]
        assert g.roi is not None and g.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert g.roi.frame_of_reference_uid == ct.headers[0].FrameOfReferenceUID
        # Graphic Data is FL: exact equality with the float32 rounding of the input.
        expected = ctx.landmarks_lps[name].astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(g.roi.value[0], expected)
        np.testing.assert_allclose(g.roi.value[0], ctx.landmarks_lps[name], atol=1e-4)
        (site,) = g.finding_sites
        assert site.value.value == "34202007"
        assert site.topographical_modifier is not None
        conf = {m.name.meaning: m.value for m in g.get_measurements()}
        assert conf == {"Certainty of Finding": pytest.approx(ctx.confidence[name])}
    ring = groups["Annulus plane"]
    assert ring.roi is not None and ring.roi.graphic_type == hd.sr.GraphicTypeValues3D.POLYGON
    poly = ring.roi.value
    assert poly.shape == (4, 3) and np.array_equal(poly[0], poly[-1])
    np.testing.assert_allclose(poly[:3], ctx.points(), atol=1e-4)
    got = {m.name.meaning: (m.value, m.unit.value) for m in ring.get_measurements()}
    dist = hinge_distances_mm(ctx.landmarks_lps)
    view = coplanar_view(ctx.plane_normal)
    expected_values = {
        "Inter-hinge distance RCC-LCC": (dist["RCC-LCC"], "mm"),
        "Inter-hinge distance LCC-NCC": (dist["LCC-NCC"], "mm"),
        "Inter-hinge distance NCC-RCC": (dist["NCC-RCC"], "mm"),
        "Annulus plane tilt from axial": (plane_tilt_deg(ctx.plane_normal), "deg"),
        "Positioner Primary Angle": (view.lao_deg, "deg"),
        "Positioner Secondary Angle": (view.cranial_deg, "deg"),
    }
    assert set(got) == set(expected_values)
    for key, (value, unit) in expected_values.items():
        assert got[key][0] == pytest.approx(value, rel=1e-9) and got[key][1] == unit
    assert abs(plane_tilt_deg(ctx.plane_normal) - ct.truth.measurements["tilt_deg"]) < 1e-6
    # Evidence: every CT instance of the series.
    evidence = {e[2] for e in sr.get_evidence()}
    assert evidence == {h.SOPInstanceUID for h in ct.headers}
    text = _texts(sr)
    assert any("RESEARCH USE ONLY" in t for t in text)
    assert any("PHANTOM-TRAINED" in t for t in text)
    assert "NCC-RCC distance unusually short" in text


def _texts(ds: pydicom.Dataset) -> list[str]:
    out: list[str] = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


def test_sr_without_phantom_or_warnings(make_ctx: Callable[..., OutputContext]) -> None:
    sr = build_sr(make_ctx(trained_on_phantom=False, warnings=[]))
    assert sr.SeriesDescription == f"GLIP SR {VERSION} RUO"
    text = _texts(sr)
    assert any("RESEARCH USE ONLY" in t for t in text)
    assert not any("PHANTOM" in t for t in text)


def test_dsrdump_shows_points_and_algorithm(
    make_ctx: Callable[..., OutputContext], tmp_path: Path
) -> None:
    ctx = make_ctx()
    path = tmp_path / "sr.dcm"
    build_sr(ctx).save_as(path, enforce_file_format=True)
    run = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True)
    dump = run.stdout
    assert "Comprehensive 3D SR" in dump
    assert "SCOORD3D" in dump and "(POINT," in dump and "(POLYGON," in dump
    x = float(np.float32(ctx.landmarks_lps["RCC"][0]))
    assert f"{x:.4f}"[:-1] in dump  # RCC's x coordinate (dsrdump prints ~9 digits)
    assert '"Algorithm Name")="glip-unet"' in dump
    assert f'"Algorithm Version")="{VERSION}"' in dump


# --------------------------------------------------------------------------- UIDs


def _uids(out: Any) -> list[tuple[str, str]]:
    return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in out.datasets()]


def test_uids_are_deterministic_per_source_version_and_kind(
    make_ctx: Callable[..., OutputContext],
) -> None:
    opts: dict[str, Any] = {"seg_radius_mm": 2.5, "keyimage_size_px": 128, "keyimage_fov_mm": 60.0}
    first = build_all(make_ctx(), **opts)
    again = build_all(make_ctx(warnings=[]), **opts)
    assert _uids(first) == _uids(again)
    assert len({sop for _, sop in _uids(first)}) == 5  # SR, SEG, 3 key images
    assert len({series for series, _ in _uids(first)}) == 3
    newer = build_all(make_ctx(model_version="phantom-glip-fedcba987654"), **opts)
    assert not {s for s, _ in _uids(first)} & {s for s, _ in _uids(newer)}
    assert not {i for _, i in _uids(first)} & {i for _, i in _uids(newer)}
    for ds in newer.datasets():
        assert "phantom-glip-fedcba987654" in ds.SeriesDescription
        assert ds.SeriesInstanceUID.startswith(Identity().uid_root)
        assert len(ds.SOPInstanceUID) <= 64 and pydicom.uid.UID(ds.SOPInstanceUID).is_valid


def test_build_all_kinds(make_ctx: Callable[..., OutputContext]) -> None:
    ctx = make_ctx()
    opts: dict[str, Any] = {"seg_radius_mm": 2.0, "keyimage_size_px": 128, "keyimage_fov_mm": 60.0}
    only_sr = build_all(ctx, kinds=["sr"], **opts)
    assert only_sr.seg is None and not only_sr.keyimages and only_sr.sr is not None
    assert list(only_sr.by_kind()) == ["sr"]
    assert only_sr.measurements["plane_tilt_deg"] == pytest.approx(plane_tilt_deg(ctx.plane_normal))
    everything = build_all(ctx, kinds=KINDS, **opts)
    assert [len(v) for v in everything.by_kind().values()] == [1, 1, 3]
    assert set(everything.pngs()) == {"annulus-plane", "root-long-axis-1", "root-long-axis-2"}
    rows = dict(everything.items())  # the shape the worker iterates
    assert [len(v) for v in rows.values()] == [1, 1, 3]
    assert rows["sr"] == [(everything.sr, None, None)]
    assert [(name, (png or b"")[:8]) for _, name, png in rows["keyimage"]] == [
        (k.name, b"\x89PNG\r\n\x1a\n") for k in everything.keyimages
    ]
    with pytest.raises(OutputError, match="unknown output kinds"):
        build_all(ctx, kinds=["sr", "rtstruct"], **opts)


# --------------------------------------------------------------------------- SEG


def test_seg_is_valid_with_spheres_at_the_hinges(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    radius = 3.0
    ctx = make_ctx(source=ct.headers[::-1])  # the builder must not rely on header order
    dciodvfy(build_seg(ctx, radius), tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesDescription == f"GLIP SEG {VERSION} RUO phantom"
    assert_patient_study_copied(seg, ct)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [f"{n} hinge point" for n in NAMES]
    k_of_uid = {h.SOPInstanceUID: k for k, h in enumerate(ct.headers)}  # written in k order
    got = np.zeros((3, *ct.volume.shape_zyx), dtype=bool)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert 0 < len(frames) < 3 * ct.volume.shape_zyx[0]  # empty frames omitted
    for frame, fg in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0]
        k = k_of_uid[ref.ReferencedSOPInstanceUID]  # frame references its CT instance
        ipp = [float(x) for x in fg.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, [float(x) for x in ct.headers[k].ImagePositionPatient])
        segment = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        got[segment - 1, k] = frame.astype(bool)
    referenced = {
        r.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for r in s.ReferencedInstanceSequence
    }
    assert referenced == set(k_of_uid)
    # Independent truth: voxel centres within the radius of each hinge point.
    zz, yy, xx = np.indices(ct.volume.shape_zyx)
    lps = ct.volume.to_lps(np.stack([xx, yy, zz], axis=-1).astype(np.float64))
    for n, name in enumerate(NAMES):
        expected = np.linalg.norm(lps - ctx.landmarks_lps[name], axis=-1) <= radius
        assert expected.sum() > 50
        np.testing.assert_array_equal(got[n], expected, err_msg=name)


def test_seg_overlapping_spheres_go_to_the_nearer_point(
    make_ctx: Callable[..., OutputContext], tmp_path: Path
) -> None:
    ctx = make_ctx()
    radius = max(hinge_distances_mm(ctx.landmarks_lps).values())  # every sphere overlaps
    seg = build_seg(ctx, radius)
    dciodvfy(seg, tmp_path / "seg.dcm")
    counts = [0, 0, 0]
    for fg, frame in zip(
        seg.PerFrameFunctionalGroupsSequence,
        seg.pixel_array.reshape(-1, seg.Rows, seg.Columns),
        strict=True,
    ):
        counts[fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber - 1] += int(frame.sum())
    voxel_sphere = 4 / 3 * np.pi * radius**3  # 1 mm voxels
    assert all(0 < c < voxel_sphere for c in counts)  # shared voxels counted once
    with pytest.raises(OutputError, match="radius"):
        build_seg(ctx, 0.0)


def test_seg_outside_the_volume_is_refused(make_ctx: Callable[..., OutputContext]) -> None:
    far = {n: p + np.array([500.0, 0, 0]) for n, p in make_ctx().landmarks_lps.items()}
    with pytest.raises(OutputError, match="intersects"):
        build_seg(make_ctx(landmarks_lps=far, plane_origin=far["RCC"]), 2.0)


# --------------------------------------------------------------------------- key images


def _band(rgb: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The caption band under the square reformat."""
    return rgb[rgb.shape[1] :]


def _yellow(rgb: np.ndarray[Any, Any]) -> int:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(np.sum((r > 150) & (g > 150) & (b < 90)))


def test_key_images_are_valid_and_show_points_and_caption(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    ctx = make_ctx()
    images = build_key_images(ctx, size_px=KEY_SIZE, fov_mm=70.0)
    assert [k.name for k in images] == ["annulus-plane", "root-long-axis-1", "root-long-axis-2"]
    uids = set()
    for n, key in enumerate(images, start=1):
        ds = key.dataset
        dciodvfy(ds, tmp_path / f"{key.name}.dcm")
        back = pydicom.dcmread(tmp_path / f"{key.name}.dcm")
        assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert back.BurnedInAnnotation == "YES" and back.InstanceNumber == n
        assert back.SeriesDescription == f"GLIP KEY {VERSION} RUO phantom"
        assert_patient_study_copied(back, ct)
        png = (imread(io.BytesIO(key.png), format="png")[..., :3] * 255).round().astype(np.uint8)
        assert png.shape == (back.Rows, back.Columns, 3) and back.Columns == KEY_SIZE
        np.testing.assert_array_equal(png, back.pixel_array)  # the PNG is the same picture
        assert _yellow(_band(png)) > 200  # caption text burned in
        uids.add(back.SOPInstanceUID)
    assert len(uids) == 3 and len({k.dataset.SeriesInstanceUID for k in images}) == 1

    # The hinge points are drawn where they project (annulus view: all in plane).
    rgb = images[0].dataset.pixel_array
    view = views(ctx)[0]
    colours = {"RCC": (230, 40, 40), "LCC": (40, 200, 60), "NCC": (60, 110, 240)}
    for name, colour in colours.items():
        d = ctx.landmarks_lps[name] - view.centre
        col = (KEY_SIZE - 1) / 2 + float(d @ view.right) * KEY_SIZE / 70.0
        row = (KEY_SIZE - 1) / 2 + float(d @ view.down) * KEY_SIZE / 70.0
        patch = rgb[int(row) - 3 : int(row) + 4, int(col) - 3 : int(col) + 4].astype(int)
        close = np.abs(patch - np.array(colour)).sum(axis=-1) < 60
        assert close.sum() >= 5, name


def test_key_image_caption_changes_with_warnings_and_phantom(
    make_ctx: Callable[..., OutputContext],
) -> None:
    def band(**over: Any) -> np.ndarray[Any, Any]:
        key = build_key_images(make_ctx(**over), size_px=128, fov_mm=60.0)[0]
        return _band(np.asarray(key.dataset.pixel_array))

    plain = band(trained_on_phantom=False, warnings=[])
    phantom = band(trained_on_phantom=True, warnings=[])
    warned = band(trained_on_phantom=True, warnings=["LCC confidence low", "tilt unusual"])
    assert _yellow(plain) > 50  # model, coplanar view, research use only
    assert phantom.shape[0] > plain.shape[0] and warned.shape[0] > phantom.shape[0]
    assert _yellow(warned) > _yellow(phantom) > _yellow(plain)


def test_key_images_refuse_bad_sizes(make_ctx: Callable[..., OutputContext]) -> None:
    with pytest.raises(OutputError, match="size"):
        build_key_images(make_ctx(), size_px=8)
    with pytest.raises(OutputError, match="field of view"):
        build_key_images(make_ctx(), size_px=128, fov_mm=-1.0)


# --------------------------------------------------------------------------- item 10: TID 1600


def _library_uids(sr: pydicom.Dataset) -> list[str]:
    """SOP Instance UIDs of the IMAGE items in the SR's Image Library (TID 1600)."""
    (library,) = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    images = hd.sr.utils.find_content_items(
        library, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True
    )
    return [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in images]


def test_sr_image_library_lists_the_ct_instances(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    dciodvfy(build_sr(make_ctx()), path)
    sr = hd.sr.srread(path)
    uids = _library_uids(sr)
    assert sorted(uids) == sorted(h.SOPInstanceUID for h in ct.headers)
    dump = subprocess.run(
        ["dsrdump", "+Pu", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert 'CONTAINER:(,,"Image Library")' in dump
    for h in ct.headers:
        assert f'IMAGE:(,,"Source")=(CT image,"{h.SOPInstanceUID}")' in dump
    report = hd.sr.MeasurementReport.from_sequence(sr.content)  # still a valid TID 1500
    assert len(report.get_planar_roi_measurement_groups()) == 4


def test_sr_image_library_without_slice_thickness(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    """SliceThickness is Type 2: an empty one takes the plane spacing (1 mm here)."""
    headers = [copy.deepcopy(h) for h in ct.headers]
    for h in headers:
        h.SliceThickness = None
    path = tmp_path / "sr.dcm"
    dciodvfy(build_sr(make_ctx(source=headers)), path)
    sr = hd.sr.srread(path)
    assert len(_library_uids(sr)) == len(headers)
    (library,) = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    thickness = hd.sr.utils.find_content_items(
        library, name=codes.DCM.SliceThickness, recursive=True
    )
    assert len(thickness) == len(headers)
    assert {float(n.MeasuredValueSequence[0].NumericValue) for n in thickness} == {1.0}


# --------------------------------------------------------------------------- item 9: modules


def _rich_headers(ct: Ct) -> list[pydicom.Dataset]:
    """The CT headers with more of the Patient, Patient Study and Clinical Trial modules."""
    heads = []
    for h in ct.headers:
        d = copy.deepcopy(h)
        d.OtherPatientIDs = ["ALT-1", "ALT-2"]
        other = pydicom.Dataset()
        other.PatientID = "MRN-77"
        other.IssuerOfPatientID = "HOSPITAL-B"
        other.TypeOfPatientID = "TEXT"
        d.OtherPatientIDsSequence = [other]
        d.IssuerOfPatientID = "HOSPITAL-A"
        d.PatientAge = "071Y"
        d.PatientSize = 1.72
        d.PatientWeight = 81.5
        d.StudyDescription = "TAVR planning CT"
        d.ClinicalTrialSponsorName = "Sponsor"
        d.ClinicalTrialProtocolID = "PROTO-1"
        d.ClinicalTrialProtocolName = ""
        d.ClinicalTrialSiteID = "S01"
        d.ClinicalTrialSiteName = ""
        d.ClinicalTrialSubjectID = "SUBJ-9"
        d.ClinicalTrialTimePointID = "BASELINE"
        heads.append(d)
    return heads


COPIED = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialTimePointID",
)


def test_every_output_copies_the_patient_and_study_modules(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    assert set(COPIED) - {"OtherPatientIDs"} <= set(PATIENT_STUDY_KEYWORDS)
    heads = _rich_headers(ct)
    out = build_all(
        make_ctx(source=heads), seg_radius_mm=2.5, keyimage_size_px=128, keyimage_fov_mm=60.0
    )
    src = heads[0]
    datasets = out.datasets()
    assert len(datasets) == 5
    for n, ds in enumerate(datasets):
        back = pydicom.dcmread(io.BytesIO(_bytes(ds)))
        for keyword in COPIED:
            assert keyword in back, (back.Modality, keyword)
            assert back[keyword].value == src[keyword].value, (back.Modality, keyword)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert back[keyword].value == src[keyword].value
        dciodvfy(ds, tmp_path / f"out{n}.dcm")


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- item 1: UIDs


OPTS: dict[str, Any] = {"seg_radius_mm": 2.5, "keyimage_size_px": 128, "keyimage_fov_mm": 60.0}


def test_encoding_the_same_job_again_gives_the_same_bytes(
    make_ctx: Callable[..., OutputContext],
) -> None:
    first = build_all(make_ctx(), **OPTS)
    time.sleep(1.1)  # the wall clock moved on: no object may show it
    again = build_all(make_ctx(), **OPTS)
    assert [_bytes(ds) for ds in first.datasets()] == [_bytes(ds) for ds in again.datasets()]
    local = JOB_TIME.astimezone()
    for ds in first.datasets():
        assert ds.InstanceCreationDate == local.strftime("%Y%m%d")
        assert ds.ContentTime == local.strftime("%H%M%S.%f")
    assert first.keyimages[0].dataset.DateOfSecondaryCapture == local.strftime("%Y%m%d")


def test_uids_follow_the_input_set_and_the_recipe(
    make_ctx: Callable[..., OutputContext], ct: Ct
) -> None:
    base = _uids(build_all(make_ctx(), **OPTS))
    shuffled = _uids(build_all(make_ctx(source=ct.headers[::-1]), **OPTS))
    assert shuffled == base  # a set: arrival order does not matter
    other = copy.deepcopy(ct.headers)
    other[7].SOPInstanceUID = pydicom.uid.generate_uid()  # one instance replaced
    changed = {
        "input set": _uids(build_all(make_ctx(source=other), **OPTS)),
        "recipe": _uids(build_all(make_ctx(recipe="fedcba9876543210fedcba98"), **OPTS)),
    }
    for why, uids in changed.items():
        assert not {s for s, _ in uids} & {s for s, _ in base}, why
        assert not {i for _, i in uids} & {i for _, i in base}, why


def test_a_reprocessed_sr_names_the_result_it_replaces(
    make_ctx: Callable[..., OutputContext], ct: Ct, tmp_path: Path
) -> None:
    prior = PriorResult(
        sr_sop_instance_uid="2.25.1111",
        sr_series_instance_uid="2.25.2222",
        description="job 3 of 2025-03-01 09:00 UTC, 142 instances",
    )
    path = tmp_path / "sr.dcm"
    dciodvfy(build_sr(make_ctx(prior=prior)), path)
    sr = hd.sr.srread(path)
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == ct.headers[0].StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == "2.25.2222"
    (ref,) = series.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == "2.25.1111"
    assert ref.ReferencedSOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert any("Replaces" in t and "2.25.1111" in t and "142 instances" in t for t in _texts(sr))
    assert "PredecessorDocumentsSequence" not in build_sr(make_ctx())
    own = build_sr(make_ctx()).SOPInstanceUID
    with pytest.raises(OutputError, match="replace itself"):
        build_sr(make_ctx(prior=PriorResult(own, "2.25.2222", "job 1")))
