"""Phantom cases for training and evaluation on the model grid: generated once per
(generator version, seed, index, options, preprocessing), cached as .npz, on all cores."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from glipcore.dataset import Case, load_grid_npz, save_grid_npz
from glipcore.preprocess import Preprocessing, to_model_grid


class PhantomData(BaseModel):
    """Phantom cases generated for training (cached in the data cache)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 1000
    cases: int = Field(120, ge=5)
    preset: Literal["model", "fast", "full"] = "model"


def _phantom_case(args: tuple[int, int, str, Preprocessing, Path]) -> Case:
    from glipcore import phantom

    seed, index, preset, prep, cache_dir = args
    key = hashlib.sha256(
        f"{phantom.GENERATOR_VERSION}|{seed}|{index}|{preset}|{prep.model_dump_json()}".encode()
    ).hexdigest()[:24]
    f = Path(cache_dir) / f"phantom-{key}.npz"
    if not f.exists():
        hu, truth = phantom.generate(seed, index, preset)
        save_grid_npz(
            f,
            to_model_grid(hu, prep),
            landmarks=truth.landmarks_lps,
            quality=np.array(truth.quality),
        )
    vol, extra = load_grid_npz(f)
    return Case(
        phantom.case_id(seed, index),
        vol,
        np.asarray(extra["landmarks"], float),
        str(extra["quality"]),
    )


def phantom_cases(
    spec: PhantomData, prep: Preprocessing, cache_dir: Path, progress: bool = True
) -> tuple[list[Case], dict[str, Any]]:
    """Generate (or read from the cache) phantom cases on the model grid, on all cores."""
    from concurrent.futures import ProcessPoolExecutor

    from glipcore import phantom

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(spec.seed, i, spec.preset, prep, Path(cache_dir)) for i in range(spec.cases)]
    with ProcessPoolExecutor(max_workers=min(2, len(jobs))) as pool:
        cases = list(
            tqdm(
                pool.map(_phantom_case, jobs),
                total=len(jobs),
                desc="phantoms",
                unit="case",
                disable=not progress,
            )
        )
    meta = {
        "source": "phantom",
        "phantom_generator_version": phantom.GENERATOR_VERSION,
        "phantom_seed": spec.seed,
        "phantom_cases": spec.cases,
        "phantom_preset": spec.preset,
    }
    return cases, meta
