"""``reports/paper-on-phantoms/README.md``: figures, tables and the paper's claims against
the phantom results, from whatever runs are finished (a partial report says what is not).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glipcore import LANDMARKS
from glipcore.experiment.budget import Budget
from glipcore.experiment.plan import Plan, PlannedRun, make_plan
from glipcore.experiment.spec import ExperimentSpec
from glipcore.experiment.stats import (
    Interval,
    bootstrap_median,
    paired_difference,
    share_better,
)
from glipcore.experiment.store import RunResult, Store
from glipcore.phantom.params import QUALITY_GRADES

COLLAPSED_RUN_SHARE = 0.2
"""A run counts as collapsed when more than this share of its test cases collapsed."""
EXPERT_MM = 2.0
NO_PEAKS_MM = 10.0
"""A run whose median hinge error is above this has not learnt to localise at all."""
SHIPPED_BUNDLE = Path("models/phantom-glip/bundle.json")
"""The shipped model, whose training settings the "Defaults" section tests changes against."""


@dataclass(frozen=True)
class ShippedSettings:
    """The loss settings the shipped model was trained with (from its ``bundle.json``)."""

    loss: str
    variant: str
    sigma_mm: float
    lam: float
    source: Path

    @classmethod
    def read(cls, bundle_json: Path) -> ShippedSettings:
        """Read them from a bundle's ``bundle.json``; ValueError names what is missing."""
        try:
            data = json.loads(Path(bundle_json).read_text())
            meta = data.get("metadata", {})
            return cls(
                loss=str(data["loss"]),
                variant=str(meta.get("loss_variant", "code")),
                sigma_mm=float(data["sigma_mm"]),
                lam=float(meta["lambda"]),
                source=Path(bundle_json),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{bundle_json}: cannot read the shipped model's loss settings ({e})"
            ) from e

    def text(self) -> str:
        """The settings in words, for the report."""
        return (
            f"sigma {self.sigma_mm:g} mm, lambda {self.lam:g}, the {self.variant} penalty "
            f"variant, sub-voxel decoding; read from `{self.source}`"
        )

    def matches(self, p: PlannedRun) -> bool:
        """Whether a planned run is the seed-0 run with exactly these settings."""
        r = p.run
        return (
            r is not None
            and r.loss == self.loss
            and r.variant == self.variant
            and r.sigma_mm == self.sigma_mm
            and r.lam == self.lam
            and r.seed == 0
            and r.curve_on == "val"
        )


