"""The held-out studies of retraining: chosen by a stable hash of the StudyInstanceUID.

A study whose hash falls below ``fraction`` is always held out, in every retrain, however
many studies are added; when that gives fewer than ``minimum``, the studies with the next
lowest hashes top it up. At least two studies always stay for training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MIN_TRAINING_STUDIES = 2
"""Studies always left for training (cross-validation needs two folds)."""


def holdout_score(study_uid: str) -> float:
    """A number in [0, 1) fixed by the study's UID (sha256; no patient data involved)."""
    digest = hashlib.sha256(b"glip-node holdout\0" + study_uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_holdout(study_uids: Iterable[str], fraction: float, minimum: int) -> set[str]:
    """The held-out subset of ``study_uids`` (see the module docstring)."""
    ranked = sorted(set(study_uids), key=holdout_score)
    cap = max(0, len(ranked) - MIN_TRAINING_STUDIES)
    below = sum(1 for uid in ranked if holdout_score(uid) < fraction)
    n = min(cap, max(below, minimum))
    return set(ranked[:n])


__all__ = ["MIN_TRAINING_STUDIES", "holdout_score", "split_holdout"]
