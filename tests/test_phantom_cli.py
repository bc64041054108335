"""``glip phantom`` end to end (small fast-preset cases) and the preview mosaics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glipcore.cli import app
from glipcore.geometry import make_affine
from glipcore.manifest import read_manifest, read_manifest_header
from glipcore.phantom import GENERATOR_VERSION, generate
from glipcore.preview import PlaneView, sample_plane, save_preview
from glipcore.volume import Volume
from glipcore.volume_io import load_volume

runner = CliRunner()


def _run(*args: str) -> None:
    result = runner.invoke(app, ["phantom", *args])
    assert result.exit_code == 0, result.output


def test_nifti_cases_manifest_truth_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    _run(
        "--out",
        str(out),
        "--cases",
        "2",
        "--seed",
        "4",
        "--preset",
        "fast",
        "--format",
        "nifti",
        "--workers",
        "2",
    )
    rows = read_manifest(out / "manifest.csv")
    assert [r.case_id for r in rows] == ["phantom-4-0000", "phantom-4-0001"]
    assert read_manifest_header(out / "manifest.csv")["generator_version"] == GENERATOR_VERSION
    truth = json.loads((out / "truth.json").read_text())
    assert truth["generator_version"] == GENERATOR_VERSION and truth["seed"] == 4
    for row, entry in zip(rows, truth["cases"], strict=True):
        assert row.path == (out / f"{row.case_id}.nii.gz").resolve()
        vol = load_volume(row.path)
        ref, ref_truth = generate(4, entry["index"], "fast")
        assert np.allclose(vol.affine, ref.affine, atol=1e-4)
        assert np.allclose(vol.array, ref.array, atol=1e-3)  # same case, byte for byte in HU
        assert np.array_equal(row.landmarks, ref_truth.landmarks_lps)
        assert row.quality == ref_truth.quality == entry["quality"]
        assert set(entry["truth"]) >= {"annulus_normal", "annulus_perimeter_mm", "ostia_lps"}
    # A second run adds cases to the same folder.
    _run(
        "--out",
        str(out),
        "-n",
        "1",
        "-s",
        "4",
        "--preset",
        "fast",
        "--format",
        "nifti",
        "--start-index",
        "5",
        "--workers",
        "1",
    )
    assert [r.case_id for r in read_manifest(out / "manifest.csv")] == [
        "phantom-4-0000",
        "phantom-4-0001",
        "phantom-4-0005",
    ]
    # ... but not with other settings.
    result = runner.invoke(
        app,
        [
            "phantom",
            "--out",
            str(out),
            "-n",
            "1",
            "-s",
            "5",
            "--preset",
            "fast",
            "--format",
            "nifti",
        ],
    )
    assert result.exit_code == 2 and "seed" in result.output


def test_dicom_case_with_preview(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    _run(
        "--out",
        str(out),
        "-n",
        "1",
        "-s",
        "2",
        "--preset",
        "fast",
        "--transfer-syntax",
        "rle",
        "--preview",
        "--workers",
        "1",
    )
    (row,) = read_manifest(out / "manifest.csv")
    files = sorted(row.path.glob("*.dcm"))
    assert len(files) == 80
    vol = load_volume(row.path)
    ref, _ = generate(2, 0, "fast")
    assert np.allclose(vol.affine, ref.affine, atol=1e-4)
    assert np.abs(vol.array - ref.array).max() <= 0.5 + 1e-3  # stored as rounded HU
    png = out / "preview" / f"{row.case_id}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_plane_sampling_is_exact_for_a_linear_image(tmp_path: Path) -> None:
    affine = make_affine([-10.0, 5.0, 2.0], [0.5, 0.7, 1.1])
    k, j, i = np.meshgrid(np.arange(30), np.arange(40), np.arange(50), indexing="ij")
    x = -10.0 + 0.5 * i
    y = 5.0 + 0.7 * j
    z = 2.0 + 1.1 * k
    vol = Volume((x + 2 * y - 3 * z).astype(np.float32), affine)
    u = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    v = np.array([0.0, 0.0, 1.0])
    centre = np.array([2.0, 18.0, 17.0])
    img = sample_plane(vol, PlaneView(centre, u, v, 4.0, "t"), step_mm=1.0)
    t = np.linspace(-4.0, 4.0, 9)
    pts = centre + t[None, :, None] * u + t[:, None, None] * v
    expected = pts[..., 0] + 2 * pts[..., 1] - 3 * pts[..., 2]
    assert np.allclose(img, expected, atol=1e-3)
    path = save_preview(
        vol, centre + np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3.0]]), tmp_path / "p.png", title="t"
    )
    assert path.stat().st_size > 1000


def test_manifest_paths_are_relative_to_the_manifest_with_a_relative_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _run("--out", "rel/ph", "-n", "1", "--preset", "fast", "--format", "nifti")
    text = (tmp_path / "rel/ph/manifest.csv").read_text()
    assert ",phantom-0-0000.nii.gz," in text
    (row,) = read_manifest(tmp_path / "rel/ph/manifest.csv")
    assert row.path == (tmp_path / "rel/ph/phantom-0-0000.nii.gz").resolve()