@dataclass
class Ctx:
    """What the sections share: the plan, finished results, the figure folder, claims."""

    plan: Plan
    results: dict[str, RunResult]
    report_dir: Path
    claims: list[tuple[str, str, str, str]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    shipped: ShippedSettings | str = "the shipped model's settings were not given"

    def done(self, exp: ExperimentSpec, stage: str = "first") -> list[tuple[PlannedRun, RunResult]]:
        out = []
        for r in self.plan.for_experiment(exp.name):
            if r.stage == stage and r.key is not None and r.key in self.results:
                out.append((r, self.results[r.key]))
        return out

    def figure(self, name: str) -> Path:
        d = self.report_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        self.figures.append(name)
        return d / name


def hinge_errors(res: RunResult) -> NDArray[np.float64]:
    """(N, 3) hinge errors in mm of a first-stage run's test cases."""
    return np.stack([res.column(f"{n}_mm") for n in LANDMARKS], axis=1)


def _label(p: PlannedRun) -> str:
    return p.run.label if p.run is not None else p.name


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_boxplot(
    path: Path,
    groups: Sequence[str],
    series: dict[str, list[NDArray[np.float64]]],
    title: str,
    ylabel: str = "error (mm)",
) -> None:
    """Boxes per group (x) and series (colour), as the paper's Fig. 2, 5, 6, 7, 11, 12."""
    plt = _plt()
    fig, ax = plt.subplots(
        figsize=(min(14.0, max(6.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 3)), 4.2),
        dpi=110,
    )
    n = max(1, len(series))
    width = 0.8 / n
    cmap = plt.get_cmap("tab10")
    for k, (label, data) in enumerate(series.items()):
        pos = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
        clean = [d[np.isfinite(d)] if d.size else np.array([np.nan]) for d in data]
        bp = ax.boxplot(
            clean,
            positions=pos,
            widths=width * 0.85,
            patch_artist=True,
            sym=".",
            medianprops={"color": "black"},
        )
        for b in bp["boxes"]:
            b.set_facecolor(cmap(k % 10))
        ax.plot([], [], color=cmap(k % 10), lw=8, label=label)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if ylabel.startswith("error"):
        ax.axhline(EXPERT_MM, color="grey", lw=0.8, ls="--", label=f"{EXPERT_MM:g} mm")
        # linear below 4 mm, logarithmic above: sub-mm boxes and 100 mm failures on one axis
        ax.set_yscale("symlog", linthresh=4)
        ax.set_ylim(bottom=0)
        top = ax.get_ylim()[1]
        ticks = [t for t in (0, 1, 2, 3, 4, 10, 20, 50, 100, 200, 500) if t <= top]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_title(title)
    ax.legend(
        fontsize=7,
        ncol=min(7, n + 1),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def line_plot(
    path: Path,
    lines: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
    title: str,
    xlabel: str,
    ylabel: str,
    hline: float | None = None,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
) -> None:
    """One line per label (learning curves, SDR curves)."""
    plt = _plt()
    many = len(lines) > 8
    fig, ax = plt.subplots(figsize=(10 if many else 7, 4.2), dpi=110)
    cmap = plt.get_cmap("tab10")
    styles = ("-", "--", ":")
    for k, (label, (x, y)) in enumerate(lines.items()):
        ax.plot(x, y, marker=".", label=label, color=cmap(k % 10), ls=styles[(k // 10) % 3])
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if many:  # beside the axes, where it hides no line
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def merged_cases(res: RunResult) -> int:
    """Test cases with two hinge points under COLLAPSE_MM apart."""
    from glipcore.experiment.runner import COLLAPSE_MM

    return int(np.sum(res.column("closest_pair_mm") < COLLAPSE_MM))


def failure_text(res: RunResult) -> str:
    """``merged / flat / failed / cases``: test cases with two hinge points under
    COLLAPSE_MM apart, with a heatmap under FLAT_SHARPNESS, and with either (or no plane)."""
    from glipcore.experiment.runner import FLAT_SHARPNESS

    t = res.summary["test"]
    sharp = np.stack([res.column(f"{n}_sharpness") for n in LANDMARKS], axis=1)
    merged = merged_cases(res)
    flat = int(np.sum(np.nanmin(sharp, axis=1) < FLAT_SHARPNESS)) if np.isfinite(sharp).any() else 0
    return f"{merged} / {flat} / {t['failed']} of {t['cases']}"


def last_loss(res: RunResult | None) -> float | None:
    """A run's training loss at its last evaluation (None without a run or a curve)."""
    loss = res.curve_column("loss") if res is not None else np.array([])
    return float(loss[-1]) if loss.size else None


def curve_text(res: RunResult, column: str = "val_median_mm", fmt: str = ".1f") -> str:
    """A run's learning-curve column at each evaluation, e.g. ``8.8 > 4.6``."""
    vals = res.curve_column(column)
    return " > ".join(format(v, fmt) if np.isfinite(v) else "-" for v in vals) or "-"


def _img(name: str, alt: str) -> str:
    return f"![{alt}](figures/{name})"


# ---------------------------------------------------------------------------- tables


def error_table(runs: Sequence[tuple[PlannedRun, RunResult]]) -> str:
    """Median [95% CI], worst, plane and angle, failed cases of each run."""
    rows = []
    for p, res in runs:
        t = res.summary["test"]
        rows.append(
            [
                _label(p),
                bootstrap_median(hinge_errors(res)).text(),
                _f(t["worst_mm"]),
                _f(t["median_argmax_mm"]),
                f"{_f(t['plane_median_mm'])} / {_f(t['plane_worst_mm'])}",
                f"{_f(t['angle_median_deg'], 1)} / {_f(t['angle_worst_deg'], 1)}",
                failure_text(res),
                curve_text(res),
            ]
        )
    return _table(
        [
            "loss",
            "median mm [95% CI]",
            "worst mm",
            "median argmax mm",
            "plane eq. 9 median / worst mm",
            "angle median / worst deg",
            "merged / flat / failed",
            "validation median mm by evaluation",
        ],
        rows,
    )


def paired_table(
    ref: tuple[PlannedRun, RunResult], others: Sequence[tuple[PlannedRun, RunResult]]
) -> tuple[str, dict[str, Any]]:
    """Paired differences ref minus each other run on the same cases and landmarks."""
    rows, out = [], {}
    a = hinge_errors(ref[1])
    for p, res in others:
        b = hinge_errors(res)
        d = paired_difference(a, b)
        out[_label(p)] = d
        rows.append(
            [f"{_label(ref[0])} - {_label(p)}", d.text(), _f(100 * share_better(a, b), 0) + " %"]
        )
    return _table(["paired difference", "median mm [95% CI]", "GLiP better on"], rows), out


def _agree(ok: bool | None, partly: bool = False) -> str:
    if ok is None:
        return "not run"
    return "yes" if ok else ("partly" if partly else "no")


# ---------------------------------------------------------------------------- sections


def section_pilot(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs = ctx.done(exp)
    text = [f"The cpu budget's step count: {ctx.plan.pilot_note or 'pilot not finished'}."]
    if not runs:
        return "\n\n".join(text)
    lines = {
        f"{_label(p)} seed {p.run.seed if p.run else '?'}": (
            res.curve_column("step"),
            res.curve_column("val_median_mm"),
        )
        for p, res in runs
    }
    name = "pilot-curves.png"
    line_plot(
        ctx.figure(name),
        lines,
        "Pilot: GLiP held-out median error by step",
        "training step",
        "held-out median error (mm)",
        hline=ctx.plan.budget.pilot_target_mm,
        logy=True,
    )
    text.append(_img(name, "pilot learning curves"))
    steps = runs[0][1].curve_column("step")
    head = ["step", *[f"seed {p.run.seed if p.run else '?'}: median / worst" for p, _ in runs]]
    rows = []
    for i, s in enumerate(steps):
        rows.append(
            [
                str(int(s)),
                *[
                    f"{_f(r.curve_column('val_median_mm')[i])} / "
                    f"{_f(r.curve_column('val_worst_mm')[i])}"
                    if i < len(r.curve)
                    else "-"
                    for _, r in runs
                ],
            ]
        )
    text.append(_table(head, rows))
    text.append(
        "Held-out median and worst landmark error (mm) at each checkpoint. The rule looks at "
        "the median only; the worst case shows whether some cases still collapse there (two "
        "landmarks on one spot), which a median under the target can hide."
    )
    text.append(
        "The pilot validates on the held-out set itself (its purpose is to find where GLiP "
        "reaches the target there), so its learning-rate schedule follows held-out errors; "
        "no other run sees the held-out set before its final score."
    )
    return "\n\n".join(text)


def _main_runs(
    ctx: Ctx, exp: ExperimentSpec
) -> tuple[list[tuple[PlannedRun, RunResult]], tuple[PlannedRun, RunResult] | None]:
    runs = ctx.done(exp)
    glip = next((x for x in runs if x[0].run is not None and x[0].run.loss == "glip"), None)
    return runs, glip


def section_losses(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs, glip = _main_runs(ctx, exp)
    if not runs:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    text = [error_table(runs)]
    series = {_label(p): [hinge_errors(r)[:, i] for i in range(3)] for p, r in runs}
    grouped_boxplot(
        ctx.figure("fig2-losses.png"),
        LANDMARKS,
        series,
        "Euclidean error per hinge point and loss (cf. Fig. 2)",
    )
    grouped_boxplot(
        ctx.figure("fig3-plane.png"),
        ["plane (eq. 9)"],
        {_label(p): [r.column("plane_mm")] for p, r in runs},
        "Plane projection distance (cf. Fig. 3)",
    )
    grouped_boxplot(
        ctx.figure("fig4-angle.png"),
        ["plane angle"],
        {_label(p): [r.column("angle_deg")] for p, r in runs},
        "Plane angle (cf. Fig. 4)",
        ylabel="angle (deg)",
    )
    text += [
        _img("fig2-losses.png", "Fig. 2 analogue"),
        _img("fig3-plane.png", "Fig. 3 analogue"),
        _img("fig4-angle.png", "Fig. 4 analogue"),
    ]
    others = [x for x in runs if x is not glip]
    if glip is None or not others:
        ctx.claims.append((exp.claim, "incomplete", "not run", exp.paper))
        return "\n\n".join(text)
    table, diffs = paired_table(glip, others)
    text.append(table)
    med = {_label(p): float(np.median(hinge_errors(r))) for p, r in runs}
    lost = [k for k, m in med.items() if m > NO_PEAKS_MM]
    if lost:
        steps = ctx.plan.pilot_steps or "the budget's"
        text.append(
            f"{', '.join(lost)}: median over {NO_PEAKS_MM:g} mm, i.e. no usable peaks after "
            f"{steps} steps (the count the pilot picked for GLiP). At this budget the "
            "comparison shows how fast each loss learns to localise, not where a long "
            "training would end; the learning curves below show each loss's validation "
            "error by step."
        )
    best_label = min((k for k in med if k != "GLiP"), key=lambda k: med[k])
    d = diffs[best_label]
    lowest = med["GLiP"] <= min(med.values())
    result = (
        f"GLiP median {med['GLiP']:.2f} mm vs best baseline {best_label} {med[best_label]:.2f} mm; "
        f"paired GLiP - {best_label} {d.text()} mm"
    )
    ctx.claims.append((exp.claim, result, _agree(lowest and d.high < 0, lowest), exp.paper))
    return "\n\n".join(text)


def section_ablation(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs, glip = _main_runs(ctx, exp)
    if not runs:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    series = {
        _label(p): [*(hinge_errors(r)[:, i] for i in range(3)), r.column("plane_mm")]
        for p, r in runs
    }
    grouped_boxplot(
        ctx.figure("fig5-ablation.png"),
        [*LANDMARKS, "plane"],
        series,
        "OT without / with the penalty (cf. Fig. 5)",
    )
    text = [error_table(runs), _img("fig5-ablation.png", "Fig. 5 analogue")]
    ot = next((x for x in runs if x[0].run is not None and x[0].run.loss == "ot"), None)
    if glip is not None and ot is not None:
        table, diffs = paired_table(glip, [x for x in runs if x is not glip])
        text.append(table)
        d = diffs[_label(ot[0])]
        ctx.claims.append(
            (
                exp.claim,
                f"paired GLiP - OT {d.text()} mm",
                _agree(d.high < 0, d.value < 0),
                exp.paper,
            )
        )
    else:
        ctx.claims.append((exp.claim, "incomplete", "not run", exp.paper))
    paper = [x for x in runs if x[0].run is not None and x[0].run.variant == "paper"]
    at10 = [r for p, r in paper if p.run is not None and p.run.lam == 10]
    if at10:
        text.append(_paper_variant_note(ctx, at10[0], glip[1] if glip else None))
    for p, r in paper:
        if p.run is not None and p.run.lam != 10:
            text.append(_scaled_paper_note(p.run.lam, r, glip[1] if glip else None))
    return "\n\n".join(text)


def _scaled_paper_note(lam: float, paper: RunResult, code: RunResult | None) -> str:
    """What the paper variant does at a lambda scaled down to the code variant's weight."""
    med = float(np.median(hinge_errors(paper)))
    code_med = _f(float(np.median(hinge_errors(code)))) if code is not None else "?"
    head = (
        f"At lambda {lam:.2g} (10 x 3 axes / the edge count: the code variant's weight) the "
        f"paper variant's held-out median is {_f(med)} mm against {code_med} mm for the code "
        "variant at lambda 10"
    )
    if med <= NO_PEAKS_MM:
        return head + ": scaled to the code variant's weight, the printed equation localises."
    loss, code_loss = last_loss(paper), last_loss(code)
    val = paper.curve_column("val_median_mm")
    facts = []
    if loss is not None and code_loss is not None:
        facts.append(f"training loss {loss:.3g} at the last step against {code_loss:.3g}")
    if val.size > 1:
        trend = "still falling" if val[-1] < val[0] else "not falling"
        facts.append(f"validation median {' > '.join(_f(v, 1) for v in val)} mm, {trend}")
    return (
        head
        + (f" ({'; '.join(facts)})" if facts else "")
        + ". So the scale is not the only difference: with t = 1 instead of 1/sqrt(3) an edge "
        "whose two values are equal costs 3 times as much (at this lambda the penalty of a "
        "flat output is about 3 times the code variant's), and the penalty is lowest at a "
        "step of 1 per voxel along every axis (gradient norm sqrt(3) per voxel) rather than "
        "a gradient norm of 1. At this budget the penalty still dominates the OT term; "
        "whether a smaller lambda or a longer training makes the printed equation work is "
        "not tested here."
    )


def grid_edges(crop_zyx: Sequence[int]) -> int:
    """Axis-aligned neighbour pairs of one map of this crop (the penalty's edge set E)."""
    z, y, x = crop_zyx
    return (z - 1) * y * x + z * (y - 1) * x + z * y * (x - 1)


def _paper_variant_note(ctx: Ctx, paper: RunResult, code: RunResult | None) -> str:
    """Why the paper variant behaves as it does at the code variant's lambda."""
    crop = ctx.plan.budget.crop_zyx
    edges = grid_edges(crop) * len(LANDMARKS)
    loss, code_loss = last_loss(paper), last_loss(code)
    last = f"{loss:.3g}" if loss is not None else "?"
    code_last = f" against {code_loss:.3g} for the code variant" if code_loss is not None else ""
    return (
        "The paper variant (eq. 6-7 as printed) sums its (|f_u - f_v| - 1)^2 terms over the "
        f"{edges:,} axis-aligned edges of a sample's {len(LANDMARKS)} maps "
        f"({' x '.join(str(v) for v in crop)} crop), where the code variant (the authors' "
        "published code) averages them with t = 1/sqrt(3). At the same lambda its penalty is "
        "of the order of the edge count larger and swamps the OT term (training loss "
        f"{last} at the last step{code_last}); it would need a lambda of the order of "
        f"10 / {edges:,} to weigh as the code variant's. So this row says that the printed "
        "equation is not usable at lambda 10, not that the Lipschitz penalty fails."
    )


def section_gp(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs = ctx.done(exp)
    if not runs:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    by = {p.run.loss: (p, r) for p, r in runs if p.run is not None}
    rows, series_without, series_with, groups = [], [], [], []
    helped = []
    meds: dict[str, tuple[float, float]] = {}  # without, with GP
    for base in ("wce", "focal", "mse", "l1", "smoothl1"):
        if base not in by or f"{base}+gp" not in by:
            continue
        a, b = hinge_errors(by[f"{base}+gp"][1]), hinge_errors(by[base][1])
        d = paired_difference(a, b)
        groups.append(_label(by[base][0]))
        series_without.append(b.ravel())
        series_with.append(a.ravel())
        helped.append((base, d))
        meds[base] = (float(np.median(b)), float(np.median(a)))
        rows.append([_label(by[base][0]), _f(meds[base][0]), _f(meds[base][1]), d.text()])
    text = [
        "The same grid penalty (code variant) on the raw output, lambda 10 as for GLiP.",
        error_table(runs),
    ]
    if rows:
        grouped_boxplot(
            ctx.figure("fig6-gp.png"),
            groups,
            {"without GP": series_without, "with GP": series_with},
            "Each loss without / with the gradient penalty (cf. Fig. 6)",
        )
        text += [
            _table(
                ["loss", "median without GP", "median with GP", "paired with - without [95% CI]"],
                rows,
            ),
            _img("fig6-gp.png", "Fig. 6 analogue"),
        ]
        # a pair in which neither run localises at all is no evidence either way
        testable = [(b, d) for b, d in helped if min(meds[b]) <= NO_PEAKS_MM]
        lost = [_label(by[b][0]) for b, _ in helped if min(meds[b]) > NO_PEAKS_MM]
        if lost:
            text.append(
                f"{', '.join(lost)}: no usable peaks with or without GP (medians over "
                f"{NO_PEAKS_MM:g} mm), so their pair is no evidence either way."
            )
        non_l1 = [(b, d) for b, d in testable if b != "l1"]
        worse = [b for b, d in non_l1 if d.low > 0]
        parts = [
            f"{_label(by[b][0])}: {meds[b][0]:.2f} -> {meds[b][1]:.2f} mm with GP "
            f"(paired {d.text()})"
            for b, d in testable
        ]
        result = "; ".join(parts) if parts else "no baseline localised at this budget"
        if lost:
            result += f"; without usable peaks either way: {', '.join(lost)}"
        ok = bool(non_l1) and len(worse) == len(non_l1)
        ctx.claims.append(
            (
                exp.claim,
                result,
                _agree(ok and not lost, bool(worse)) if non_l1 else "not testable",
                exp.paper,
            )
        )
    else:
        ctx.claims.append((exp.claim, "incomplete", "not run", exp.paper))
    return "\n\n".join(text)


def section_grade(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs = ctx.done(exp)
    if not runs:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    p, res = runs[0]
    quality = np.array([r["quality"] for r in res.cases])
    err, plane = hinge_errors(res), res.column("plane_mm")
    grades = [g for g in QUALITY_GRADES if (quality == g).any()]
    series = {
        f"grade {g}": [*(err[quality == g, i] for i in range(3)), plane[quality == g]]
        for g in grades
    }
    grouped_boxplot(
        ctx.figure("fig7-quality.png"),
        [*LANDMARKS, "plane"],
        series,
        f"{_label(p)} error by quality grade (cf. Fig. 7)",
    )
    meds = {g: float(np.median(err[quality == g])) for g in grades}
    rows = [
        [
            g,
            str(int((quality == g).sum())),
            bootstrap_median(err[quality == g]).text(),
            _f(np.nanmedian(plane[quality == g])),
        ]
        for g in grades
    ]
    text = [
        _table(["grade", "cases", "median mm [95% CI]", "plane median mm"], rows),
        _img("fig7-quality.png", "Fig. 7 analogue"),
    ]
    if "1" in meds and "4" in meds and "2" in meds:
        rho = grade_trend(quality, err, list(QUALITY_GRADES))
        text.append(
            "Trend: Spearman correlation of grade (1 worst to 4 best) with each case's median "
            f"hinge error {rho.text()} (95% bootstrap interval over cases); below 0 means "
            "better images give smaller errors."
        )
        ok = rho.high < 0 and meds["2"] < EXPERT_MM
        ctx.claims.append(
            (
                exp.claim,
                "medians by grade: "
                + ", ".join(f"{g}: {m:.2f}" for g, m in meds.items())
                + f"; Spearman rho {rho.text()}",
                _agree(ok, meds["2"] < EXPERT_MM and meds["4"] < meds["1"]),
                exp.paper,
            )
        )
    return "\n\n".join(text)


def grade_trend(
    quality: NDArray[Any], errors: NDArray[np.float64], order: Sequence[str], n_boot: int = 2000
) -> Interval:
    """Spearman correlation of quality grade (ranked by ``order``) with each case's median
    error, and its case-resampling 95% interval."""
    from scipy.stats import spearmanr

    g = np.array([order.index(q) for q in quality], dtype=np.float64)
    e = np.nanmedian(errors.reshape(len(errors), -1), axis=1)

    def rho(idx: NDArray[np.int64]) -> float:
        if np.ptp(g[idx]) == 0 or np.ptp(e[idx]) == 0:
            return float("nan")
        return float(spearmanr(g[idx], e[idx]).statistic)

    rng = np.random.default_rng(0)
    boots = np.array([rho(rng.integers(len(g), size=len(g))) for _ in range(n_boot)])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return Interval(rho(np.arange(len(g))), float(lo), float(hi))


def section_second(ctx: Ctx, exp: ExperimentSpec) -> str:
    runs = ctx.done(exp, "second")
    if not runs:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    thresholds = np.array([float(t) for t in runs[0][1].summary["test"]["second_sdr"]])
    first_lines, second_lines, rows = {}, {}, []
    for p, res in runs:
        t = res.summary["test"]
        s1 = np.array([t["first_sdr"][k] for k in t["first_sdr"]])
        s2 = np.array([t["second_sdr"][k] for k in t["second_sdr"]])
        first_lines[f"{_label(p)} first stage"] = (thresholds, s1)
        first_lines[f"{_label(p)} second stage"] = (thresholds, s2)
        second_lines[_label(p)] = (thresholds, s2)
        rows.append(
            [
                _label(p),
                _f(t["first_median_mm"]),
                _f(t["second_median_mm"]),
                f"{100 * t['first_sdr']['1']:.0f} / {100 * t['second_sdr']['1']:.0f} %",
                f"{100 * t['first_sdr']['2']:.0f} / {100 * t['second_sdr']['2']:.0f} %",
            ]
        )
    line_plot(
        ctx.figure("fig10-stages.png"),
        first_lines,
        "SDR, first vs second stage (cf. Fig. 10)",
        "threshold (mm)",
        "success detection rate",
        ylim=(0.0, 1.02),
    )
    line_plot(
        ctx.figure("fig9-second-stage.png"),
        second_lines,
        "SDR of the second stage per loss (cf. Fig. 9)",
        "threshold (mm)",
        "success detection rate",
        ylim=(0.0, 1.02),
    )
    b = ctx.plan.budget.stage2
    text = [
        f"Patches {b.patch_vox} voxels at {b.spacing_mm} mm isotropic, disturbance "
        f"{b.disturbance_vox} voxels, local U-Net {list(b.widths)}, {b.steps} steps, training "
        f"patches from {b.train_cases or 'all'} training cases.",
        _table(
            [
                "loss",
                "first median mm",
                "second median mm",
                "SDR < 1 mm first / second",
                "SDR < 2 mm first / second",
            ],
            rows,
        ),
        _img("fig10-stages.png", "Fig. 10 analogue"),
        _img("fig9-second-stage.png", "Fig. 9 analogue"),
    ]
    glip = next(((p, r) for p, r in runs if p.run is not None and p.run.loss == "glip"), None)
    if glip is not None:
        t = glip[1].summary["test"]
        gain = [t["second_sdr"][k] - t["first_sdr"][k] for k in t["first_sdr"]]
        top = list(t["first_sdr"])[int(np.argmax(gain))]
        others = [(p, r.summary["test"]["second_sdr"]) for p, r in runs if r is not glip[1]]
        # GLiP's second stage "has the highest SDR": at every threshold, against every loss
        beats = [all(t["second_sdr"][k] >= o[k] for k in o) for _, o in others]
        versus = "; ".join(
            f"second stage SDR<1 mm GLiP {100 * t['second_sdr']['1']:.0f} % vs {_label(p)} "
            f"{100 * o['1']:.0f} %" + ("" if b else " (not at every threshold)")
            for (p, o), b in zip(others, beats, strict=True)
        )
        ctx.claims.append(
            (
                exp.claim,
                f"GLiP SDR<1 mm {100 * t['first_sdr']['1']:.0f} -> "
                f"{100 * t['second_sdr']['1']:.0f} %, <2 mm {100 * t['first_sdr']['2']:.0f} -> "
                f"{100 * t['second_sdr']['2']:.0f} %, largest gain at {top} mm "
                f"(+{100 * max(gain):.0f} points)" + (f"; {versus}" if versus else ""),
                _agree(min(gain) >= 0 and all(beats) and top == "1.5", max(gain) > 0),
                exp.paper,
            )
        )
    return "\n\n".join(text)


def _sweep(
    ctx: Ctx, exp: ExperimentSpec, attr: str, fig: str, title: str
) -> tuple[str, dict[str, dict[float, float]]]:
    runs = ctx.done(exp)
    meds: dict[str, dict[float, float]] = {}
    series: dict[str, list[NDArray[np.float64]]] = {}
    values = sorted({float(getattr(p.run, attr)) for p, _ in runs if p.run is not None})
    for p, r in runs:
        if p.run is None:
            continue
        lab = p.run.label if attr != "lam" else "GLiP"
        if attr == "lam" and p.run.loss == "ot":
            lab = "GLiP"
        meds.setdefault(lab, {})[float(getattr(p.run, attr))] = float(np.median(hinge_errors(r)))
    for lab in meds:
        series[lab] = []
        for v in values:
            match = [
                r
                for p, r in runs
                if p.run is not None
                and float(getattr(p.run, attr)) == v
                and (p.run.label == lab or (attr == "lam"))
            ]
            series[lab].append(hinge_errors(match[0]).ravel() if match else np.array([]))
    name = "sigma" if attr == "sigma_mm" else "lambda"
    grouped_boxplot(ctx.figure(fig), [f"{name} {v:g}" for v in values], series, title)
    rows = [[lab, *[_f(m.get(v)) for v in values]] for lab, m in meds.items()]
    named = sorted(
        (
            (p.run.label if attr != "lam" else "GLiP", float(getattr(p.run, attr)), r)
            for p, r in runs
            if p.run is not None
        ),
        key=lambda x: (x[0], x[1]),
    )
    curves = [
        [f"{lab} {name} {v:g}", curve_text(r), curve_text(r, "loss", ".3g"), failure_text(r)]
        for lab, v, r in named
    ]
    return "\n\n".join(
        [
            _table(["loss", *[f"{name} {v:g}" for v in values]], rows),
            _img(fig, title),
            "Each run's validation median and training loss at each evaluation (every "
            f"{ctx.plan.budget.eval_every} steps): a median still falling at the end means "
            "the run was still learning when the budget ended; an OT term running far "
            "below 0 means the penalty no longer bounds the output.",
            _table(
                ["run", "validation median mm", "training loss", "merged / flat / failed"],
                curves,
            ),
        ]
    ), meds


def section_sigma(ctx: Ctx, exp: ExperimentSpec) -> str:
    if not ctx.done(exp):
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    text, meds = _sweep(
        ctx, exp, "sigma_mm", "fig11-sigma.png", "Error by heatmap sigma (cf. Fig. 11)"
    )
    g = meds.get("GLiP", {})
    small = [g[s] for s in (0.5, 1.0, 2.0, 4.0) if s in g]
    if small and 8.0 in g:
        below = sum(m < EXPERT_MM for m in small)
        worst_at_8 = g[8.0] > max(small)
        result = "GLiP medians: " + ", ".join(f"{s:g}: {m:.2f}" for s, m in sorted(g.items()))
        base_ok: bool | None = None
        for lab, m in meds.items():
            if lab == "GLiP" or 1.0 not in m or len(m) < 2:
                continue
            best = min(m, key=lambda v: m[v])
            base_ok = best > 1.0
            merged = {
                float(p.run.sigma_mm): merged_cases(r)
                for p, r in ctx.done(exp)
                if p.run is not None and p.run.label == lab
            }
            result += (
                f"; {lab} medians: "
                + ", ".join(f"{v:g}: {e:.2f}" for v, e in sorted(m.items()))
                + f" (best at sigma {best:g}); {lab} cases with merged hinge points: "
                + ", ".join(f"{v:g}: {c}" for v, c in sorted(merged.items()))
            )
        ok = below == len(small) and worst_at_8 and base_ok is not False
        ctx.claims.append(
            (
                exp.claim,
                result,
                _agree(ok, below >= len(small) - 1 and worst_at_8),
                exp.paper,
            )
        )
    else:
        ctx.claims.append((exp.claim, "incomplete", "not run", exp.paper))
    return text


def section_lambda(ctx: Ctx, exp: ExperimentSpec) -> str:
    if not ctx.done(exp):
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    text, meds = _sweep(ctx, exp, "lam", "fig12-lambda.png", "GLiP error by lambda (cf. Fig. 12)")
    g = meds.get("GLiP", {})
    pos = [m for lam, m in g.items() if lam > 0]
    if pos and 0.0 in g:
        ok = max(pos) < EXPERT_MM and g[0.0] > max(pos)
        ctx.claims.append(
            (
                exp.claim,
                "medians: " + ", ".join(f"lambda {k:g}: {m:.2f}" for k, m in sorted(g.items())),
                _agree(ok, max(pos) < EXPERT_MM),
                exp.paper,
            )
        )
    else:
        ctx.claims.append((exp.claim, "incomplete", "not run", exp.paper))
    return text


def section_stability(ctx: Ctx, exp: ExperimentSpec) -> str:
    own = ctx.done(exp)
    everyone = [
        (p, ctx.results[p.key])
        for p in ctx.plan.runs
        if p.stage == "first"
        and p.key in ctx.results
        and p.run is not None
        and p.run.curve_on == "val"
    ]
    if not everyone:
        ctx.claims.append((exp.claim, "not run yet", "not run", exp.paper))
        return "Not run yet."
    lines = {
        f"{_label(p)} s{p.run.sigma_mm:g} l{p.run.lam:g} seed{p.run.seed}": (
            r.curve_column("step"),
            r.curve_column("val_median_mm"),
        )
        for p, r in everyone
        if p.run is not None
        and p.run.sigma_mm == 1.0
        and p.run.variant == "code"
        and p.run.lam in (0.0, 10.0)
    }
    line_plot(
        ctx.figure("learning-curves.png"),
        lines,
        "Validation median error by step (sigma 1 mm)",
        "training step",
        "validation median error (mm)",
        hline=EXPERT_MM,
        logy=True,
    )
    rows = []
    for p, r in own:
        t = r.summary["test"]
        share = t["collapsed"] / t["cases"]
        rows.append(
            [
                _label(p),
                str(p.run.seed if p.run else "?"),
                f"{t['collapsed']} / {t['cases']}",
                "yes" if share > COLLAPSED_RUN_SHARE else "no",
                _f(t["median_mm"]),
            ]
        )
    from glipcore.experiment.runner import COLLAPSE_MM, FLAT_SHARPNESS

    text = [
        f"A test case collapses when two predicted landmarks are under {COLLAPSE_MM:g} mm apart "
        f"or a heatmap is flat (peak sharpness under {FLAT_SHARPNESS:g}); a run counts as "
        "collapsed when more than "
        f"{COLLAPSED_RUN_SHARE:.0%} of its test cases collapse.",
        _img("learning-curves.png", "learning curves"),
    ]
    if rows:
        text.append(
            _table(["loss", "seed", "collapsed test cases", "run collapsed", "median mm"], rows)
        )
        by: dict[str, list[bool]] = {}
        cases: dict[str, tuple[int, int]] = {}  # collapsed, all test cases over the seeds
        for p, r in own:
            t = r.summary["test"]
            by.setdefault(_label(p), []).append(t["collapsed"] / t["cases"] > COLLAPSED_RUN_SHARE)
            c, n = cases.get(_label(p), (0, 0))
            cases[_label(p)] = (c + int(t["collapsed"]), n + int(t["cases"]))
        if "GLiP" in by and len(by) > 1:
            g = sum(by["GLiP"])
            other = {k: sum(v) for k, v in by.items() if k != "GLiP"}
            result = "collapsed runs (collapsed test cases): " + ", ".join(
                f"{k} {sum(v)}/{len(v)} ({cases[k][0]}/{cases[k][1]})" for k, v in by.items()
            )
            ctx.claims.append(
                (exp.claim, result, _agree(g < min(other.values()), g == 0), exp.paper)
            )
    return "\n\n".join(text)


def _glip_variants(ctx: Ctx, shipped: ShippedSettings) -> list[tuple[str, PlannedRun, RunResult]]:
    """Seed-0 GLiP (or OT) runs that change one of the shipped settings, named by the change."""
    out, seen = [], set()
    for p in ctx.plan.runs:
        r = p.run
        if (
            p.stage != "first"
            or r is None
            or p.key is None
            or p.key in seen
            or p.key not in ctx.results
            or r.loss not in ("glip", "ot")
            or r.seed != 0
            or r.curve_on != "val"
            or shipped.matches(p)
        ):
            continue
        seen.add(p.key)
        if r.loss == "ot":
            change = "lambda 0 (no penalty)"
        elif r.variant != shipped.variant:
            change = f"penalty variant {r.variant}" + (
                f", lambda {r.lam:.2g}" if r.lam != shipped.lam else ""
            )
        elif r.sigma_mm != shipped.sigma_mm:
            change = f"sigma {r.sigma_mm:g} mm"
        else:
            change = f"lambda {r.lam:g}"
        out.append((change, p, ctx.results[p.key]))
    return out


def section_defaults(ctx: Ctx) -> str:
    """Whether a run shows a better default than the shipped model's settings (read from its
    bundle): paired differences on the same cases."""
    shipped = ctx.shipped
    if isinstance(shipped, str):
        return f"Not compared: {shipped}."
    default = next(
        (
            (p, ctx.results[p.key])
            for p in ctx.plan.runs
            if p.stage == "first" and p.key in ctx.results and shipped.matches(p)
        ),
        None,
    )
    if default is None:
        return "Not run yet (needs the GLiP run with the shipped settings)."
    base = hinge_errors(default[1])
    argmax = np.stack([default[1].column(f"{n}_argmax_mm") for n in LANDMARKS], axis=1)
    rows: list[list[str]] = []
    better: list[str] = []

    def add(change: str, errs: NDArray[np.float64]) -> None:
        d = paired_difference(errs, base)
        verdict = "better" if d.high < 0 else ("worse" if d.low > 0 else "no difference shown")
        if d.high < 0:
            better.append(change)
        rows.append(
            [
                change,
                _f(float(np.nanmedian(errs))),
                d.text(),
                _f(100 * share_better(errs, base), 0) + " %",
                verdict,
            ]
        )

    add("argmax decoding (no sub-voxel refinement)", argmax)
    for change, _p, res in sorted(_glip_variants(ctx, shipped), key=lambda x: x[0]):
        add(change, hinge_errors(res))
    text = [
        f"Each row changes one setting of the shipped model's GLiP ({shipped.text()}) and "
        "compares it with the run of the same seed with the shipped settings on the same "
        "held-out cases; below 0 means the change has the smaller errors.",
        _table(
            [
                "change",
                "median mm",
                "paired change - shipped, median mm [95% CI]",
                "change better on",
                "verdict",
            ],
            rows,
        ),
    ]
    if better:
        text.append(
            "At this budget (one seed, the cpu budget's steps) "
            + ", ".join(better)
            + " beat the shipped setting. The shipped model trains several times longer "
            "than these runs; change it only after a held-out comparison at that length "
            "(`bench.model_compare`), not on this table alone."
        )
    else:
        text.append(
            "No change beats the shipped settings here (no interval lies below 0): the runs "
            "give no reason to change the shipped model's defaults."
        )
    return "\n\n".join(text)


SECTIONS: dict[str, Callable[[Ctx, ExperimentSpec], str]] = {
    "pilot": section_pilot,
    "losses": section_losses,
    "ablation": section_ablation,
    "gp": section_gp,
    "grade": section_grade,
    "second-stage": section_second,
    "sigma": section_sigma,
    "lambda": section_lambda,
    "stability": section_stability,
}


# ---------------------------------------------------------------------------- page


def _header(ctx: Ctx) -> str:
    from glipcore.experiment.runner import COLLAPSE_MM, FLAT_SHARPNESS
    from glipcore.experiment.testset import stratified_indices
    from glipcore.phantom import random_case

    b = ctx.plan.budget
    tb = b.test
    grades = [random_case(tb.seed, i).quality for i in stratified_indices(tb)]
    counts = ", ".join(f"{g}: {grades.count(g)}" for g in QUALITY_GRADES)
    cpu = sum(
        float(r.summary.get("train_s", 0)) + float(r.summary.get("test_s", 0))
        for r in ctx.results.values()
    )
    states = {
        s: sum(r.state == s for r in ctx.plan.runs)
        for s in ("done", "running", "pending", "waiting")
    }
    crop = " x ".join(str(v) for v in b.crop_zyx[::-1])
    lines = [
        "# The paper's experiments on phantoms",
        "",
        "Generated by `glip experiment report` from the finished runs; do not edit by hand.",
        "Phantoms, not patients: the phantom (`glipcore/phantom`) is cleaner than patient CT",
        "and every run here is much shorter than the paper's, so agreement or disagreement",
        "with the paper is about the method on this data at this budget, not about patients.",
        "",
        f"- budget **{b.name}**: {b.description.strip()}",
        f"- steps per run: {ctx.plan.pilot_steps or 'not known yet'} ({ctx.plan.pilot_note}); "
        f"U-Net {list(b.widths)}, crops {crop} (X x Y x Z), batch {b.batch_size}, "
        f"Adam lr {b.lr:g}",
        f"- training: phantom seed {b.train.seed}, {b.train.cases} cases ({b.val_cases} for "
        f"validation), preset {b.train.preset}",
        f"- held-out test set: phantom seed {tb.seed}, {len(grades)} cases stratified by "
        f"quality grade ({counts}); the same for every run, never trained on",
        f"- runs: {states['done']} done, {states['running']} running, {states['pending']} "
        f"pending, {states['waiting']} waiting; time of the finished runs "
        f"{cpu / 3600:.2f} h (wall time on {b.device}, training and test)",
        f"- phantom generator {ctx.plan.generator}; glipcore code hash {ctx.plan.code[:12]}",
        "- errors are Euclidean distances of the three hinge points in mm with sub-voxel "
        "decoding; medians come with 95% bootstrap intervals over cases; paired differences "
        "are taken on the same cases and landmarks",
        "- merged / flat / failed (in the tables): test cases with two hinge points under "
        f"{COLLAPSE_MM:g} mm apart; with a flat heatmap (peak sharpness under "
        f"{FLAT_SHARPNESS:g}: the peak's drop to its "
        "neighbours in units of the map's robust spread); and with either or an undefined "
        "annulus plane. Failed cases' errors still count in the medians and the worst case. "
        "A wide target (sigma 4-8 mm) has little drop near its peak by design, so there read "
        "'merged', not 'flat'",
        "- `--budget paper` (the paper's sizes on a GPU) was not run here: there is no GPU; a "
        "test builds its configurations and takes one tiny step.",
    ]
    return "\n".join(lines)


def _not_done(ctx: Ctx) -> str:
    left = [r for r in ctx.plan.runs if r.state != "done"]
    if not left:
        return "Every planned run is done."
    rows = [
        [
            r.name,
            r.stage,
            r.state,
            ", ".join(r.experiments),
            r.reason or "not started (or cut for time)",
        ]
        for r in left
    ]
    return (
        "These runs are not done; figures and claims that need them are missing or partial.\n\n"
        + _table(["run", "stage", "state", "experiments", "why"], rows)
    )


def _runs_table(ctx: Ctx) -> str:
    rows = []
    for r in ctx.plan.runs:
        if r.key is None or r.key not in ctx.results:
            continue
        s = ctx.results[r.key].summary
        rows.append(
            [
                f"`{ctx.results[r.key].folder.name}`",
                r.stage,
                _f(s["test"].get("median_mm")),
                str(s.get("steps", "-")),
                str(s.get("best_step", "-")),
                _f(s.get("train_s"), 0),
            ]
        )
    return (
        _table(["run folder", "stage", "test median mm", "steps", "best step", "train s"], rows)
        if rows
        else "No finished runs yet."
    )


def write_report(
    budget: Budget,
    experiments: Sequence[ExperimentSpec],
    store: Store,
    code: str | None = None,
    shipped_bundle: Path = SHIPPED_BUNDLE,
) -> Path:
    """Write ``README.md`` and ``figures/`` in the store's report folder; returns the page.

    ``shipped_bundle`` is the shipped model's ``bundle.json``: the "Defaults" section tests
    one-setting changes against the settings it was trained with.
    """
    plan = make_plan(budget, experiments, store, code)
    results = {}
    for r in plan.runs:
        if r.state == "done" and r.key is not None:
            res = store.load(r.key)
            if res is not None:
                results[r.key] = res
    ctx = Ctx(plan, results, store.report_dir)
    try:
        ctx.shipped = ShippedSettings.read(shipped_bundle)
    except ValueError as e:
        ctx.shipped = str(e)
    for old in (store.report_dir / "figures").glob("*.png"):
        old.unlink()  # figures of runs no longer current must not linger
    parts = [_header(ctx)]
    for exp in plan.experiments:
        body = SECTIONS[exp.kind](ctx, exp)
        intro = " ".join(
            t
            for t in (
                f"*Paper: {exp.paper}.*" if exp.paper else "",
                f"Claim: {exp.claim}." if exp.claim else "",
            )
            if t
        )
        parts.append("\n\n".join(t for t in (f"## {exp.title}", intro, body) if t))
    claims = [[c, r, a, ref] for c, r, a, ref in ctx.claims if c]
    parts.insert(
        1,
        "## The paper's claims against the phantom results\n\n"
        + _table(["the paper's claim", "our phantom result", "agrees?", "paper"], claims),
    )
    parts.append("## Defaults for the shipped model\n\n" + section_defaults(ctx))
    parts.append("## Runs not done\n\n" + _not_done(ctx))
    parts.append(
        "## Finished runs\n\nPer-case errors (`cases.csv`), learning curve (`curve.csv`) and "
        "`summary.json` of each run are in `runs/<run>-<key>/`.\n\n" + _runs_table(ctx)
    )
    store.report_dir.mkdir(parents=True, exist_ok=True)
    page = store.report_dir / "README.md"
    page.write_text("\n\n".join(parts) + "\n")
    return page
