"""Phantom cases for training and evaluation on the model grid: generated once per
(generator version, seed, index, calcium options, preprocessing), cached as .npz, on all
cores.

A cohort's calcium is one level for every case, or a mix of shares, e.g. in a training
configuration::

    phantom:
      seed: 1000
      cases: 240
      preset: model
      calcium:                                  # half ordinary, half calcified at the hinges
        - {fraction: 0.5, level: default}
        - {fraction: 0.5, level: heavy, hinge: true}

Which share a case belongs to depends only on (seed, index, shares), and the shares'
proportions hold closely for any number of cases (a low-discrepancy sequence, not a coin
per case), so adding cases never reassigns the earlier ones.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from glipcore.dataset import Case, load_grid_npz, save_grid_npz
from glipcore.preprocess import Preprocessing, to_model_grid

CalciumLevelName = Literal["default", "none", "mild", "heavy"]
"""The levels of :data:`glipcore.phantom.calcium.CALCIUM_LEVELS`."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_SHARE_STREAM = 103


class CalciumShare(BaseModel):
    """One kind of case in a phantom cohort: its calcium level, whether it has annular
    calcium at the hinge points, and the fraction of the cohort's cases it makes up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fraction: float = Field(1.0, gt=0.0, le=1.0)
    level: CalciumLevelName = "default"
    hinge: bool = False

    @property
    def label(self) -> str:
        """e.g. "heavy+hinge"."""
        return f"{self.level}{'+hinge' if self.hinge else ''}"


class PhantomData(BaseModel):
    """Phantom cases generated for training (cached in the data cache).

    ``calcium`` is a level for every case (with ``hinge_calcium`` for all of them) or a list
    of :class:`CalciumShare` whose fractions sum to 1 (``hinge_calcium`` then stays false:
    each share says whether it has hinge calcium)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 1000
    cases: int = Field(120, ge=5)
    preset: Literal["model", "fast", "full"] = "model"
    calcium: CalciumLevelName | tuple[CalciumShare, ...] = "default"
    hinge_calcium: bool = False

    @model_validator(mode="after")
    def _check_shares(self) -> PhantomData:
        if isinstance(self.calcium, tuple):
            if not self.calcium:
                raise ValueError("calcium: give a level or at least one share")
            if self.hinge_calcium:
                raise ValueError("hinge_calcium applies to a single level; with shares set hinge")
            total = sum(s.fraction for s in self.calcium)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"calcium: the shares' fractions sum to {total:g}, not 1")
        return self

    def shares(self) -> tuple[CalciumShare, ...]:
        """The calcium shares of the cohort (one share of 1 for a single level)."""
        if isinstance(self.calcium, tuple):
            return self.calcium
        return (CalciumShare(fraction=1.0, level=self.calcium, hinge=self.hinge_calcium),)

    def share_of(self, index: int) -> CalciumShare:
        """The share case ``index`` belongs to."""
        shares = self.shares()
        if len(shares) == 1:
            return shares[0]
        offset = float(np.random.default_rng([self.seed, _SHARE_STREAM]).random())
        u = (offset + index * _GOLDEN) % 1.0
        edges = np.cumsum([s.fraction for s in shares])
        return shares[min(int(np.searchsorted(edges, u, side="right")), len(shares) - 1)]


def _phantom_case(args: tuple[int, int, str, CalciumShare, Preprocessing, Path]) -> Case:
    from glipcore import phantom

    seed, index, preset, share, prep, cache_dir = args
    key = hashlib.sha256(
        f"{phantom.GENERATOR_VERSION}|{seed}|{index}|{preset}|{share.level}|{share.hinge}|"
        f"{prep.model_dump_json()}".encode()
    ).hexdigest()[:24]
    f = Path(cache_dir) / f"phantom-{key}.npz"
    if not f.exists():
        hu, truth = phantom.generate(
            seed, index, preset, calcium=share.level, hinge_calcium=share.hinge
        )
        save_grid_npz(
            f,
            to_model_grid(hu, prep),
            landmarks=truth.landmarks_lps,
            ostia=truth.ostia_lps,
            quality=np.array(truth.quality),
        )
    vol, extra = load_grid_npz(f)
    return Case(
        phantom.case_id(seed, index),
        vol,
        np.asarray(extra["landmarks"], float),
        str(extra["quality"]),
        np.asarray(extra["ostia"], float),
    )


def phantom_cases(
    spec: PhantomData, prep: Preprocessing, cache_dir: Path, progress: bool = True
) -> tuple[list[Case], dict[str, Any]]:
    """Generate (or read from the cache) phantom cases on the model grid, on all cores."""
    from concurrent.futures import ProcessPoolExecutor

    from glipcore import phantom

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    shares = [spec.share_of(i) for i in range(spec.cases)]
    jobs = [
        (spec.seed, i, spec.preset, share, prep, Path(cache_dir)) for i, share in enumerate(shares)
    ]
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
        "phantom_calcium": [s.model_dump() for s in spec.shares()],
        "phantom_calcium_cases": dict(Counter(s.label for s in shares)),
    }
    return cases, meta
