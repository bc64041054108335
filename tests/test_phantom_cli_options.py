"""``glip phantom`` calcium options, ostium columns and the enhanced (multi-frame) formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner
from volume_fixtures import dciodvfy_errors

from glipcore.cli import app
from glipcore.dicom_loader import load_dicom_file
from glipcore.manifest import read_manifest, read_manifest_header
from glipcore.phantom import generate, random_case
from glipcore.volume_io import load_volume

runner = CliRunner()


def _run(*args: str) -> None:
    result = runner.invoke(app, ["phantom", *args])
    assert result.exit_code == 0, result.output


def test_calcium_options_reach_truth_manifest_and_pixels(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    common = ("-n", "2", "-s", "6", "--preset", "fast", "--format", "nifti", "--workers", "1")
    _run("--out", str(out), *common, "--calcium", "heavy", "--hinge-calcium")
    header = read_manifest_header(out / "manifest.csv")
    assert header["calcium"] == "heavy" and header["hinge_calcium"] == "True"
    truth = json.loads((out / "truth.json").read_text())
    assert truth["calcium"] == "heavy" and truth["hinge_calcium"] is True
    rows = read_manifest(out / "manifest.csv")
    for row, entry in zip(rows, truth["cases"], strict=True):
        ref, ref_truth = generate(6, entry["index"], "fast", calcium="heavy", hinge_calcium=True)
        assert np.allclose(load_volume(row.path).array, ref.array, atol=1e-3)
        case = random_case(6, entry["index"], calcium="heavy", hinge_calcium=True)
        assert entry["parameters"] == json.loads(json.dumps(case.to_dict()))
        assert entry["calcium"] == "heavy" and entry["hinge_calcium"] is True
        # The ostium columns carry the truth's left and right coronary ostia.
        assert row.ostia is not None and np.array_equal(row.ostia, ref_truth.ostia_lps)
        default, _ = generate(6, entry["index"], "fast")
        assert not np.array_equal(default.array, ref.array)
    # Another calcium setting is not mixed into the same folder.
    result = runner.invoke(app, ["phantom", "--out", str(out), *common, "--calcium", "mild"])
    assert result.exit_code == 2 and "calcium" in result.output


@pytest.mark.parametrize(
    ("fmt", "sop_class", "file"),
    [
        ("enhanced", "1.2.840.10008.5.1.4.1.1.2.1", "EnhancedCT.dcm"),
        ("legacy-enhanced", "1.2.840.10008.5.1.4.1.1.2.2", "LegacyEnhancedCT.dcm"),
    ],
)
def test_enhanced_formats_pass_dciodvfy_and_load_back(
    tmp_path: Path, fmt: str, sop_class: str, file: str
) -> None:
    out = tmp_path / fmt
    _run("--out", str(out), "-n", "1", "-s", "3", "--preset", "fast", "--format", fmt)
    (row,) = read_manifest(out / "manifest.csv")
    assert [p.name for p in row.path.iterdir()] == [file]
    path = row.path / file
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == sop_class and int(ds.NumberOfFrames) == 80
    ref, _ = generate(3, 0, "fast")
    for vol in (load_dicom_file(path), load_volume(row.path)):
        assert vol.shape_zyx == ref.shape_zyx
        assert np.allclose(vol.affine, ref.affine, atol=1e-4)
        assert np.abs(vol.array - ref.array).max() <= 0.5 + 1e-3  # stored as rounded HU


def test_enhanced_format_keeps_the_transfer_syntax(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    _run(
        "--out", str(out), "-n", "1", "--preset", "fast", "--format", "enhanced",
        "--transfer-syntax", "jpegls",
    )  # fmt: skip
    path = out / "phantom-0-0000" / "EnhancedCT.dcm"
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.80"
    ref, _ = generate(0, 0, "fast")
    assert np.abs(load_volume(path).array - ref.array).max() <= 0.5 + 1e-3
