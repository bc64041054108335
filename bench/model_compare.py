"""Old vs new model on the same held-out phantoms: the table a model change is judged by.

Both bundles predict the same held-out cohorts, generated straight on the model grid from a
seed that no training configuration uses (424242), one cohort per calcium variant:
ordinary valves, heavy valve calcium, and heavy calcium with annular calcium at the hinge
points. Per hinge point: median, third quartile and worst error (mm); the plane angle; the
success detection rate at 1, 2 and 3 mm; and, for the hinge errors pooled, the paired
difference new minus old of the median, the worst case and the SDR at 2 mm with a 95%
bootstrap interval over cases (the same cases for both models). Landmarks only one model
predicts (the coronary ostia) get their own rows, with the ostium heights above the
predicted annulus plane.

    python -m bench.model_compare --old models/phantom-glip --new runs/x/bundle
        [--cases 40] [--seed 424242] [--threads 2] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from glipcore import LANDMARKS, OSTIA
from glipcore.dataset import Case
from glipcore.evaluate import ostium_heights
from glipcore.landmarks import pick
from glipcore.metrics import euclidean_errors, plane_errors
from glipcore.phantom_cases import PhantomData, phantom_cases
from glipcore.predict import Predictor

COHORTS: tuple[tuple[str, str, bool], ...] = (
    ("ordinary", "default", False),
    ("heavy calcium", "heavy", False),
    ("heavy + hinge calcium", "heavy", True),
)
"""(label, calcium level, calcium at the hinge points)."""
HELDOUT_SEED = 424242
RESAMPLES = 2000


@dataclass(frozen=True)
class CohortResult:
    """One model's predictions on one cohort: per-case landmark errors (N, L) in ``names``
    order, plane angles (N,), ostium height errors (N, O) and seconds per case."""

    names: tuple[str, ...]
    errors: NDArray[np.float64]
    angles: NDArray[np.float64]
    height_errors: NDArray[np.float64]
    seconds: float


def predict_cohort(predictor: Predictor, cases: Sequence[Case]) -> CohortResult:
    """Errors of ``predictor`` on ``cases`` (model-grid volumes with full truth)."""
    names = tuple(predictor.bundle.manifest.landmarks)
    ostia = tuple(n for n in names if n in OSTIA)
    errs, angles, heights = [], [], []
    t0 = time.perf_counter()
    for case in cases:
        pred = predictor.predict_grid(case.volume).landmarks_lps
        truth = case.points(names)
        errs.append(euclidean_errors(pred, truth))
        angles.append(plane_errors(pick(names, pred, LANDMARKS), pick(names, truth, LANDMARKS))[1])
        ph, th = ostium_heights(names, pred), ostium_heights(names, truth)
        heights.append([ph[n] - th[n] for n in ostia])
    return CohortResult(
        names,
        np.asarray(errs, dtype=np.float64),
        np.asarray(angles, dtype=np.float64),
        np.asarray(heights, dtype=np.float64).reshape(len(cases), len(ostia)),
        (time.perf_counter() - t0) / max(len(cases), 1),
    )


def _stat(errors: NDArray[np.float64], stat: str) -> float:
    if stat == "sdr2":
        return float(np.mean(errors < 2.0) * 100)
    if stat == "worst":
        return float(np.max(errors))
    return float(np.median(errors))


def paired(
    new: NDArray[np.float64], old: NDArray[np.float64], stat: str, seed: int = 0
) -> tuple[float, float, float]:
    """New minus old of ``stat`` over (N, 3) hinge errors with a 95% case-bootstrap interval."""
    delta = _stat(new, stat) - _stat(old, stat)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, new.shape[0], size=(RESAMPLES, new.shape[0]))
    diffs = np.array([_stat(new[i], stat) - _stat(old[i], stat) for i in idx])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return delta, float(lo), float(hi)


def _q(values: NDArray[np.float64]) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "-"
    return f"{np.median(v):5.2f} {np.percentile(v, 75):5.2f} {np.max(v):6.2f}"


def rows_of(label: str, model: str, r: CohortResult) -> list[list[str]]:
    """Table rows (cohort, model, measure, median q3 worst) of one model on one cohort."""
    rows = [[label, model, n, _q(r.errors[:, i])] for i, n in enumerate(r.names)]
    hinge = r.errors[:, [r.names.index(n) for n in LANDMARKS]]
    rows.append([label, model, "plane angle deg", _q(r.angles)])
    for i, n in enumerate(n for n in r.names if n in OSTIA):
        rows.append([label, model, f"{n} height |err|", _q(np.abs(r.height_errors[:, i]))])
    sdr = " ".join(f"{np.mean(hinge < t) * 100:5.1f}" for t in (1.0, 2.0, 3.0))
    rows.append([label, model, "SDR 1/2/3 mm %", sdr])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the model in service (bundle folder)")
    ap.add_argument("--new", type=Path, required=True, help="the candidate (bundle folder)")
    ap.add_argument("--cases", type=int, default=40, help="cases per cohort (default 40)")
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED, help="held-out cohort seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--csv", type=Path, default=None, help="write the table as CSV too")
    args = ap.parse_args(argv)
    old = Predictor(args.old, threads=args.threads, tta_passes=0)
    new = Predictor(args.new, threads=args.threads, tta_passes=0)
    prep = old.bundle.manifest.preprocessing
    if new.bundle.manifest.preprocessing != prep:
        raise SystemExit("the two bundles preprocess differently: compare them on their own grids")
    table: list[list[str]] = []
    print(f"old {old.model_version}   new {new.model_version}   seed {args.seed}")
    for label, level, hinge in COHORTS:
        spec = PhantomData(
            seed=args.seed, cases=args.cases, preset="model", calcium=level, hinge_calcium=hinge
        )
        cases, _ = phantom_cases(spec, prep, args.cache, progress=False)
        ro, rn = predict_cohort(old, cases), predict_cohort(new, cases)
        table += rows_of(label, "old", ro) + rows_of(label, "new", rn)
        ho = ro.errors[:, [ro.names.index(n) for n in LANDMARKS]]
        hn = rn.errors[:, [rn.names.index(n) for n in LANDMARKS]]
        for stat, unit in (("median", "mm"), ("worst", "mm"), ("sdr2", "pp")):
            d, lo, hi = paired(hn, ho, stat)
            table.append(
                [label, "new-old", f"hinges {stat}", f"{d:+.2f} {unit} [{lo:+.2f}, {hi:+.2f}]"]
            )
        table.append([label, "s/case", "old new", f"{ro.seconds:.2f} {rn.seconds:.2f}"])
    width = [max(len(r[i]) for r in table) for i in range(3)]
    print(
        f"{'cohort':<{width[0]}}  {'model':<{width[1]}}  {'measure':<{width[2]}}  median q3 worst"
    )
    for r in table:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}")
    if args.csv is not None:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([["cohort", "model", "measure", "value"], *table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
