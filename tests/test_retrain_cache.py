"""Exported training images are cached across retrains, keyed by the series' content:
a second build reuses them, a series that changed (a slice added) is exported again."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from retrain_fixtures import make_site

from dicomnode.learn.annotation_export import case_id
from dicomnode.learn.retrain_dataset import build_dataset, prune_image_cache
from glipcore.manifest import read_manifest
from glipcore.volume_io import load_volume


def _add_slice(files: list[Path], out: Path) -> Path:
    """A copy of the series' top slice one slice higher, with a new SOP Instance UID (the
    modality sent the series again with one more slice)."""
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    top, below = (pydicom.dcmread(f) for f in (by_z[-1], by_z[-2]))
    ds = top
    step = float(top.ImagePositionPatient[2]) - float(below.ImagePositionPatient[2])
    ds.ImagePositionPatient = [
        *top.ImagePositionPatient[:2],
        float(top.ImagePositionPatient[2]) + step,
    ]
    ds.InstanceNumber = int(top.InstanceNumber) + 1
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return out


def test_second_build_reads_the_cache_and_a_changed_series_is_exported_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    site = make_site(sqlite_url, tmp_path, studies=3)
    try:
        site.import_points()
        cache = tmp_path / "image-cache"

        def build(name: str) -> tuple[int, dict[str, Path]]:
            ds = build_dataset(
                site.engine,
                site.cfg.archive_dir,
                tmp_path / name,
                holdout_fraction=0.3,
                holdout_min=1,
                image_cache=cache,
            )
            rows = read_manifest(tmp_path / name / "manifest.csv")
            return ds.cache_hits, {r.case_id: Path(r.path) for r in rows}

        hits, first = build("run1")
        assert hits == 0 and len(first) == 3
        assert all(p.parent == cache for p in first.values())
        stamps = {c: p.stat().st_mtime_ns for c, p in first.items()}

        hits, second = build("run2")
        assert hits == 3 and second == first
        assert {c: p.stat().st_mtime_ns for c, p in second.items()} == stamps  # not rewritten

        changed = site.studies[0]
        before = load_volume(first[case_id(changed.study_uid)]).array.shape
        extra = _add_slice(changed.files, tmp_path / "extra-slice.dcm")
        assert changed.rig.send([extra]) == ["stored"], "the extra slice was not archived"
        hits, third = build("run3")
        cid = case_id(changed.study_uid)
        assert hits == 2 and third[cid] != first[cid]
        assert {c: third[c] for c in third if c != cid} == {c: first[c] for c in first if c != cid}
        after = load_volume(third[cid]).array.shape
        assert after[0] == before[0] + 1, (before, after)  # the new slice is in the image

        # the superseded image is the only one the current dataset no longer uses
        assert prune_image_cache(cache, {p.resolve() for p in third.values()}) == 1
        assert sorted(cache.glob("*.nii.gz")) == sorted(third.values())
    finally:
        site.close()
