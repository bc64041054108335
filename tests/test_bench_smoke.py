"""Smoke tests of bench.decode_real, bench.predict_memory and bench.sizing on tiny inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench import decode_real, predict_memory, sizing
from glipcore.bundle import save_bundle
from glipcore.decode import REFINE_METHODS
from glipcore.geometry import ijk_to_lps, make_affine
from glipcore.manifest import ManifestRow, write_manifest
from glipcore.phantom import random_case
from glipcore.preprocess import Preprocessing
from glipcore.unet import UNetConfig, build_unet
from glipcore.volume import Volume
from glipcore.volume_io import save_nifti
from tests.toy_cases import toy_hu_volume

CFG = UNetConfig(widths=(4, 8))


def _bundle(tmp_path: Path, folds: int) -> Path:
    states = []
    for i in range(folds):
        torch.manual_seed(i)
        states.append(build_unet(CFG).state_dict())
    return save_bundle(
        tmp_path / f"bundle{folds}",
        name="toy-bench",
        model_cfg=CFG,
        preprocessing=Preprocessing(),
        sigma_mm=1.0,
        fold_states=states,
        trained_on="phantom",
    )


def _cones(shape: tuple[int, int, int], centres_zyx: list[list[float]]) -> torch.Tensor:
    """(L, Z, Y, X) cones of slope 1 per voxel around each centre."""
    g = [torch.arange(n, dtype=torch.float64) for n in shape]
    zz, yy, xx = torch.meshgrid(*g, indexing="ij")
    maps = [
        10.0 - torch.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        for c in centres_zyx
    ]
    return torch.stack(maps).float()


def test_decode_methods_on_cones() -> None:
    affine = make_affine((5.0, -3.0, 2.0), (1.6, 1.6, 1.6))
    true_zyx = [[8.3, 9.6, 10.2], [12.0, 7.4, 9.7]]
    a = _cones((20, 20, 22), true_zyx)
    b = _cones((20, 20, 22), [[z + 0.2, y, x] for z, y, x in true_zyx])
    pts = decode_real.decode_methods([a, b], affine)
    assert list(pts) == decode_real.method_labels(2)
    truth = affine[:3, :3] @ (np.array(true_zyx)[:, ::-1] + [0, 0, 0.1]).T + affine[:3, 3:4]
    err = {k: np.linalg.norm(v - truth.T, axis=-1).max() for k, v in pts.items()}
    assert err["argmax"] > 0.4  # the true peaks are off the voxel grid
    for m in REFINE_METHODS:  # sub-voxel methods beat argmax on a clean cone
        assert err[m] < err["argmax"], m
    fold0 = ijk_to_lps(affine, np.array([[10.0, 10.0, 8.0], [10.0, 7.0, 12.0]]))
    np.testing.assert_allclose(pts["fold0 argmax"], fold0)
    assert len(decode_real.method_labels(1)) == 1 + len(REFINE_METHODS)


def test_second_peak_finds_the_other_cone() -> None:
    h = torch.maximum(
        _cones((24, 24, 24), [[6, 6, 6]])[0], _cones((24, 24, 24), [[18, 17, 16]])[0] - 2
    )
    main, second, rel = decode_real.second_peak(h)
    assert main == (6, 6, 6) and second == (18, 17, 16)
    assert 0.5 < rel < 1.0
    single = _cones((12, 12, 12), [[5, 6, 7]])[0]
    assert decode_real.second_peak(single) == ((5, 6, 7), (5, 6, 7), 0.0)


def test_decode_real_runs_on_a_tiny_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for i in range(2):
        vol, lm = toy_hu_volume(i)
        path = save_nifti(vol, tmp_path / f"case{i}.nii.gz")
        rows.append(ManifestRow(f"toy-{i}", path, lm, "3+"))
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    out = tmp_path / "errors.csv"
    png = tmp_path / "peak.png"
    results = decode_real.run(
        _bundle(tmp_path, 2), manifest, threads=1, out=out, plot="toy-1:LCC", plot_out=png
    )
    text = capsys.readouterr().out
    assert len(results) == 2 and "hybrid coord" in text and "med/argmax" in text
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2 * 3 and lines[0].startswith("case_id,landmark,err_argmax_mm")
    assert png.stat().st_size > 1000


def test_extend_z_keeps_geometry() -> None:
    assert predict_memory.mirrored_indices(7, 3).tolist() == [0, 1, 2, 2, 1, 0, 0]
    arr = np.arange(10 * 2 * 2, dtype=np.float32).reshape(10, 2, 2)
    vol = Volume(arr, make_affine((1.0, 2.0, -30.0), (0.5, 0.5, 2.0)))
    tall = predict_memory.extend_z(vol, 25, block=3)
    assert tall.shape_zyx == (25, 2, 2)
    lo = tall.meta["extended_z"]["below"]
    assert lo == 7
    np.testing.assert_array_equal(tall.array[lo : lo + 10], arr)
    np.testing.assert_array_equal(tall.array[lo - 1], arr[0])  # mirrored seam
    np.testing.assert_array_equal(tall.array[lo + 10], arr[9])
    p = np.array([[1.0, 1.0, 4.0]])
    np.testing.assert_allclose(tall.to_lps(p + np.array([0.0, 0.0, lo])), vol.to_lps(p))
    with pytest.raises(ValueError, match="total_slices"):
        predict_memory.extend_z(vol, 5)


def test_measure_in_process(tmp_path: Path) -> None:
    vol, _ = toy_hu_volume(3)
    path = tmp_path / "vol.npy"
    np.save(path, vol.array)
    r = predict_memory.measure(_bundle(tmp_path, 1), path, vol.affine, slab_z=8, threads=1)
    assert r["volume_bytes"] == vol.array.nbytes
    assert r["predict_peak"] >= r["rss_before_predict"] > 0
    assert np.array(r["landmarks_lps"]).shape == (3, 3)


def test_sizing_bench_on_one_fast_phantom(capsys: pytest.CaptureFixture[str]) -> None:
    cases = list(sizing.held_out_cases(10, 990_300))
    assert [random_case(990_300, i).quality for i, _, _ in cases[:5]] == ["1", "2", "3-", "3+", "4"]
    variants = {(random_case(990_300, i).quality, c, h) for i, c, h in cases}
    assert len(variants) == 10  # every grade with and without annular calcium
    results = sizing.run(1, "fast", 990_300, sizing.DEFAULT_MODEL, threads=1)
    text = capsys.readouterr().out
    assert len(results) == 1 and "median/goal" in text and "predicted/peer" in text
    for method in sizing.METHODS:
        assert method in text


def test_circle_through_three_points() -> None:
    pts = np.array([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [-10.0, 0.0, 5.0]])
    s = sizing.circle_sizes(pts)
    assert s.d_min == pytest.approx(20.0) and s.perimeter == pytest.approx(20.0 * np.pi)
