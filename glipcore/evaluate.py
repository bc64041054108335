"""``glip evaluate``: a bundle on a labelled manifest, with the paper's metrics.

Three predictors on the same volumes: the model with sub-voxel decoding, the same
heatmaps with plain argmax (the authors' decoding), and a naive baseline (contrast-blood
centroid + the training set's mean offsets, from the bundle) that shows how much the model
learned. Outputs: per-case CSV, summary JSON, a text table and a boxplot PNG.

Every landmark of the bundle that the manifest has truth for is reported (a case without
truth for an ostium is left out of that ostium's numbers). The plane metrics and the SDR
are on the three hinge points. For the coronary ostia also their height above the annulus
plane (signed distance of the ostium centre from the plane through the three hinge points,
normal pointing cranially), predicted on the predicted plane against the truth's on the
truth's plane. A prediction whose hinge points are collinear is a failed case: its plane
metrics and heights are undefined (NaN in the CSV, counted as "undef" in the table).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from glipcore import LANDMARKS, OSTIA
from glipcore.geometry import heights_above, plane_or_none
from glipcore.landmarks import pick, with_truth
from glipcore.manifest import ManifestRow, read_manifest
from glipcore.metrics import (
    SDR_THRESHOLDS_MM,
    euclidean_errors,
    plane_errors,
    success_detection_rate,
    summarize,
)
from glipcore.predict import Predictor
from glipcore.preprocess import to_model_grid
from glipcore.train import naive_predict
from glipcore.volume_io import load_volume

METHODS = ("model", "argmax", "naive")
METHOD_LABELS = {
    "model": "model (sub-voxel)",
    "argmax": "model (argmax)",
    "naive": "naive baseline",
}


def ostium_heights(names: Sequence[str], points: NDArray[np.float64]) -> dict[str, float]:
    """{ostium: height (mm)} for the ostia among ``names``: the height above the plane
    through the hinge points of ``points`` (L, 3, in ``names`` order); NaN when the hinge
    points are collinear or the ostium is unknown (NaN)."""
    ostia = [n for n in names if n in OSTIA]
    plane = plane_or_none(pick(names, points, LANDMARKS))
    if plane is None:
        return dict.fromkeys(ostia, math.nan)
    heights = heights_above(plane, pick(names, points, ostia))
    return {n: float(h) for n, h in zip(ostia, heights, strict=True)}


@dataclass(frozen=True)
class CaseResult:
    """Predictions (L, 3) of the three methods for one case, with its truth (L, 3) in
    ``names`` order (a row of NaN for a landmark the case has no truth for)."""

    case_id: str
    quality: str
    names: tuple[str, ...]
    truth: NDArray[np.float64]
    preds: dict[str, NDArray[np.float64]]
    timings_s: dict[str, float]

    def errors(self, method: str, names: Sequence[str]) -> NDArray[np.float64]:
        """Euclidean error (mm) of the named landmarks; NaN where there is no truth."""
        return euclidean_errors(
            pick(self.names, self.preds[method], names), pick(self.names, self.truth, names)
        )

    def plane(self, method: str) -> tuple[float, float]:
        """(eq. 9 distance mm, angle deg) on the hinge points; NaN if degenerate."""
        return plane_errors(
            pick(self.names, self.preds[method], LANDMARKS),
            pick(self.names, self.truth, LANDMARKS),
        )

    def height_errors(self, method: str, ostia: Sequence[str]) -> NDArray[np.float64]:
        """Predicted minus true height (mm) of each named ostium above its annulus plane."""
        pred = ostium_heights(self.names, self.preds[method])
        true = ostium_heights(self.names, self.truth)
        return np.array([pred[n] - true[n] for n in ostia], dtype=np.float64)


def reported_landmarks(results: Sequence[CaseResult]) -> tuple[str, ...]:
    """The bundle's landmarks that at least one case has truth for (bundle order)."""
    return with_truth(results[0].names, (r.truth for r in results))


def reported_ostia(names: Sequence[str]) -> tuple[str, ...]:
    """The ostia among the reported landmarks."""
    return tuple(n for n in names if n in OSTIA)


