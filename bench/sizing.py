"""Annulus sizing accuracy against the phantom's analytic annulus (its wall ellipse on the
truth plane), on held-out full-size phantoms of every quality grade, half of them without
calcium and half with heavy valve calcium plus annular calcium at the hinges.

Three ways to size each case, all in the same run:

1. segmentation (:func:`glipcore.sizing.size_annulus`) on the *predicted* plane: the
   shipped model's hinge points through :class:`glipcore.predict.Predictor`, then the
   plane through them (end to end);
2. the same segmentation on the *truth* plane (pixels segmented, never the analytic
   ellipse): what the plane's error costs;
3. the peer: the circle through the three predicted hinge points.

Area and perimeter errors are in % of the truth, diameters in mm (area-derived,
perimeter-derived, minimum and maximum against the ellipse's minor and major axes);
median, third quartile and worst of the absolute errors, and the median signed error.
With a five-landmark model, the coronary ostia too: the height of each ostium's centre above
the predicted annulus plane (along its normal) against the phantom's height, and the
ostium's position error.

    python -m bench.sizing [--cases 10] [--preset full] [--seed 990300]
        [--model models/phantom-glip] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glipcore import OSTIA, phantom
from glipcore.evaluate import ostium_heights
from glipcore.geometry import FloatArray, Plane
from glipcore.phantom import PhantomTruth
from glipcore.predict import Prediction, Predictor
from glipcore.sizing import AnnulusSizing, size_annulus

GOAL_AREA_PCT = 3.0
GOAL_PERIMETER_PCT = 2.0
GOAL_HEIGHT_MM = 1.5
METHODS = ("predicted plane", "truth plane", "peer: hinge circle")
CALCIUM_VARIANTS = (("none", False), ("heavy", True))
"""(calcium level, hinge calcium): without calcium at the annulus, and with it."""
MEASURES = (
    ("area %", "area"),
    ("perimeter %", "perimeter"),
    ("D area mm", "d_area"),
    ("D perim mm", "d_perim"),
    ("D min mm", "d_min"),
    ("D max mm", "d_max"),
)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "phantom-glip"


@dataclass(frozen=True)
class Sizes:
    """Area (mm^2), perimeter (mm), minimum and maximum diameters (mm) of one annulus."""

    area: float
    perimeter: float
    d_min: float
    d_max: float

    @property
    def d_area(self) -> float:
        return 2.0 * math.sqrt(self.area / math.pi)

    @property
    def d_perim(self) -> float:
        return self.perimeter / math.pi


def truth_sizes(t: PhantomTruth) -> Sizes:
    """The analytic annulus of a phantom."""
    return Sizes(t.annulus_area_mm2, t.annulus_perimeter_mm, t.annulus_minor_mm, t.annulus_major_mm)


def sizes_of(s: AnnulusSizing) -> Sizes:
    """The measurements of a segmentation."""
    return Sizes(s.area_mm2, s.perimeter_mm, s.min_diameter_mm, s.max_diameter_mm)


def circle_sizes(points: FloatArray) -> Sizes:
    """The circle through three points (3, 3): its area, perimeter and diameter."""
    a, b, c = (np.linalg.norm(points[i] - points[j]) for i, j in ((1, 2), (0, 2), (0, 1)))
    twice_area = np.linalg.norm(np.cross(points[1] - points[0], points[2] - points[0]))
    r = float(a * b * c / (2.0 * twice_area))
    return Sizes(math.pi * r * r, 2.0 * math.pi * r, 2.0 * r, 2.0 * r)


def errors(got: Sizes, truth: Sizes) -> dict[str, float]:
    """Signed errors: area and perimeter in % of the truth, diameters in mm."""
    return {
        "area": 100.0 * (got.area / truth.area - 1.0),
        "perimeter": 100.0 * (got.perimeter / truth.perimeter - 1.0),
        **{k: getattr(got, k) - getattr(truth, k) for k in ("d_area", "d_perim", "d_min", "d_max")},
    }


def held_out_cases(n: int, seed: int) -> Iterator[tuple[int, str, bool]]:
    """(index, calcium, hinge_calcium) for ``n`` cases of cohort ``seed``: grades in turn
    (worst first), each grade alternating between the calcium variants."""
    by_grade: dict[str, list[int]] = {g: [] for g in phantom.QUALITY_GRADES}
    index = 0
    for k in range(n):
        grade = phantom.QUALITY_GRADES[k % len(phantom.QUALITY_GRADES)]
        while not by_grade[grade]:
            by_grade[phantom.random_case(seed, index).quality].append(index)
            index += 1
        n_grades = len(phantom.QUALITY_GRADES)
        calcium, hinge = CALCIUM_VARIANTS[(k % n_grades + k // n_grades) % 2]
        yield by_grade[grade].pop(0), calcium, hinge


@dataclass
class CaseResult:
    """One case: its label and each method's signed errors (None when refused)."""

    label: str
    calcified: bool
    errors: dict[str, dict[str, float] | None]
    refusals: dict[str, str]
    ostia: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per coronary ostium the model predicts: signed height error (mm, predicted height
    above the predicted annulus plane minus the phantom's height above its annulus) and
    the ostium's position error (mm)."""


def run_case(
    predictor: Predictor, seed: int, index: int, calcium: str, hinge: bool, preset: str
) -> CaseResult:
    """Render one case, predict its hinges and size it three ways."""
    vol, truth = phantom.generate(seed, index, preset, calcium=calcium, hinge_calcium=hinge)
    pred = predictor.predict(vol)
    ref = truth_sizes(truth)
    out: dict[str, dict[str, float] | None] = dict.fromkeys(METHODS)
    refusals: dict[str, str] = {}
    truth_plane = Plane(truth.annulus_center, truth.annulus_normal)
    planes = {
        "predicted plane": (pred.hinge_plane, pred.points()),
        "truth plane": (truth_plane, truth.landmarks_lps),
    }
    for method, (plane, hinges) in planes.items():
        if plane is None:
            refusals[method] = "degenerate prediction"
            continue
        res = size_annulus(vol, plane, hinges_lps=hinges)
        if isinstance(res, AnnulusSizing):
            out[method] = errors(sizes_of(res), ref)
        else:
            refusals[method] = f"{res.reason}: {res.detail}"
    if pred.hinge_plane is not None:
        out["peer: hinge circle"] = errors(circle_sizes(pred.points()), ref)
    ostia = ostium_errors(pred, truth)
    label = f"{phantom.case_id(seed, index)} grade {truth.quality} calcium {calcium}"
    return CaseResult(
        label + (" + hinge" if hinge else ""), calcium != "none", out, refusals, ostia
    )


TRUTH_HEIGHT_KEYS = {"LCO": "left_ostium_height_mm", "RCO": "right_ostium_height_mm"}


def ostium_errors(pred: Prediction, truth: PhantomTruth) -> dict[str, dict[str, float]]:
    """Height error (the ostium centre's distance to the annulus plane along its normal,
    predicted minus truth) and position error of each ostium the model predicts."""
    names = tuple(pred.names)
    heights = ostium_heights(names, pred.landmarks_lps)
    truth_points = dict(zip(OSTIA, truth.ostia_lps, strict=True))
    out = {}
    for n, h in heights.items():
        p = pred.landmarks_lps[names.index(n)]
        out[n] = {
            "height": h - truth.measurements[TRUTH_HEIGHT_KEYS[n]],
            "position": float(np.linalg.norm(p - truth_points[n])),
        }
    return out


def _stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(median |e|, q3 |e|, worst |e|, median e)."""
    a = np.abs(np.asarray(values))
    return (
        float(np.median(a)),
        float(np.percentile(a, 75)),
        float(a.max()),
        float(np.median(values)),
    )


def table(results: Sequence[CaseResult]) -> str:
    """Per method and measure: median, q3, worst absolute error and the median signed
    error, over the cases the method measured."""
    lines = [
        f"{'method':<20} {'measure':<12} {'n':>3} {'median':>7} {'q3':>7} {'worst':>7} {'bias':>7}"
    ]
    for method in METHODS:
        rows = [r.errors[method] for r in results]
        got = [e for e in rows if e is not None]
        if not got:
            lines.append(f"{method:<20} (no measurement)")
            continue
        for label, key in MEASURES:
            med, q3, worst, bias = _stats([e[key] for e in got])
            lines.append(
                f"{method:<20} {label:<12} {len(got):>3} "
                f"{med:7.2f} {q3:7.2f} {worst:7.2f} {bias:+7.2f}"
            )
    return "\n".join(lines)


def median_abs(results: Sequence[CaseResult], method: str, key: str) -> float:
    """Median absolute error of one measure over the cases a method measured."""
    got = [r.errors[method] for r in results]
    vals = [abs(e[key]) for e in got if e is not None]
    return float(np.median(vals)) if vals else float("nan")


def ostium_table(results: Sequence[CaseResult]) -> str:
    """Per ostium: height error and position error (median, q3, worst |e|, median e)."""
    names = sorted({n for r in results for n in r.ostia})
    if not names:
        return "coronary ostia: the model does not predict them"
    lines = [
        f"{'ostium':<20} {'measure':<12} {'n':>3} {'median':>7} {'q3':>7} {'worst':>7} {'bias':>7}"
    ]
    for n in names:
        for key, label in (("height", "height mm"), ("position", "position mm")):
            vals = [r.ostia[n][key] for r in results if n in r.ostia]
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                lines.append(f"{n:<20} {label:<12} (degenerate plane in every case)")
                continue
            med, q3, worst, bias = _stats(vals)
            lines.append(
                f"{n:<20} {label:<12} {len(vals):>3} {med:7.2f} {q3:7.2f} {worst:7.2f} {bias:+7.2f}"
            )
    lines.append(
        f"  ostium height goal: median |error| <= {GOAL_HEIGHT_MM:g} mm (height = ostium centre "
        "to the annulus plane along its normal)"
    )
    return "\n".join(lines)


def summary(results: Sequence[CaseResult]) -> str:
    """The goals and the ratios against the peer."""
    out = []
    for key, goal, name in (
        ("area", GOAL_AREA_PCT, "area"),
        ("perimeter", GOAL_PERIMETER_PCT, "perimeter"),
    ):
        end = median_abs(results, METHODS[0], key)
        on_truth = median_abs(results, METHODS[1], key)
        peer = median_abs(results, METHODS[2], key)
        out.append(
            f"  {name} error median: predicted plane {end:.2f} %  goal {goal:.0f} %  "
            f"median/goal {end / goal:.2f};  truth plane {on_truth:.2f} %;  "
            f"peer {peer:.2f} %  predicted/peer {end / peer:.2f}"
        )
    for calcified in (False, True):
        sub = [r for r in results if r.calcified == calcified]
        if sub:
            refused = sum(r.errors[METHODS[0]] is None for r in sub)
            out.append(
                f"  {'with' if calcified else 'without'} annular calcium ({len(sub)} cases, "
                f"{refused} refused), predicted plane: "
                f"area {median_abs(sub, METHODS[0], 'area'):.2f} %, "
                f"perimeter {median_abs(sub, METHODS[0], 'perimeter'):.2f} % (medians)"
            )
    return "\n".join(out)


def run(cases: int, preset: str, seed: int, model: Path, threads: int) -> list[CaseResult]:
    """Run the bench and print its table; returns the per-case results."""
    predictor = Predictor(model, threads=threads, tta_passes=0)
    results: list[CaseResult] = []
    t0 = time.perf_counter()
    for index, calcium, hinge in held_out_cases(cases, seed):
        r = run_case(predictor, seed, index, calcium, hinge, preset)
        results.append(r)
        errs = r.errors[METHODS[0]]
        shown = (
            "refused"
            if errs is None
            else f"area {errs['area']:+.2f} % perim {errs['perimeter']:+.2f} %"
        )
        print(f"  {r.label}: predicted plane {shown}", flush=True)
        for method, why in r.refusals.items():
            print(f"    {method} refused: {why}")
    wall = time.perf_counter() - t0
    print(
        f"\nannulus sizing, {len(results)} held-out phantoms (seed {seed}, preset {preset}, "
        f"grades {', '.join(phantom.QUALITY_GRADES)}; model {predictor.model_version}); "
        f"{wall:.0f} s"
    )
    print(table(results))
    print(summary(results))
    print(ostium_table(results))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", type=int, default=10, help="phantoms (grades in turn)")
    ap.add_argument("--preset", default="full", choices=phantom.PRESETS)
    ap.add_argument("--seed", type=int, default=990_300, help="held-out cohort")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    run(a.cases, a.preset, a.seed, a.model, a.threads)


if __name__ == "__main__":
    main()
