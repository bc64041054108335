"""Compressed series (made by dcmtk and GDCM from an uncompressed twin) are stored byte for
byte as sent and load as the same Volume as the twin."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import Node, dataset_bytes, storescu_config, tiny_volume, write_series

from dicomnode.db.models import Instance, Series
from dicomnode.process.series import job_files, volume_of_files
from glipcore.dicom_loader import load_dicom_series
from glipcore.volume import Volume

NodeFactory = Callable[..., Node]

# name -> (command converting IN to OUT, transfer syntax UID the files must end up in)
LOSSLESS: dict[str, tuple[list[str], str]] = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70"),
    "jpeg-lossless-14": (["dcmcjpeg", "+el"], "1.2.840.10008.1.2.4.57"),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], "1.2.840.10008.1.2.4.80"),
    "rle": (["dcmcrle"], "1.2.840.10008.1.2.5"),
    "j2k-lossless": (["gdcmconv", "--j2k"], "1.2.840.10008.1.2.4.90"),
    "deflate": (["dcmconv", "+td"], "1.2.840.10008.1.2.1.99"),
}
LOSSY: dict[str, tuple[list[str], str]] = {
    "jpeg-ls-near": (["dcmcjpls", "+en"], "1.2.840.10008.1.2.4.81"),
    "j2k-lossy": (["gdcmconv", "--j2k", "--lossy", "-q", "40"], "1.2.840.10008.1.2.4.91"),
    "jpeg-extended-12bit": (["dcmcjpeg", "+ee"], "1.2.840.10008.1.2.4.51"),
}


def _unsigned(files: list[Path], out_dir: Path) -> list[Path]:
    """The same HU as unsigned pixels (JPEG-LS near-lossless needs them): +1024 stored,
    RescaleIntercept lowered by 1024."""
    from pydicom import dcmread

    out_dir.mkdir()
    outs = []
    for f in files:
        ds = dcmread(f)
        stored = ds.pixel_array.astype(np.int32) + 1024
        assert stored.min() >= 0
        ds.PixelRepresentation = 0
        ds.PixelData = stored.astype("<u2").tobytes()
        ds.RescaleIntercept = float(ds.RescaleIntercept) - 1024
        ds.save_as(out_dir / f.name, enforce_file_format=True)
        outs.append(out_dir / f.name)
    return outs


def _convert(cmd: list[str], src: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir()
    outs = []
    for f in src:
        out = out_dir / f.name
        subprocess.run([*cmd, str(f), str(out)], check=True, capture_output=True)
        if cmd[0] == "gdcmconv":  # dcmtk re-encodes what it sends: give it its own encoding
            subprocess.run(["dcmconv", str(out), str(out)], check=True, capture_output=True)
        outs.append(out)
    return outs


def _twins(
    tmp_path: Path, codecs: dict[str, tuple[list[str], str]], **write: object
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per codec: an uncompressed series (its own study) and its compressed copy."""
    plain, packed = {}, {}
    for i, (name, (cmd, _ts)) in enumerate(codecs.items()):
        plain[name] = write_series(tmp_path / f"{name}-plain", seed=100 + i, case_id=name, **write)
        if name == "jpeg-ls-near":
            plain[name] = _unsigned(plain[name], tmp_path / f"{name}-unsigned")
        packed[name] = _convert(cmd, plain[name], tmp_path / f"{name}-packed")
    return plain, packed


def _archived(
    node: Node, packed: dict[str, list[Path]], codecs: dict[str, tuple[list[str], str]]
) -> dict[str, tuple[Series, set[str], set[bytes], list[Path]]]:
    """Per codec: its series row, stored transfer syntaxes, archived data sets and files."""
    from pydicom import dcmread

    series = node.wait_decided(len(codecs))
    out = {}
    for name in codecs:
        uid = dcmread(packed[name][0], stop_before_pixels=True).SeriesInstanceUID
        (row,) = [s for s in series if s.series_instance_uid == uid]
        inst = node.rows(Instance, Instance.series_fk == row.id)
        paths = [node.cfg.archive_dir / i.path for i in inst]
        stored = {dataset_bytes(p) for p in paths}
        out[name] = (row, {i.transfer_syntax_uid for i in inst}, stored, paths)
    return out


def test_lossless_series_stored_as_sent_and_load_like_their_twin(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    plain, packed = _twins(tmp_path, LOSSLESS)
    for name, (_cmd, ts) in LOSSLESS.items():  # the tools really produced the codec
        from pydicom import dcmread

        assert dcmread(packed[name][0]).file_meta.TransferSyntaxUID == ts, name
    node = node_factory()
    cfg = storescu_config(tmp_path / "storescu.cfg")
    files = [f for series in packed.values() for f in series]
    res = node.storescu(files, "STORESCU", "-xf", str(cfg), "CT")
    assert res.returncode == 0, res.stdout + res.stderr
    got = _archived(node, packed, LOSSLESS)
    jobs = node.wait_jobs(len(LOSSLESS))
    assert len(jobs) == len(LOSSLESS)
    for name, (_cmd, ts) in LOSSLESS.items():
        row, stored_ts, stored, _paths = got[name]
        assert row.decision == "selected", row.decision_reason
        (job,) = [j for j in jobs if j.series_fk == row.id]
        vol = volume_of_files(job_files(node.engine, node.cfg.archive_dir, job.id))
        assert stored_ts == {ts}, name
        if name != "deflate":  # dcmtk re-deflates on sending: compare volumes only
            assert stored == {dataset_bytes(f) for f in packed[name]}, name
        twin = load_dicom_series(plain[name])
        np.testing.assert_array_equal(vol.array, twin.array, err_msg=name)
        np.testing.assert_allclose(vol.affine, twin.affine, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lossy_series_stored_as_sent(node_factory: NodeFactory, tmp_path: Path) -> None:
    # 12-bit stored values (HU + 1024) so that 12-bit JPEG extended applies
    base = tiny_volume(7)
    vol = Volume(np.clip(base.array, -1000, 1000), base.affine)  # fits 12 bits
    plain, packed = _twins(tmp_path, LOSSY, vol=vol, rescale_intercept=-1024.0, bits_stored=12)
    node = node_factory()
    cfg = storescu_config(tmp_path / "storescu.cfg")
    files = [f for series in packed.values() for f in series]
    res = node.storescu(files, "STORESCU", "-xf", str(cfg), "CT")
    assert res.returncode == 0, res.stdout + res.stderr
    got = _archived(node, packed, LOSSY)
    for name, (_cmd, ts) in LOSSY.items():
        row, stored_ts, stored, paths = got[name]
        vol = load_dicom_series(paths)
        assert stored_ts == {ts}, name
        assert stored == {dataset_bytes(f) for f in packed[name]}, name
        twin = load_dicom_series(plain[name])
        assert vol.array.shape == twin.array.shape, name
        np.testing.assert_allclose(vol.affine, twin.affine, atol=1e-6, err_msg=name)
        if name == "jpeg-ls-near":  # NEAR = 2: every stored value within 2 of the original
            assert np.abs(vol.array - twin.array).max() <= 2.0
        # lossy tools mark the images DERIVED: archived, never processed
        if row.decision != "selected":
            assert row.decision_reason == "not selected: image type DERIVED (ORIGINAL required)"
