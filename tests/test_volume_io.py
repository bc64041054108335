"""Volume loaders: DICOM series (geometry, checks, compression), Enhanced CT, NIfTI."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813
from numpy.typing import NDArray
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid
from volume_fixtures import (
    SHAPE_ZYX,
    convert,
    ds_values,
    edit_files,
    hu_volume,
    meta,
    oblique_direction,
    rotation,
    sitk_index_to_lps,
    sitk_series,
    transfer_syntax_of,
    write_series,
)

from glipcore.dicom_loader import load_dicom_series, load_enhanced_ct, volume_from_datasets
from glipcore.dicomwrite import write_enhanced_ct
from glipcore.geometry import make_affine
from glipcore.volume import Volume, VolumeError, VolumeErrorReason
from glipcore.volume_io import load_nifti, load_volume, save_nifti

LANDMARKS_IJK = np.array(
    [[0.0, 0.0, 0.0], [63.0, 47.0, 19.0], [10.25, 33.5, 4.75], [40.0, 2.0, 12.5], [31.5, 23.5, 9.5]]
)


def _assert_matches_sitk(folder: Path, vol: Volume) -> None:
    img = sitk_series(folder)
    assert np.array_equal(sitk.GetArrayFromImage(img).astype(np.float32), vol.array)
    ours = vol.to_lps(LANDMARKS_IJK)
    theirs = sitk_index_to_lps(img, LANDMARKS_IJK)
    assert np.max(np.linalg.norm(ours - theirs, axis=1)) < 0.01


GEOMETRIES = {
    "axial": dict(spacing=(0.7, 0.7, 1.25)),
    "non_square": dict(spacing=(0.55, 0.9, 1.0)),
    "oblique": dict(spacing=(0.6, 0.8, 1.5), direction=oblique_direction()),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("intercept", [0, -1024])
def test_series_round_trip_agrees_with_truth_and_simpleitk(
    tmp_path: Path, name: str, intercept: int
) -> None:
    truth = hu_volume(**GEOMETRIES[name])  # type: ignore[arg-type]
    write_series(truth, tmp_path, rescale_intercept=intercept)
    vol = load_dicom_series(tmp_path)
    assert vol.array.dtype == np.float32
    assert np.array_equal(vol.array, truth.array)
    assert np.allclose(vol.affine, truth.affine, atol=1e-6)
    _assert_matches_sitk(tmp_path, vol)


def test_left_handed_stack_is_sorted_along_the_normal(tmp_path: Path) -> None:
    # Slice axis opposite to row x column: files run against the normal.
    direction = np.diag([1.0, 1.0, -1.0])
    truth = hu_volume(spacing=(0.7, 0.8, 1.25), direction=direction)
    write_series(truth, tmp_path)
    vol = load_dicom_series(tmp_path)
    n = SHAPE_ZYX[0]
    expected = make_affine((-20.0, 15.0, -40.0 - 1.25 * (n - 1)), (0.7, 0.8, 1.25))
    assert np.allclose(vol.affine, expected, atol=1e-6)
    assert np.array_equal(vol.array, truth.array[::-1])
    _assert_matches_sitk(tmp_path, vol)


def test_reversed_file_names_and_instance_numbers(tmp_path: Path) -> None:
    truth = hu_volume(direction=oblique_direction())
    src = write_series(truth, tmp_path / "src")
    n = len(src)
    edit_files(src, lambda k, ds: setattr(ds, "InstanceNumber", n - k))
    rev = tmp_path / "rev"
    rev.mkdir()
    for k, path in enumerate(src):
        shutil.copy(path, rev / f"IM{n - k:04d}")  # IM0001 holds the last slice
    vol = load_dicom_series(rev)
    assert np.array_equal(vol.array, truth.array)
    assert np.allclose(vol.affine, truth.affine, atol=1e-6)
    assert vol.meta["source_files"][0].endswith(f"IM{n:04d}")
    listed = load_dicom_series(sorted(rev.iterdir()))
    assert np.array_equal(listed.array, truth.array)


def test_meta_carries_uids_in_slice_order_and_no_identity(tmp_path: Path) -> None:
    m = meta()
    paths = write_series(hu_volume(), tmp_path, series_meta=m)
    vol = load_dicom_series(list(reversed(paths)))
    assert vol.meta["series_instance_uid"] == m.series_instance_uid
    assert vol.meta["study_instance_uid"] == m.study_instance_uid
    assert vol.meta["frame_of_reference_uid"] == m.frame_of_reference_uid
    assert vol.meta["modality"] == "CT"
    assert vol.meta["sop_instance_uids"] == [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    assert vol.meta["source_files"] == [str(p) for p in paths]
    assert np.isclose(vol.meta["slice_spacing_mm"], 1.25)
    text = repr(vol.meta)
    assert m.patient_id not in text and "PHANTOM" not in text


def test_small_header_noise_is_tolerated(tmp_path: Path) -> None:
    truth = hu_volume(direction=oblique_direction())
    paths = write_series(truth, tmp_path)
    rng = np.random.default_rng(3)

    def jitter(k: int, ds: pydicom.Dataset) -> None:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = ds_values(np.round(ipp, 3))  # scanners writing 3 decimals
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ds.ImageOrientationPatient = ds_values(iop + rng.uniform(-2e-6, 2e-6, 6))

    edit_files(paths, jitter)
    vol = load_dicom_series(tmp_path)
    assert np.array_equal(vol.array, truth.array)
    assert np.allclose(vol.affine, truth.affine, atol=1e-3)


def _shift_slices(paths: list[Path], shift: NDArray[np.float64], start: int = 0) -> None:
    """Add ``(k - start) * shift`` to ImagePositionPatient of slices k >= start."""

    def edit(k: int, ds: pydicom.Dataset) -> None:
        if k >= start:
            ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + (k - start) * shift
            ds.ImagePositionPatient = ds_values(ipp)

    edit_files(paths, edit)


def _reason(exc: pytest.ExceptionInfo[VolumeError]) -> VolumeErrorReason:
    return exc.value.reason


def test_gantry_tilt_is_refused_with_its_angle(tmp_path: Path) -> None:
    paths = write_series(hu_volume(spacing=(0.7, 0.7, 1.25)), tmp_path)
    # Each slice 1.25 mm further along z moves 1.25 * tan(12 deg) mm along y: 12 deg tilt.
    _shift_slices(paths, np.array([0.0, 1.25 * np.tan(np.radians(12.0)), 0.0]))
    with pytest.raises(VolumeError, match=r"12\.00 deg") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.GANTRY_TILT


def test_missing_slice_is_refused_with_its_position(tmp_path: Path) -> None:
    paths = write_series(hu_volume(spacing=(0.7, 0.7, 1.25)), tmp_path)
    paths[7].unlink()  # z = -40 + 7 * 1.25 = -31.25 is gone
    with pytest.raises(VolumeError) as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.NON_UNIFORM_SPACING
    message = str(exc.value)
    assert "missing slice" in message and "-32.500..-30.000 mm (about 1 missing)" in message
    assert "between 1.250 and 2.500 mm" in message


def test_varying_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(spacing=(0.7, 0.7, 1.25)), tmp_path)
    _shift_slices(paths, np.array([0.0, 0.0, 0.3]), start=10)  # spacing 1.55 from slice 10 on
    with pytest.raises(VolumeError, match=r"between 1\.250 and 1\.550 mm") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.NON_UNIFORM_SPACING


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    vol = hu_volume()
    write_series(vol, tmp_path, file_prefix="A")
    phase2 = write_series(vol, tmp_path, file_prefix="B", series_meta=meta(acquisition_number=2))

    def new_uid(k: int, ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    edit_files(phase2, new_uid)
    with pytest.raises(VolumeError) as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.DUPLICATE_POSITIONS
    assert "20 of 40 slices repeat" in str(exc.value)
    assert "2 distinct AcquisitionNumber" in str(exc.value)
    assert "splits phases" in str(exc.value)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(), tmp_path)
    r = rotation("z", 5.0)

    def rotate_one(k: int, ds: pydicom.Dataset) -> None:
        if k == 4:
            ds.ImageOrientationPatient = ds_values(np.concatenate([r[:, 0], r[:, 1]]))

    edit_files(paths, rotate_one)
    with pytest.raises(VolumeError, match="2 different ImageOrientationPatient") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.MIXED_ORIENTATIONS


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    a, b = meta("casea"), meta("caseb")
    write_series(hu_volume(), tmp_path, series_meta=a, file_prefix="A")
    write_series(hu_volume(), tmp_path, series_meta=b, file_prefix="B")
    with pytest.raises(VolumeError, match="belong to 2 series") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.MIXED_SERIES
    assert a.series_instance_uid in str(exc.value) and b.series_instance_uid in str(exc.value)


def test_missing_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(), tmp_path)
    edit_files(paths[3:4], lambda k, ds: delattr(ds, "PixelData"))
    with pytest.raises(VolumeError, match=re.escape(paths[3].name)) as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.MISSING_PIXEL_DATA


def test_undecodable_pixels_are_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume((4, 32, 32)), tmp_path, transfer_syntax=JPEGLSLossless)

    def corrupt(k: int, ds: pydicom.Dataset) -> None:
        if k == 2:
            ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream \xff\xd9"])

    edit_files(paths, corrupt)
    with pytest.raises(VolumeError, match=re.escape(paths[2].name)) as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.DECODE_FAILED
    assert "JPEG-LS Lossless" in str(exc.value)


def test_inconsistent_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(), tmp_path)
    edit_files(paths[5:6], lambda k, ds: setattr(ds, "PixelSpacing", ["0.8", "0.7"]))
    with pytest.raises(VolumeError, match="PixelSpacing varies") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.INCONSISTENT_FRAMES


def test_missing_position_is_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(), tmp_path)
    edit_files(paths[:1], lambda k, ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(VolumeError, match="no ImagePositionPatient") as exc:
        load_dicom_series(tmp_path)
    assert _reason(exc) is VolumeErrorReason.INVALID_GEOMETRY


def test_single_slice_and_non_dicom_are_refused(tmp_path: Path) -> None:
    paths = write_series(hu_volume(), tmp_path / "s")
    with pytest.raises(VolumeError, match="single-frame DICOM slice") as exc:
        load_volume(paths[0])
    assert _reason(exc) is VolumeErrorReason.TOO_FEW_SLICES
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(VolumeError) as exc:
        load_volume(junk)
    assert _reason(exc) is VolumeErrorReason.UNSUPPORTED_FILE
    with pytest.raises(VolumeError) as exc:
        load_dicom_series([junk])
    assert _reason(exc) is VolumeErrorReason.UNSUPPORTED_FILE


def test_stray_non_dicom_file_in_folder_is_skipped(tmp_path: Path) -> None:
    truth = hu_volume()
    write_series(truth, tmp_path)
    (tmp_path / "README.txt").write_text("exported by a PACS")
    assert np.array_equal(load_dicom_series(tmp_path).array, truth.array)


def test_volume_from_datasets_in_memory(tmp_path: Path) -> None:
    truth = hu_volume(direction=oblique_direction())
    paths = write_series(truth, tmp_path)
    datasets = [pydicom.dcmread(p) for p in reversed(paths)]
    vol = volume_from_datasets(datasets)
    assert np.array_equal(vol.array, truth.array)
    assert np.allclose(vol.affine, truth.affine, atol=1e-6)


# ----------------------------------------------------------------- compressed series


@pytest.fixture(scope="module")
def plain_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume]:
    folder = tmp_path_factory.mktemp("plain")
    truth = hu_volume((8, 40, 48), spacing=(0.6, 0.75, 1.0), direction=oblique_direction())
    write_series(truth, folder, rescale_intercept=-1024)
    return folder, truth


@pytest.mark.parametrize(
    ("tool", "ts"),
    [
        (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70"),  # JPEG Lossless, process 14 SV1
        (["dcmcjpls", "+el"], "1.2.840.10008.1.2.4.80"),  # JPEG-LS Lossless
        (["gdcmconv", "--j2k"], "1.2.840.10008.1.2.4.90"),  # JPEG 2000 Lossless
    ],
    ids=["dcmcjpeg", "dcmcjpls", "gdcmconv-j2k"],
)
def test_compressed_twin_loads_identically(
    tmp_path: Path, plain_series: tuple[Path, Volume], tool: list[str], ts: str
) -> None:
    folder, truth = plain_series
    twin = convert(tool, folder, tmp_path / "twin")
    assert transfer_syntax_of(next(twin.glob("*.dcm"))) == ts
    plain, packed = load_dicom_series(folder), load_dicom_series(twin)
    assert np.array_equal(packed.array, plain.array)
    assert np.array_equal(packed.array, truth.array)
    assert np.allclose(packed.affine, plain.affine, atol=1e-9)
    assert packed.meta["transfer_syntax_uid"] == ts


# ----------------------------------------------------------------- Enhanced CT


@pytest.mark.parametrize("direction", [None, oblique_direction(), np.diag([1.0, 1.0, -1.0])])
def test_enhanced_ct_equals_single_frame_series(
    tmp_path: Path, direction: NDArray[np.float64] | None
) -> None:
    truth = hu_volume(spacing=(0.6, 0.8, 1.25), direction=direction)
    write_series(truth, tmp_path / "series", rescale_intercept=-1024)
    path = write_enhanced_ct(truth, tmp_path / "enh.dcm", meta(), rescale_intercept=-1024)
    series, enhanced = load_dicom_series(tmp_path / "series"), load_enhanced_ct(path)
    assert np.array_equal(enhanced.array, series.array)
    assert np.allclose(enhanced.affine, series.affine, atol=1e-9)
    assert enhanced.meta["loader"] == "enhanced-ct"


def test_enhanced_ct_frames_out_of_order(tmp_path: Path) -> None:
    truth = hu_volume()
    path = write_enhanced_ct(truth, tmp_path / "enh.dcm", meta())
    ds = pydicom.dcmread(path)
    frames = list(ds.PerFrameFunctionalGroupsSequence)[::-1]
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
    # A per-frame rescale must win over the shared one: frame now first holds slice n-1.
    item = pydicom.Dataset()
    item.RescaleIntercept, item.RescaleSlope, item.RescaleType = "100", "1", "HU"
    frames[0].PixelValueTransformationSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    vol = load_enhanced_ct(path)
    expected = truth.array.copy()
    expected[-1] += 100.0
    assert np.array_equal(vol.array, expected)
    assert np.allclose(vol.affine, truth.affine, atol=1e-6)
    assert vol.meta["frame_numbers"][0] == SHAPE_ZYX[0]


def test_load_volume_dispatch(tmp_path: Path) -> None:
    truth = hu_volume()
    write_series(truth, tmp_path / "series")
    write_enhanced_ct(truth, tmp_path / "enh" / "one.dcm", meta())
    save_nifti(truth, tmp_path / "v.nii.gz")
    for source in (tmp_path / "series", tmp_path / "enh", tmp_path / "enh" / "one.dcm"):
        vol = load_volume(source)
        assert np.array_equal(vol.array, truth.array)
        assert np.allclose(vol.affine, truth.affine, atol=1e-6)
    assert np.array_equal(load_volume(tmp_path / "v.nii.gz").array, truth.array)
    with pytest.raises(VolumeError, match="does not exist"):
        load_volume(tmp_path / "nothing")


# ----------------------------------------------------------------- NIfTI

_NIFTI1 = np.dtype(
    [
        ("sizeof_hdr", "<i4"),
        ("data_type", "S10"),
        ("db_name", "S18"),
        ("extents", "<i4"),
        ("session_error", "<i2"),
        ("regular", "S1"),
        ("dim_info", "u1"),
        ("dim", "<i2", 8),
        ("intent_p", "<f4", 3),
        ("intent_code", "<i2"),
        ("datatype", "<i2"),
        ("bitpix", "<i2"),
        ("slice_start", "<i2"),
        ("pixdim", "<f4", 8),
        ("vox_offset", "<f4"),
        ("scl_slope", "<f4"),
        ("scl_inter", "<f4"),
        ("slice_end", "<i2"),
        ("slice_code", "u1"),
        ("xyzt_units", "u1"),
        ("cal_max", "<f4"),
        ("cal_min", "<f4"),
        ("slice_duration", "<f4"),
        ("toffset", "<f4"),
        ("glmax", "<i4"),
        ("glmin", "<i4"),
        ("descrip", "S80"),
        ("aux_file", "S24"),
        ("qform_code", "<i2"),
        ("sform_code", "<i2"),
        ("quatern", "<f4", 3),
        ("qoffset", "<f4", 3),
        ("srow", "<f4", (3, 4)),
        ("intent_name", "S16"),
        ("magic", "S4"),
    ]
)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _write_nifti_by_hand(
    path: Path, data_xyz: NDArray[np.int16], sform: NDArray[np.float64], quatern_bcd: list[float]
) -> None:
    assert _NIFTI1.itemsize == 348
    h = np.zeros((), dtype=_NIFTI1)
    h["sizeof_hdr"], h["regular"], h["magic"] = 348, b"r", b"n+1"
    h["dim"] = [3, *data_xyz.shape, 1, 1, 1, 1]
    h["datatype"], h["bitpix"] = 4, 16  # int16
    h["pixdim"] = [1.0, *np.linalg.norm(sform[:3, :3], axis=0), 1.0, 1.0, 1.0, 1.0]
    h["vox_offset"], h["scl_slope"], h["xyzt_units"] = 352.0, 1.0, 2  # mm
    h["qform_code"] = 1 if quatern_bcd else 0
    h["quatern"] = quatern_bcd or [0.0, 0.0, 0.0]
    h["qoffset"] = sform[:3, 3]
    h["sform_code"] = 1
    h["srow"] = sform[:3]
    path.write_bytes(h.tobytes() + b"\0" * 4 + data_xyz.astype("<i2").tobytes(order="F"))


def test_hand_written_nifti_is_flipped_to_lps(tmp_path: Path) -> None:
    # RAS sform diag(-0.8, -0.9, 2.5): i runs to the right (L-), j posterior (A-); qform says
    # the same with a 180-degree turn about z (quaternion b, c, d = 0, 0, 1).
    sform = np.array([[-0.8, 0, 0, 50.0], [0, -0.9, 0, 60.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]])
    data = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)  # (x, y, z)
    _write_nifti_by_hand(tmp_path / "h.nii", data, sform, [0.0, 0.0, 1.0])
    vol = load_nifti(tmp_path / "h.nii")
    expected = np.array([[0.8, 0, 0, -50.0], [0, 0.9, 0, -60.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]])
    assert np.allclose(vol.affine, expected, atol=1e-5)
    assert vol.shape_zyx == (3, 4, 5)
    assert vol.array[2, 1, 4] == data[4, 1, 2]


def test_hand_written_oblique_sform_nifti(tmp_path: Path) -> None:
    r = rotation("z", 30.0) @ rotation("x", 20.0)
    sform = np.eye(4)
    sform[:3, :3] = r @ np.diag([0.7, 0.8, 1.5])
    sform[:3, 3] = [-12.0, 34.0, 56.0]
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    _write_nifti_by_hand(tmp_path / "o.nii", data, sform, [])
    vol = load_nifti(tmp_path / "o.nii")
    assert np.allclose(vol.affine, RAS_TO_LPS @ sform, atol=1e-5)


def _read_header(path: Path) -> np.void:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return np.frombuffer(raw[:348], dtype=_NIFTI1)[0]


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_round_trip_and_raw_header(tmp_path: Path, name: str) -> None:
    truth = hu_volume(spacing=(0.6, 0.8, 1.5), direction=oblique_direction())
    path = save_nifti(truth, tmp_path / name)
    header = _read_header(path)
    assert header["sform_code"] > 0
    assert np.allclose(header["srow"], (RAS_TO_LPS @ truth.affine)[:3], atol=1e-4)
    assert np.allclose(header["pixdim"][1:4], [0.6, 0.8, 1.5], atol=1e-6)
    back = load_nifti(path)
    assert np.array_equal(back.array, truth.array)
    assert np.allclose(back.affine, truth.affine, atol=1e-5)


def test_sheared_volume_cannot_be_saved_as_nifti(tmp_path: Path) -> None:
    affine = make_affine((0, 0, 0), (1, 1, 1))
    affine[0, 2] = 0.3
    with pytest.raises(ValueError, match="sheared"):
        save_nifti(Volume(np.zeros((2, 3, 4), np.float32), affine), tmp_path / "s.nii")
