"""Multi-frame CT (Enhanced CT, Legacy Converted Enhanced CT) end to end: the outputs
reference its frames (SR evidence and Image Library, SEG, key images), every object is
dciodvfy-clean, and a phantom sent through the real SCP is processed by the worker with
the shipped model into hinge points within 3 mm of the truth."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from test_end_to_end import sr_points
from volume_fixtures import dciodvfy_errors

from dicomnode.config import Identity
from dicomnode.db.models import Result
from dicomnode.process.outputs import KeyImage, OutputContext, OutputError, OutputSet, build_all
from dicomnode.process.outputs.frames import source_frames
from dicomnode.process.series import volume_of_files
from dicomnode.process.worker import Worker, sorted_headers
from glipcore import phantom
from glipcore.dicomwrite import (
    SeriesMeta,
    write_ct_series,
    write_enhanced_ct,
    write_legacy_enhanced_ct,
)
from glipcore.geometry import make_affine
from glipcore.metrics import euclidean_errors
from glipcore.phantom import random_case, render, truth_of
from glipcore.phantom.truth import PhantomTruth
from glipcore.volume import Volume

NAMES = ("RCC", "LCC", "NCC")
SEED = 880_101
WRITERS: dict[str, Callable[[Volume, Path, SeriesMeta], Path]] = {
    "enhanced": write_enhanced_ct,
    "legacy-enhanced": write_legacy_enhanced_ct,
}


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the database plays no part in how a multi-frame CT is read."""
    yield f"sqlite:///{tmp_path / 'node.db'}"


@pytest.fixture(scope="module")
def small_case() -> tuple[Volume, PhantomTruth]:
    """A phantom rendered on 64 x 64 x 40 voxels (1 x 1 x 1.5 mm) around its annulus."""
    case = random_case(3, 0)
    truth = truth_of(case)
    shape = (40, 64, 64)
    spacing = np.array([1.0, 1.0, 1.5])
    origin = truth.annulus_center - (np.array(shape[::-1]) - 1) / 2.0 * spacing
    affine = make_affine(origin, spacing)
    return Volume(render(case, affine, shape), affine), truth


def _context(files: list[Path], truth: PhantomTruth) -> OutputContext:
    """The worker's way from archived files to the outputs' inputs."""
    return _context_of(sorted_headers(files), volume_of_files(files), truth)


def _context_of(
    source: list[pydicom.Dataset], volume: Volume, truth: PhantomTruth
) -> OutputContext:
    return OutputContext(
        source=source,
        volume=volume,
        landmarks_lps=dict(zip(NAMES, truth.landmarks_lps, strict=True)),
        plane_origin=truth.annulus_center,
        plane_normal=truth.annulus_normal,
        confidence={"RCC": 0.9, "LCC": 0.8, "NCC": 0.7},
        model_name="glip-unet",
        model_version="phantom-glip-0123456789ab",
        trained_on_phantom=True,
        warnings=[],
        identity=Identity(),
        recipe="0123456789abcdef01234567",
        content_time=datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    )


def _frame_positions(ds: pydicom.Dataset) -> dict[int, np.ndarray[Any, Any]]:
    return {f.frame_number or 0: f.position for f in source_frames([ds])}


