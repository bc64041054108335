"""The one held-out phantom test set every run is scored on.

Its own seed (no training cohort uses it), and stratified: the first indices of that seed
in order until every quality grade has ``per_grade`` cases (grades are drawn with the
paper's cohort's frequencies, so a plain cohort would have two or three grade-1 cases).
A case's grade is known from its parameter draw without rendering it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from glipcore.dataset import Case
from glipcore.experiment.budget import HeldOutSpec
from glipcore.phantom_cases import CalciumShare, _phantom_case
from glipcore.preprocess import Preprocessing

MAX_SCAN = 20_000


def stratified_indices(spec: HeldOutSpec) -> list[int]:
    """Indices of ``spec.seed`` making the test set: for each grade its first
    ``per_grade`` cases (sorted); ValueError if a grade never reaches that count."""
    from glipcore.phantom import QUALITY_GRADES, random_case

    picked: dict[str, list[int]] = {g: [] for g in QUALITY_GRADES}
    for index in range(MAX_SCAN):
        grade = random_case(spec.seed, index).quality
        if len(picked[grade]) < spec.per_grade:
            picked[grade].append(index)
        if all(len(v) >= spec.per_grade for v in picked.values()):
            return sorted(i for v in picked.values() for i in v)
    short = {g: len(v) for g, v in picked.items() if len(v) < spec.per_grade}
    raise ValueError(f"test seed {spec.seed}: too few cases of grades {short} in {MAX_SCAN}")


def load_test_set(
    spec: HeldOutSpec, prep: Preprocessing, cache_dir: Path, progress: bool = True
) -> list[Case]:
    """The test cases on the model grid (generated once, then read from the cache)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    indices = stratified_indices(spec)
    jobs = [(spec.seed, i, spec.preset, CalciumShare(), prep, Path(cache_dir)) for i in indices]
    with ProcessPoolExecutor(max_workers=2) as pool:
        return list(
            tqdm(
                pool.map(_phantom_case, jobs),
                total=len(jobs),
                desc="test phantoms",
                unit="case",
                disable=not progress,
            )
        )
