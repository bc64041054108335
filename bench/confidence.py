"""Does the confidence separate wrong landmarks (error > 2 mm) from the rest?

Held-out phantoms on the model grid (seeds never used in training): a default cohort and a
cohort with heavy calcium at the hinges, which grows in chunks until
the pooled set holds at least ``--min-bad`` landmarks with error > 2 mm. Every case runs
through one Predictor with ``--tta-passes`` test-time-augmentation passes; per landmark it
records the error against the truth, the former confidence (``peak_score``: fold spread and
peak sharpness) and the new calibrated score (``score``: TTA spread, fold spread, sharpness).

Printed: AUROC (bad = error > 2 mm, low confidence should mean bad) of both with a 95 %
bootstrap interval (cases resampled, a case's landmarks stay together), the CPU cost per
study of both (the former: inference + decode; the new: plus the TTA passes; measured on the
same cases in the same run) and the plausibility gate's confusion counts at ``--threshold``
(flag when the confidence is below it). Written to ``--out``: confidence.csv (one row per
landmark) and roc.png. ``--fit`` also fits the score's calibration on these cases and prints
it (run it on other seeds than the evaluation's).

    nice -n 10 .venv/bin/python -m bench.confidence [--bundle models/phantom-glip]
        [--seed 424242 --cases 10] [--calcified-seed 434343 --calcified-chunk 5]
        [--min-bad 20] [--tta-passes 2] [--threshold 0.4] [--out runs/confidence]
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from numpy.typing import NDArray
from rich.console import Console
from tqdm import tqdm

from glipcore.confidence import DEFAULT_TTA_PASSES, TTA_PASSES, Calibration
from glipcore.dataset import Case
from glipcore.phantom_cases import PhantomData, phantom_cases
from glipcore.predict import SHARPNESS_REF, Predictor, set_threads
from glipcore.preprocess import Preprocessing

BAD_MM = 2.0
"""A landmark farther than this from the truth is wrong."""
DEFAULT_THRESHOLD = 0.4
"""dicomnode's ``plausibility.min_confidence`` default (the gate flags below it)."""

console = Console(soft_wrap=True, markup=False, highlight=False)
"""Plain text: no wrapping, and "[lo, hi]" intervals are not markup."""


@dataclass(frozen=True)
class Row:
    """One landmark of one case."""

    cohort: str
    case_id: str
    landmark: str
    error_mm: float
    sharpness: float
    fold_spread_mm: float
    tta_spread_mm: float
    old: float
    new: float


@dataclass(frozen=True)
class Cost:
    """Seconds of one study: the former confidence's path and the TTA passes."""

    base_s: float
    tta_s: float


def run_cases(
    predictor: Predictor, cases: Sequence[Case], cohort: str, progress: bool = True
) -> tuple[list[Row], list[Cost]]:
    """Predict each case; one Row per (case, landmark) in the bundle's landmark order."""
    names = tuple(predictor.bundle.manifest.landmarks)
    rows: list[Row] = []
    costs: list[Cost] = []
    for case in tqdm(cases, desc=cohort, unit="case", disable=not progress):
        pred = predictor.predict_grid(case.volume)
        t = pred.timings_s
        costs.append(Cost(t["inference"] + t["decode"], t.get("confidence_tta", 0.0)))
        truth = case.points(names)
        err = np.linalg.norm(pred.landmarks_lps - truth, axis=-1)
        for n, e, c in zip(names, err, pred.confidence, strict=True):
            if not np.isfinite(e):
                continue  # the case has no truth for this landmark
            old = c.peak_score if c.peak_score is not None else c.score
            rows.append(
                Row(
                    cohort,
                    case.case_id,
                    n,
                    float(e),
                    c.sharpness,
                    c.fold_spread_mm,
                    c.tta_spread_mm,
                    old,
                    c.score,
                )
            )
    return rows, costs


def auroc(conf: NDArray[np.float64], bad: NDArray[np.bool_]) -> float:
    """P(a bad landmark's confidence < a good one's), ties counting half; NaN when a
    class is empty."""
    b, g = conf[bad], conf[~bad]
    if b.size == 0 or g.size == 0:
        return float("nan")
    less = (b[:, None] < g[None, :]).sum()
    ties = (b[:, None] == g[None, :]).sum()
    return float((less + 0.5 * ties) / (b.size * g.size))