def _library_images(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (library,) = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    return list(
        hd.sr.utils.find_content_items(
            library, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True
        )
    )


def _library_position(image: pydicom.Dataset) -> np.ndarray[Any, Any]:
    values = {
        item.ConceptNameCodeSequence[0].CodeMeaning: float(
            item.MeasuredValueSequence[0].NumericValue
        )
        for item in image.ContentSequence
        if item.ValueType == "NUM"
    }
    return np.array([values[f"Image Position (Patient) {a}"] for a in "XYZ"])


def assert_references_frames(out: OutputSet, ct: pydicom.Dataset) -> None:
    """SR, SEG and key images reference the multi-frame instance and its frames, each
    frame reference at the position the CT's functional groups give that frame."""
    positions = _frame_positions(ct)
    uid, n = str(ct.SOPInstanceUID), int(ct.NumberOfFrames)
    sr, seg = out.sr, out.seg
    assert sr is not None and seg is not None
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [str(r.ReferencedSOPInstanceUID) for r in evidence.ReferencedSOPSequence] == [uid]
    images = _library_images(sr)
    frames = [int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in images]
    assert sorted(frames) == list(range(1, n + 1))
    for image, frame in zip(images, frames, strict=True):
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
        np.testing.assert_allclose(_library_position(image), positions[frame], atol=1e-4)
    (ref_series,) = seg.ReferencedSeriesSequence
    assert [str(r.ReferencedSOPInstanceUID) for r in ref_series.ReferencedInstanceSequence] == [uid]
    assert len(seg.PerFrameFunctionalGroupsSequence) > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (src,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert src.ReferencedSOPInstanceUID == uid
        seg_pos = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(seg_pos, positions[int(src.ReferencedFrameNumber)], atol=1e-4)
    for key in out.keyimages:
        for ref in key.dataset.SourceImageSequence:
            assert ref.ReferencedSOPInstanceUID == uid
            assert 1 <= int(ref.ReferencedFrameNumber) <= n


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_outputs_of_a_multiframe_ct_reference_its_frames_and_are_valid(
    fmt: str, small_case: tuple[Volume, PhantomTruth], tmp_path: Path
) -> None:
    vol, truth = small_case
    path = WRITERS[fmt](vol, tmp_path / "ct.dcm", SeriesMeta.synthetic(3, fmt))
    ctx = _context([path], truth)
    assert len(ctx.frames) == vol.shape_zyx[0] and len(ctx.source) == 1
    out = build_all(ctx, seg_radius_mm=3.0, keyimage_size_px=128, keyimage_fov_mm=60.0)
    assert_references_frames(out, pydicom.dcmread(path, stop_before_pixels=True))
    for n, ds in enumerate(out.datasets()):
        written = tmp_path / f"out{n}.dcm"
        ds.save_as(written, enforce_file_format=True)
        assert dciodvfy_errors(written) == [], ds.Modality
    dump = subprocess.run(
        ["dsrdump", str(tmp_path / "out0.dcm")], capture_output=True, text=True, check=True
    ).stdout
    assert 'CONTAINER:(,,"Image Library")' in dump


def _seg_voxels_by_position(ctx: OutputContext) -> dict[tuple[float, ...], int]:
    """Segmented voxels per frame position of the SEG built from ``ctx``."""
    seg = build_all(
        ctx, seg_radius_mm=3.0, keyimage_size_px=64, keyimage_fov_mm=60.0, kinds=("seg",)
    ).seg
    assert seg is not None
    frames = seg.PerFrameFunctionalGroupsSequence
    pixels = seg.pixel_array.reshape(len(frames), -1)
    out: dict[tuple[float, ...], int] = {}
    for frame, px in zip(frames, pixels, strict=True):
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        key = tuple(round(float(x), 3) for x in position)
        out[key] = out.get(key, 0) + int(px.sum())
    return out


def test_seg_of_a_multiframe_ct_equals_the_single_frame_one(
    small_case: tuple[Volume, PhantomTruth], tmp_path: Path
) -> None:
    """The same volume as an Enhanced CT and as single-frame slices: the SEG marks the
    same voxels at the same positions."""
    vol, truth = small_case
    enhanced = write_enhanced_ct(vol, tmp_path / "enh.dcm", SeriesMeta.synthetic(3, "e"))
    single = write_ct_series(vol, tmp_path / "single", SeriesMeta.synthetic(3, "s"))
    multi = _seg_voxels_by_position(_context([enhanced], truth))
    assert sum(multi.values()) > 3 * 50  # three spheres of 3 mm on 1 x 1 x 1.5 mm voxels
    assert multi == _seg_voxels_by_position(_context(single, truth))


def test_a_multiframe_ct_without_frame_geometry_is_refused(
    small_case: tuple[Volume, PhantomTruth], tmp_path: Path
) -> None:
    vol, truth = small_case
    path = write_enhanced_ct(vol, tmp_path / "enh.dcm", SeriesMeta.synthetic(3, "e"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for group in (*ds.SharedFunctionalGroupsSequence, *ds.PerFrameFunctionalGroupsSequence):
        if "PlanePositionSequence" in group:
            del group.PlanePositionSequence
    with pytest.raises(OutputError, match="lacks ImagePositionPatient"):
        _context_of([ds], vol, truth)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def fast_phantom() -> tuple[Volume, PhantomTruth]:
    """The "fast" preset (128 x 128 x 80 at 1.25 mm) that the shipped model localises."""
    return phantom.generate(SEED, 0, "fast")


def _storescu_profile(tmp_path: Path, ct: Path) -> Path:
    """A storescu association profile "MF" proposing the SOP class of ``ct`` (storescu's
    own list lacks Legacy Converted Enhanced CT) in explicit and implicit little endian."""
    sop_class = pydicom.dcmread(ct, stop_before_pixels=True).SOPClassUID
    lines = [
        "[[TransferSyntaxes]]",
        "[LE]",
        f"TransferSyntax1 = {pydicom.uid.ExplicitVRLittleEndian}",
        f"TransferSyntax2 = {pydicom.uid.ImplicitVRLittleEndian}",
        "[[PresentationContexts]]",
        "[MFContexts]",
        f"PresentationContext1 = {sop_class}\\LE",
        "[[Profiles]]",
        "[MF]",
        "PresentationContexts = MFContexts",
    ]
    path = tmp_path / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_multiframe_ct_sent_to_the_node_is_processed(
    fmt: str,
    node_factory: Callable[..., Any],
    fast_phantom: tuple[Volume, PhantomTruth],
    tmp_path: Path,
) -> None:
    vol, truth = fast_phantom
    path = WRITERS[fmt](vol, tmp_path / "ct.dcm", SeriesMeta.synthetic(SEED, fmt))
    node = node_factory()
    sent = node.storescu([path], "STORESCU", "-xf", str(_storescu_profile(tmp_path, path)), "MF")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(node.wait_jobs(1, timeout=30)) == 1
    outcome = Worker(node.cfg, node.engine, worker_id="enhanced-test").process_one()
    assert outcome is not None and outcome.state == "done", outcome
    (result,) = node.rows(Result)
    assert result.status in ("ok", "flagged")
    outputs = result.outputs or {}
    files = {kind: [Path(o["path"]) for o in outputs[kind]] for kind in ("sr", "seg", "keyimage")}
    for path_out in (p for paths in files.values() for p in paths):
        assert dciodvfy_errors(path_out) == [], path_out
    (sr_path,) = files["sr"]
    (seg_path,) = files["seg"]
    out = OutputSet(
        sr=pydicom.dcmread(sr_path),
        seg=pydicom.dcmread(seg_path),
        keyimages=tuple(
            KeyImage(pydicom.dcmread(p, stop_before_pixels=True), b"", p.stem)
            for p in files["keyimage"]
        ),
    )
    assert_references_frames(out, pydicom.dcmread(path, stop_before_pixels=True))
    errors = euclidean_errors(sr_points(out.sr), truth.landmarks_lps)
    print(f"{fmt}: hinge-point errors {np.round(errors, 2)} mm")
    assert np.all(errors < 3.0), errors
