"""The retraining data: the annotated archived studies split into training and held-out
manifests, optional phantom cases mixed into training, and the fixed phantom reference set.

The studies are written by :func:`dicomnode.learn.annotation_export.export_dataset` (the
newest annotation per study, on the series it names or the one the node processed), so the
training set is exactly what ``dicomnode annotations export --dataset`` gives a researcher.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from dicomnode.learn.annotation_export import annotation_rows, case_id, export_dataset
from dicomnode.learn.holdout import split_holdout
from glipcore.landmarks import with_truth
from glipcore.manifest import ManifestRow, read_manifest, write_manifest

MIXED_PHANTOM_SEED = 7_000
"""Cohort of the phantom cases mixed into training (never the reference set's seed)."""


class NoAnnotationsError(RuntimeError):
    """No usable annotated study: nothing to retrain on."""


class UncoveredLandmarksError(NoAnnotationsError):
    """The active model predicts a landmark that no training case knows (nothing would
    teach it; fine-tuning would let it drift unseen)."""


def check_landmark_coverage(rows: Sequence[ManifestRow], landmarks: Sequence[str]) -> None:
    """:class:`UncoveredLandmarksError` naming the landmarks no row has, with the fix."""
    known = with_truth(landmarks, (r.points(landmarks) for r in rows))
    missing = [name for name in landmarks if name not in known]
    if missing:
        raise UncoveredLandmarksError(
            f"the active model predicts {', '.join(missing)} but no training case knows "
            f"{'it' if len(missing) == 1 else 'them'}: mix in phantom cases "
            "(retrain.phantom_cases; phantoms carry the coronary ostia) or annotate them "
            "(CSV columns LCO_x .. RCO_z, or SR points with the ostium finding sites)"
        )


@dataclass
class RetrainDataset:
    """Manifests of the training and held-out studies and the dataset's identity."""

    train_manifest: Path
    holdout_manifest: Path
    train_annotations: list[int]
    holdout_annotations: list[int]
    sha256: str
    holdout_rows: list[ManifestRow] = field(default_factory=list)
    phantom_cases: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    cache_hits: int = 0
    """Studies whose image came from the image cache (their series unchanged)."""

    def summary(self) -> dict[str, object]:
        """What the candidate records: annotation ids, the hash, counts (no PHI)."""
        return {
            "train_annotation_ids": self.train_annotations,
            "holdout_annotation_ids": self.holdout_annotations,
            "sha256": self.sha256,
            "phantom_cases": self.phantom_cases,
            "image_cache_hits": self.cache_hits,
            "skipped": [{"annotation_id": a, "reason": r} for a, r in self.skipped],
        }


def holdout_study_uids(engine: Engine, fraction: float, minimum: int) -> set[str]:
    """StudyInstanceUIDs of the annotated studies held out from training."""
    return split_holdout((r.study_uid for r in annotation_rows(engine)), fraction, minimum)


def _dataset_hash(rows: list[ManifestRow], annotation_of: dict[str, int]) -> str:
    items = sorted(
        (annotation_of[r.case_id], r.case_id, [round(float(v), 4) for v in r.landmarks.ravel()])
        for r in rows
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def phantom_rows(out_dir: Path, seed: int, count: int) -> list[ManifestRow]:
    """``count`` phantoms of cohort ``seed`` at the model preset, as NIfTI + manifest rows;
    generated once per folder (the same seed always gives the same cases)."""
    from glipcore.phantom import case_id as phantom_id
    from glipcore.phantom import generate
    from glipcore.volume_io import save_nifti

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        cid = phantom_id(seed, i)
        path = out_dir / f"{cid}.nii.gz"
        truth_file = out_dir / f"{cid}.json"
        known = json.loads(truth_file.read_text()) if truth_file.is_file() else None
        if not (path.is_file() and isinstance(known, dict)):  # a list: hinges only (older)
            vol, truth = generate(seed, i, "model")
            save_nifti(vol, path)
            known = {"landmarks": truth.landmarks_lps.tolist(), "ostia": truth.ostia_lps.tolist()}
            truth_file.write_text(json.dumps(known))
        rows.append(ManifestRow(cid, path, known["landmarks"], ostia=np.array(known["ostia"])))
    return rows


def build_dataset(
    engine: Engine,
    archive_root: Path,
    out_dir: Path,
    *,
    holdout_fraction: float,
    holdout_min: int,
    phantom_cases: int = 0,
    phantom_dir: Path | None = None,
    image_cache: Path | None = None,
) -> RetrainDataset:
    """Export the annotated studies to ``out_dir`` (their images kept in ``image_cache``
    across retrains when given) and split them into train/held-out manifests. Raises
    :class:`NoAnnotationsError` when no study can be used."""
    if not annotation_rows(engine):
        raise NoAnnotationsError(
            "no annotated studies: import annotations first (`dicomnode annotations import`)"
        )
    export = export_dataset(engine, archive_root, out_dir, image_cache=image_cache)
    rows = read_manifest(export.manifest) if export.cases else []
    if len(rows) < 2:
        reasons = "; ".join(f"annotation {a}: {r}" for a, r in export.skipped) or "none"
        raise NoAnnotationsError(
            f"{len(rows)} usable annotated studies (at least 2 needed); skipped: {reasons}"
        )
    annotation_of = {
        k: int(v) for k, v in json.loads((out_dir / "provenance.json").read_text()).items()
    }
    held_cases = {
        case_id(uid)
        for uid in split_holdout(
            (r.study_uid for r in annotation_rows(engine) if case_id(r.study_uid) in annotation_of),
            holdout_fraction,
            holdout_min,
        )
    }
    train = [r for r in rows if r.case_id not in held_cases]
    held = [r for r in rows if r.case_id in held_cases]
    phantoms = (
        phantom_rows(phantom_dir or out_dir / "phantoms", MIXED_PHANTOM_SEED, phantom_cases)
        if phantom_cases
        else []
    )
    return RetrainDataset(
        train_manifest=write_manifest([*train, *phantoms], out_dir / "train.csv"),
        holdout_manifest=write_manifest(held, out_dir / "holdout.csv"),
        train_annotations=sorted(annotation_of[r.case_id] for r in train),
        holdout_annotations=sorted(annotation_of[r.case_id] for r in held),
        sha256=_dataset_hash(rows, annotation_of),
        holdout_rows=held,
        phantom_cases=len(phantoms),
        skipped=export.skipped,
        cache_hits=export.cache_hits,
    )


def prune_image_cache(image_cache: Path, keep: set[Path]) -> int:
    """Delete cached images that the current dataset no longer uses (superseded series,
    purged or deleted studies); returns how many."""
    removed = 0
    for f in image_cache.glob("*.nii.gz"):
        if f.resolve() not in keep:
            f.unlink(missing_ok=True)
            removed += 1
    return removed


__all__ = [
    "MIXED_PHANTOM_SEED",
    "NoAnnotationsError",
    "RetrainDataset",
    "UncoveredLandmarksError",
    "build_dataset",
    "check_landmark_coverage",
    "holdout_study_uids",
    "phantom_rows",
    "prune_image_cache",
]