def auroc_ci(
    conf: NDArray[np.float64],
    bad: NDArray[np.bool_],
    groups: NDArray[np.str_],
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUROC and its 95 % percentile bootstrap interval resampling groups (cases)."""
    est = auroc(conf, bad)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, uniq.size, uniq.size)])
        a = auroc(conf[idx], bad[idx])
        if np.isfinite(a):
            boots.append(a)
    if not boots:
        return est, float("nan"), float("nan")
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return est, float(lo), float(hi)


def roc_curve(
    conf: NDArray[np.float64], bad: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(false-flag rate, caught rate) when flagging below each threshold, from flag-nothing
    to flag-everything."""
    ts = np.concatenate([[-np.inf], np.unique(conf), [np.inf]])
    nb, ng = max(1, int(bad.sum())), max(1, int((~bad).sum()))
    tpr = np.array([((conf < t) & bad).sum() / nb for t in ts])
    fpr = np.array([((conf < t) & ~bad).sum() / ng for t in ts])
    return fpr, tpr


def confusion(
    conf: NDArray[np.float64], bad: NDArray[np.bool_], threshold: float
) -> dict[str, int]:
    """The gate's counts: flagged bad (caught), missed bad, flagged good, passed good."""
    flag = conf < threshold
    return {
        "caught": int((flag & bad).sum()),
        "missed": int((~flag & bad).sum()),
        "false_flags": int((flag & ~bad).sum()),
        "passed": int((~flag & ~bad).sum()),
    }


def fit_calibration(rows: Sequence[Row], sharpness_ref: float, with_spread: bool) -> Calibration:
    """Logistic regression of (error <= 2 mm) on ln(spread + floor) and ln(sharpness / ref)
    (maximum likelihood by Newton steps with a small ridge). A term whose coefficient comes
    out with the wrong sign (spread raising the score, sharpness lowering it) is dropped and
    the rest refitted; ``with_spread=False`` fits sharpness only."""
    floor = Calibration(0.0, 0.0, 0.0).spread_floor_mm
    spread = np.array([np.hypot(r.fold_spread_mm, r.tta_spread_mm) for r in rows])
    sharp = np.log(np.maximum([r.sharpness for r in rows], 1.0) / sharpness_ref)
    x_all = np.stack([np.ones(len(rows)), np.log(spread + floor), sharp], axis=1)
    y = np.array([r.error_mm <= BAD_MM for r in rows], dtype=np.float64)
    keep = [0, 1, 2] if with_spread else [0, 2]
    while True:
        x = x_all[:, keep]
        w = np.zeros(len(keep))
        ridge = np.diag([0.0] + [1e-3] * (len(keep) - 1))
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
            grad = x.T @ (p - y) + ridge @ w
            hess = x.T @ (x * (p * (1 - p))[:, None]) + ridge
            w = w - np.linalg.solve(hess, grad)
        coef = dict(zip(keep, w, strict=True))
        wrong = [k for k in keep[1:] if (coef[k] > 0 if k == 1 else coef[k] < 0)]
        if not wrong:
            return Calibration(float(coef[0]), float(coef.get(1, 0.0)), float(coef.get(2, 0.0)))
        keep = [k for k in keep if k not in wrong]


def write_csv(rows: Sequence[Row], threshold: float, path: Path) -> Path:
    """One row per landmark."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "cohort",
                "case_id",
                "landmark",
                "error_mm",
                "bad",
                "sharpness",
                "fold_spread_mm",
                "tta_spread_mm",
                "confidence_old",
                "confidence_new",
                "flagged_old",
                "flagged_new",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.cohort,
                    r.case_id,
                    r.landmark,
                    f"{r.error_mm:.4f}",
                    int(r.error_mm > BAD_MM),
                    f"{r.sharpness:.3f}",
                    f"{r.fold_spread_mm:.4f}",
                    f"{r.tta_spread_mm:.4f}",
                    f"{r.old:.4f}",
                    f"{r.new:.4f}",
                    int(r.old < threshold),
                    int(r.new < threshold),
                ]
            )
    return path


def plot_roc(
    curves: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]], title: str, path: Path
) -> Path:
    """ROC PNG of each confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    for label, (fpr, tpr) in curves.items():
        ax.step(fpr, tpr, where="post", label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("good landmarks flagged (error <= 2 mm)")
    ax.set_ylabel("bad landmarks flagged (error > 2 mm)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


CaseSource = Callable[[int], Sequence[Case]]
"""n -> the first n cases of a cohort (the same first cases for any n)."""


def phantom_source(
    seed: int, prep: Preprocessing, cache_dir: Path, calcified: bool, progress: bool = True
) -> CaseSource:
    """Model-grid phantoms of cohort ``seed``; ``calcified``: heavy calcium at the hinges."""

    def first(n: int) -> Sequence[Case]:
        spec = PhantomData(
            seed=seed,
            cases=max(5, n),
            calcium="heavy" if calcified else "default",
            hinge_calcium=calcified,
        )
        return phantom_cases(spec, prep, cache_dir, progress)[0][:n]

    return first


@dataclass(frozen=True)
class BenchResult:
    """What the bench measured."""

    rows: list[Row]
    costs: list[Cost]
    calcified_cases: int


def run(
    bundle: Path,
    *,
    seed: int = 424242,
    cases: int = 10,
    calcified_seed: int = 434343,
    calcified_chunk: int = 5,
    max_calcified: int = 80,
    min_bad: int = 20,
    tta_passes: int = DEFAULT_TTA_PASSES,
    tta_box: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    threads: int = 2,
    cache_dir: Path = Path("runs/cache"),
    out: Path | None = None,
    fit: bool = False,
    n_boot: int = 2000,
    progress: bool = True,
    held_out: CaseSource | None = None,
    calcified: CaseSource | None = None,
) -> BenchResult:
    """Run the bench and print its report. ``held_out`` and ``calcified`` replace the
    phantom cohorts (tests)."""
    n_threads = set_threads(threads)
    predictor = Predictor(
        bundle, threads=threads, device="cpu", tta_passes=tta_passes, tta_box=tta_box
    )
    prep = predictor.bundle.manifest.preprocessing
    held_out = held_out or phantom_source(seed, prep, cache_dir, False, progress)
    calcified = calcified or phantom_source(calcified_seed, prep, cache_dir, True, progress)
    rows, costs = run_cases(predictor, held_out(cases), "held-out", progress)
    n_calc = 0
    while n_calc < max_calcified and (
        n_calc == 0 or sum(r.error_mm > BAD_MM for r in rows) < min_bad
    ):
        upto = min(max_calcified, n_calc + calcified_chunk)
        r, c = run_cases(predictor, calcified(upto)[n_calc:upto], "heavy+hinge", progress)
        rows += r
        costs += c
        n_calc = upto
    report(predictor, rows, costs, n_calc, threshold, min_bad, n_threads, n_boot, out)
    if fit:
        ref = float(predictor.bundle.manifest.metadata.get("sharpness_ref", SHARPNESS_REF))
        console.print(f"fitted CALIBRATION = {fit_calibration(rows, ref, True)}")
        console.print(f"fitted SHARPNESS_ONLY = {fit_calibration(rows, ref, False)}")
    return BenchResult(rows, costs, n_calc)


def report(
    predictor: Predictor,
    rows: Sequence[Row],
    costs: Sequence[Cost],
    n_calc: int,
    threshold: float,
    min_bad: int,
    n_threads: int,
    n_boot: int,
    out: Path | None,
) -> None:
    """Print the tables (and write the CSV and the ROC plot to ``out``)."""
    err = np.array([r.error_mm for r in rows])
    bad = err > BAD_MM
    groups = np.array([r.case_id for r in rows])
    cohorts = np.array([r.cohort for r in rows])
    scores = {
        "old (peak_score)": np.array([r.old for r in rows]),
        f"new (score, {predictor.tta_passes} TTA{' box' if predictor.tta_box else ''})": np.array(
            [r.new for r in rows]
        ),
    }
    n_cases = len(set(groups.tolist()))
    console.print(
        f"model {predictor.model_version} ({len(predictor.models)} fold(s), landmarks "
        f"{', '.join(predictor.bundle.manifest.landmarks)}), torch threads {n_threads}, "
        f"{n_cases} cases ({n_cases - n_calc} held-out default, {n_calc} heavy+hinge calcium), "
        f"{len(rows)} landmarks, {int(bad.sum())} with error > {BAD_MM:g} mm"
    )
    if bad.sum() < min_bad:
        console.print(f"WARNING: fewer than {min_bad} bad landmarks: grow --max-calcified")
    console.print(f"\nAUROC, bad = error > {BAD_MM:g} mm (95 % bootstrap CI, {n_boot} x cases)")
    console.print(f"  {'set':<12} {'n':>4} {'bad':>4}  " + "  ".join(f"{k:>28}" for k in scores))
    for name, mask in (
        ("pooled", np.ones(len(rows), bool)),
        ("held-out", cohorts == "held-out"),
        ("heavy+hinge", cohorts == "heavy+hinge"),
    ):
        cells = []
        for conf in scores.values():
            a, lo, hi = auroc_ci(conf[mask], bad[mask], groups[mask], n_boot)
            cells.append(f"{a:.3f} [{lo:.3f}, {hi:.3f}]")
        console.print(
            f"  {name:<12} {int(mask.sum()):>4} {int(bad[mask].sum()):>4}  "
            + "  ".join(f"{c:>28}" for c in cells)
        )
    base = np.array([c.base_s for c in costs])
    extra = np.array([c.tta_s for c in costs])
    console.print(
        f"\nCPU cost per study on the model grid (median of {len(costs)}): old "
        f"{np.median(base):.2f} s (inference + decode), new {np.median(base + extra):.2f} s "
        f"(+ {predictor.tta_passes} TTA passes {np.median(extra):.2f} s); "
        f"new / old {np.median((base + extra) / base):.2f}"
    )
    console.print(f"\nPlausibility gate: flag when confidence < {threshold:g}")
    console.print(f"  {'confidence':<28} {'caught':>7} {'missed':>7} {'false flags':>12} {'ok':>5}")
    for k, conf in scores.items():
        c = confusion(conf, bad, threshold)
        console.print(
            f"  {k:<28} {c['caught']:>7} {c['missed']:>7} {c['false_flags']:>12} {c['passed']:>5}"
        )
    new = list(scores.values())[1]
    console.print("  new score at other thresholds (caught / missed / false flags / ok):")
    for t in (0.3, 0.5, 0.6, 0.7, 0.8):
        c = confusion(new, bad, t)
        console.print(
            f"    < {t:.1f}: {c['caught']} / {c['missed']} / {c['false_flags']} / {c['passed']}"
        )
    worst = np.argsort(err)[::-1][:8]
    console.print("\nWorst landmarks:")
    console.print(
        f"  {'case':<22} {'lm':<4} {'err mm':>7} {'sharp':>6} {'tta mm':>7} {'old':>5} {'new':>5}"
    )
    for i in worst:
        r = rows[int(i)]
        console.print(
            f"  {r.case_id:<22} {r.landmark:<4} {r.error_mm:7.2f} {r.sharpness:6.0f} "
            f"{r.tta_spread_mm:7.2f} {r.old:5.2f} {r.new:5.2f}"
        )
    if out is not None:
        console.print(f"\nwrote {write_csv(rows, threshold, out / 'confidence.csv')}")
        curves = {k: roc_curve(v, bad) for k, v in scores.items()}
        title = f"{predictor.model_version}: {n_cases} cases, {int(bad.sum())} bad landmarks"
        console.print(f"wrote {plot_roc(curves, title, out / 'roc.png')}")


app = typer.Typer(add_completion=False)


@app.command()
def main(
    bundle: Path = typer.Option(Path("models/phantom-glip"), help="model bundle"),
    seed: int = typer.Option(424242, help="held-out default cohort seed"),
    cases: int = typer.Option(10, help="held-out default cases"),
    calcified_seed: int = typer.Option(434343, help="heavy + hinge calcium cohort seed"),
    calcified_chunk: int = typer.Option(5, help="calcified cases added per step"),
    max_calcified: int = typer.Option(80, help="most calcified cases"),
    min_bad: int = typer.Option(20, help="grow the calcified set until this many bad"),
    tta_passes: int = typer.Option(DEFAULT_TTA_PASSES, max=len(TTA_PASSES)),
    tta_box: bool = typer.Option(False, help="TTA on a box around the landmarks"),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="gate flags below this"),
    threads: int = typer.Option(2),
    cache_dir: Path = typer.Option(Path("runs/cache")),
    out: Path = typer.Option(Path("runs/confidence"), help="CSV and ROC plot folder"),
    fit: bool = typer.Option(False, help="fit and print the score's calibration"),
    n_boot: int = typer.Option(2000, help="bootstrap resamples"),
) -> None:
    """Confidence vs landmark error on held-out and calcified phantoms."""
    t0 = time.perf_counter()
    run(
        bundle,
        seed=seed,
        cases=cases,
        calcified_seed=calcified_seed,
        calcified_chunk=calcified_chunk,
        max_calcified=max_calcified,
        min_bad=min_bad,
        tta_passes=tta_passes,
        tta_box=tta_box,
        threshold=threshold,
        threads=threads,
        cache_dir=cache_dir,
        out=out,
        fit=fit,
        n_boot=n_boot,
    )
    console.print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    app()
