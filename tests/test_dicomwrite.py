"""DICOM CT writer: dciodvfy-clean files, header geometry, pixel encoding, UIDs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from volume_fixtures import (
    dciodvfy_errors,
    hu_volume,
    meta,
    oblique_direction,
    transfer_syntax_of,
    write_series,
)

from glipcore.dicomwrite import SeriesMeta, write_ct_series, write_enhanced_ct
from glipcore.geometry import make_affine
from glipcore.volume import Volume

SMALL = (6, 32, 40)


@pytest.mark.parametrize(
    "ts",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless],
    ids=lambda u: u.name,
)
def test_series_passes_dciodvfy(tmp_path: Path, ts: str) -> None:
    vol = hu_volume(SMALL, direction=oblique_direction())
    paths = write_series(vol, tmp_path, transfer_syntax=ts)
    for path in (paths[0], paths[-1]):
        assert transfer_syntax_of(path) == ts
        assert dciodvfy_errors(path) == []


def test_deflated_series_is_valid_once_inflated(tmp_path: Path) -> None:
    # dciodvfy cannot read deflated files itself: dcmtk inflates them, then it checks.
    vol = hu_volume(SMALL)
    paths = write_series(vol, tmp_path / "defl", transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert transfer_syntax_of(paths[0]) == DeflatedExplicitVRLittleEndian
    inflated = tmp_path / "inflated.dcm"
    subprocess.run(["dcmconv", "+te", str(paths[0]), str(inflated)], check=True)
    assert dciodvfy_errors(inflated) == []
    assert np.array_equal(pydicom.dcmread(paths[0]).pixel_array, vol.array[0].astype(np.int16))


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEGLSLossless], ids=lambda u: u.name)
def test_enhanced_ct_passes_dciodvfy(tmp_path: Path, ts: str) -> None:
    vol = hu_volume(SMALL, direction=oblique_direction())
    path = write_enhanced_ct(vol, tmp_path / "enhanced.dcm", meta(), transfer_syntax=ts)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1"
    assert int(ds.NumberOfFrames) == SMALL[0]
    assert np.array_equal(ds.pixel_array, vol.array.astype(np.int16))


def test_image_plane_attributes_follow_the_affine(tmp_path: Path) -> None:
    # i spacing 0.6 (between columns), j spacing 0.9 (between rows), slices 1.5 mm.
    direction = oblique_direction()
    origin = np.array([12.5, -30.0, 81.25])
    vol = hu_volume(SMALL, origin=tuple(origin), spacing=(0.6, 0.9, 1.5), direction=direction)
    paths = write_series(vol, tmp_path)
    for k in (0, 3, 5):
        ds = pydicom.dcmread(paths[k])
        expected_ipp = origin + k * 1.5 * direction[:, 2]
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], expected_ipp, atol=1e-9)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        assert np.allclose(iop[:3], direction[:, 0], atol=1e-12)
        assert np.allclose(iop[3:], direction[:, 1], atol=1e-12)
        assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.6]  # row spacing first
        assert float(ds.SliceThickness) == 1.5
        assert int(ds.InstanceNumber) == k + 1
        assert np.isclose(float(ds.SliceLocation), expected_ipp @ direction[:, 2])


def test_required_ct_attributes(tmp_path: Path) -> None:
    paths = write_series(hu_volume(SMALL), tmp_path)
    ds = pydicom.dcmread(paths[0])
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
    assert ds.RescaleType == "HU" and float(ds.RescaleSlope) == 1.0
    assert ds.Modality == "CT" and ds.Manufacturer == "glip-node phantom"
    assert "PositionReferenceIndicator" in ds and "KVP" in ds and "AcquisitionNumber" in ds
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_intercept_minus_1024_stores_hu_plus_1024(tmp_path: Path) -> None:
    vol = hu_volume(SMALL)
    paths = write_series(vol, tmp_path, rescale_intercept=-1024)
    ds = pydicom.dcmread(paths[2])
    assert float(ds.RescaleIntercept) == -1024.0
    assert np.array_equal(ds.pixel_array.astype(np.int32), vol.array[2].astype(np.int32) + 1024)


def test_twelve_bit_storage_and_its_range_check(tmp_path: Path) -> None:
    vol = Volume(np.full(SMALL, 1000.0, np.float32), make_affine((0, 0, 0), (1, 1, 1)))
    paths = write_series(vol, tmp_path / "ok", bits_stored=12, rescale_intercept=-1024)
    ds = pydicom.dcmread(paths[0])
    assert (ds.BitsStored, ds.HighBit) == (12, 11)
    assert dciodvfy_errors(paths[0]) == []
    assert float(ds.pixel_array[0, 0]) + float(ds.RescaleIntercept) == 1000.0
    too_bright = Volume(np.full(SMALL, 2100.0, np.float32), vol.affine)
    with pytest.raises(ValueError, match="does not fit 12 signed bits"):
        write_series(too_bright, tmp_path / "bad", bits_stored=12)


def test_unique_and_deterministic_uids(tmp_path: Path) -> None:
    vol = hu_volume(SMALL)
    first = [pydicom.dcmread(p).SOPInstanceUID for p in write_series(vol, tmp_path / "a")]
    again = [pydicom.dcmread(p).SOPInstanceUID for p in write_series(vol, tmp_path / "b")]
    assert len(set(first)) == SMALL[0]
    assert first == again
    other = SeriesMeta.synthetic(0, "test0002")
    assert other.series_instance_uid != meta().series_instance_uid
    assert SeriesMeta.synthetic(1, "test0001").study_instance_uid != meta().study_instance_uid


def test_synthetic_identity() -> None:
    m = SeriesMeta.synthetic(7, "case0001")
    assert m.patient_name == "PHANTOM^CASE0001"
    assert m.patient_sex in ("F", "M")
    assert len(m.patient_birth_date) == 8 and m.patient_birth_date.isdigit()
    assert len({m.study_instance_uid, m.series_instance_uid, m.frame_of_reference_uid}) == 3
    assert all(
        u.startswith("1.2.826.0.1.3680043.8.498.") and len(u) <= 64
        for u in (m.study_instance_uid, m.series_instance_uid)
    )
    assert SeriesMeta.synthetic(7, "case0001") == m
    with pytest.raises(ValueError, match="case_id"):
        SeriesMeta.synthetic(7, "case 1/../x")


def test_non_finite_values_are_refused(tmp_path: Path) -> None:
    vol = hu_volume(SMALL)
    vol.array[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_series(vol, tmp_path)


def test_unsupported_transfer_syntax_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported; use one of"):
        write_series(hu_volume(SMALL), tmp_path, transfer_syntax=JPEGBaseline8Bit)


def test_jpeg2000_needs_32_pixels_per_side(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 rows and columns"):
        write_series(hu_volume((3, 16, 40)), tmp_path, transfer_syntax=JPEG2000Lossless)


def test_sheared_affine_is_refused(tmp_path: Path) -> None:
    affine = make_affine((0, 0, 0), (1, 1, 1))
    affine[1, 2] = 0.2  # slice axis leaning along y: a gantry tilt
    vol = Volume(np.zeros(SMALL, np.float32), affine)
    with pytest.raises(ValueError, match="sheared"):
        write_ct_series(vol, tmp_path, meta())