def _metrics(results: Sequence[CaseResult], method: str, names: Sequence[str]) -> dict[str, Any]:
    err = np.stack([r.errors(method, names) for r in results])  # (N, L)
    hinges = np.stack([r.errors(method, LANDMARKS) for r in results])
    planes = np.array([r.plane(method) for r in results])  # (N, 2)
    ostia = reported_ostia(names)
    heights = np.stack([r.height_errors(method, ostia) for r in results])  # (N, O)
    return {
        "landmarks": {n: vars(summarize(err[:, i])) for i, n in enumerate(names)},
        "all_landmarks": vars(summarize(err)),
        "plane_distance_mm": vars(summarize(planes[:, 0])),
        "plane_angle_deg": vars(summarize(planes[:, 1])),
        "degenerate_cases": int(np.isnan(planes[:, 0]).sum()),
        "ostium_height_error_mm": {
            n: vars(summarize(np.abs(heights[:, i]))) for i, n in enumerate(ostia)
        },
        "sdr": {f"{t:g}mm": v for t, v in success_detection_rate(hinges).items()},
    }


def summarize_results(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The metrics of every method: per reported landmark, all of them, the plane on the
    hinge points (with the count of degenerate cases), the ostium heights, the SDR."""
    if not results:
        raise ValueError("no cases to evaluate")
    names = reported_landmarks(results)
    return {
        "cases": len(results),
        "landmarks": list(names),
        "sdr_thresholds_mm": list(SDR_THRESHOLDS_MM),
        "methods": {m: _metrics(results, m, names) for m in METHODS},
        "median_timings_s": {
            k: float(np.median([r.timings_s[k] for r in results])) for k in results[0].timings_s
        },
    }


def text_table(summary: dict[str, Any], names: Sequence[str]) -> str:
    """A short fixed-width table: median [IQR] and worst per landmark, plane, ostium
    heights, SDR; "undef" counts cases where the value is undefined (a degenerate
    prediction's plane, or no truth)."""
    lines = [
        f"{'method':<20} {'metric':<22} {'median':>7} {'q1':>7} {'q3':>7} {'worst':>7} "
        f"{'undef':>5}",
        "-" * 80,
    ]
    for method in METHODS:
        m = summary["methods"][method]
        rows = [(f"{n} error (mm)", m["landmarks"][n]) for n in names]
        rows += [
            ("plane dist eq9 (mm)", m["plane_distance_mm"]),
            ("plane angle (deg)", m["plane_angle_deg"]),
        ]
        rows += [(f"{n} height err (mm)", s) for n, s in m["ostium_height_error_mm"].items()]
        for i, (label, s) in enumerate(rows):
            head = METHOD_LABELS[method] if i == 0 else ""
            lines.append(
                f"{head:<20} {label:<22} {s['median']:7.2f} {s['q1']:7.2f} {s['q3']:7.2f} "
                f"{s['worst']:7.2f} {s.get('undefined', 0):5d}"
            )
        sdr = "  ".join(f"<{k}: {100 * v:.0f}%" for k, v in m["sdr"].items())
        lines.append(f"{'':<20} SDR (hinges) {sdr}")
        if m["degenerate_cases"]:
            lines.append(
                f"{'':<20} {m['degenerate_cases']} case(s) with collinear hinge points: "
                "failed, no plane"
            )
        lines.append("")
    return "\n".join(lines)


def boxplot(results: Sequence[CaseResult], names: Sequence[str], path: Path) -> Path:
    """Boxplot of Euclidean errors per landmark and method, the plane distance and the
    ostium height errors (undefined values left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ostia = reported_ostia(names)
    groups = [*names, "plane (eq. 9)", *(f"{n} height" for n in ostia)]
    fig, ax = plt.subplots(figsize=(9 + len(ostia), 4.5), dpi=110)
    colors = {"model": "#1f77b4", "argmax": "#9ecae1", "naive": "#d62728"}
    width = 0.25
    for k, method in enumerate(METHODS):
        columns = np.concatenate(
            [
                np.stack([r.errors(method, names) for r in results]),
                np.array([[r.plane(method)[0]] for r in results]),
                np.abs(np.stack([r.height_errors(method, ostia) for r in results])),
            ],
            axis=1,
        )
        data = [col[~np.isnan(col)] for col in columns.T]
        pos = np.arange(len(groups)) + (k - 1) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, sym=".")
        for b in bp["boxes"]:
            b.set_facecolor(colors[method])
        ax.plot([], [], color=colors[method], lw=8, label=METHOD_LABELS[method])
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("error (mm)")
    ax.set_yscale("symlog", linthresh=2)  # linear up to 2 mm, where the decisions are
    ax.set_ylim(bottom=0.0)
    ax.axhline(2.0, color="grey", lw=0.8, ls="--", label="2 mm")
    ax.set_title(f"Landmark and plane errors, {len(results)} cases")
    # below the axis: inside, it hid the first landmark's naive-baseline box
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _naive_offsets(predictor: Predictor, bundle: Path) -> NDArray[np.float64]:
    man = predictor.bundle.manifest
    offsets = man.metadata.get("naive_offsets_mm")
    if offsets is None:
        raise ValueError(f"{bundle}: bundle metadata lacks naive_offsets_mm (retrain)")
    out = np.asarray(offsets, dtype=np.float64)
    if out.shape != (len(man.landmarks), 3):
        raise ValueError(
            f"{bundle}: naive_offsets_mm has shape {out.shape}, expected one offset per "
            f"landmark ({len(man.landmarks)}, 3)"
        )
    return out


def predict_case(
    predictor: Predictor, row: ManifestRow, offsets: NDArray[np.float64]
) -> CaseResult:
    """Load one manifest case and predict it with the model and the naive baseline."""
    man = predictor.bundle.manifest
    names = tuple(man.landmarks)
    t0 = time.perf_counter()
    vol = load_volume(row.path)
    t1 = time.perf_counter()
    grid = to_model_grid(vol, man.preprocessing)
    t2 = time.perf_counter()
    pred = predictor.predict_grid(grid)
    naive = naive_predict(grid, man.preprocessing, offsets)
    return CaseResult(
        row.case_id,
        row.quality,
        names,
        row.points(names),
        {"model": pred.landmarks_lps, "argmax": pred.landmarks_argmax_lps, "naive": naive},
        {"load": t1 - t0, "resample": t2 - t1, **pred.timings_s},
    )


def evaluate(
    bundle: Path,
    manifest: Path,
    out_dir: Path,
    *,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a bundle on a manifest's cases (loaded through the volume loaders)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(bundle, threads=threads, tta_passes=0)  # landmarks only
    offsets = _naive_offsets(predictor, bundle)
    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"{manifest}: no cases")
    results = [
        predict_case(predictor, row, offsets)
        for row in tqdm(rows, desc="evaluate", unit="case", disable=not progress)
    ]
    summary: dict[str, Any] = {
        "bundle": str(bundle),
        "model_version": predictor.model_version,
        "manifest": str(manifest),
        **summarize_results(results),
    }
    write_report(results, summary, out_dir)
    return summary


def write_report(results: Sequence[CaseResult], summary: dict[str, Any], out_dir: Path) -> None:
    """cases.csv, summary.json, table.txt and boxplot.png in ``out_dir``."""
    names = summary["landmarks"]
    _write_cases_csv(results, names, out_dir / "cases.csv")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.txt").write_text(text_table(summary, names) + "\n")
    boxplot(results, names, out_dir / "boxplot.png")


def _cell(v: float) -> str:
    """A CSV number with 3 decimals; empty when undefined (NaN)."""
    return "" if math.isnan(v) else f"{v:.3f}"


def _write_cases_csv(results: Sequence[CaseResult], names: Sequence[str], path: Path) -> None:
    ostia = reported_ostia(names)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["case_id", "quality"]
        for m in METHODS:
            head += [f"{m}_{n}_mm" for n in names] + [f"{m}_plane_mm", f"{m}_angle_deg"]
            head += [f"{m}_{n}_height_err_mm" for n in ostia]
        head += [f"model_{n}_{ax}" for n in names for ax in "xyz"]
        head += [f"model_{n}_height_mm" for n in ostia] + [f"true_{n}_height_mm" for n in ostia]
        head += [f"t_{k}_s" for k in results[0].timings_s]
        w.writerow(head)
        for r in results:
            line: list[Any] = [r.case_id, r.quality]
            for m in METHODS:
                line += [_cell(v) for v in r.errors(m, names)]
                line += [_cell(v) for v in r.plane(m)]
                line += [_cell(v) for v in r.height_errors(m, ostia)]
            line += [_cell(v) for v in pick(r.names, r.preds["model"], names).ravel()]
            pred_h = ostium_heights(r.names, r.preds["model"])
            true_h = ostium_heights(r.names, r.truth)
            line += [_cell(pred_h[n]) for n in ostia] + [_cell(true_h[n]) for n in ostia]
            line += [f"{v:.3f}" for v in r.timings_s.values()]
            w.writerow(line)
