"""``glip evaluate``: a bundle on a labelled manifest, with the paper's metrics.

Three predictors on the same volumes: the model with sub-voxel decoding, the same
heatmaps with plain argmax (the authors' decoding), and a naive baseline (contrast-blood
centroid + the training set's mean offsets, from the bundle) that shows how much the model
learned. Outputs: per-case CSV, summary JSON, a text table and a boxplot PNG.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from glipcore.manifest import read_manifest
from glipcore.metrics import (
    SDR_THRESHOLDS_MM,
    euclidean_errors,
    plane_angle,
    projection_distance,
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


@dataclass(frozen=True)
class CaseResult:
    """Predictions of the three methods for one case, with its truth."""

    case_id: str
    quality: str
    truth: NDArray[np.float64]
    preds: dict[str, NDArray[np.float64]]
    timings_s: dict[str, float]


def _metrics(results: Sequence[CaseResult], method: str, names: Sequence[str]) -> dict[str, Any]:
    err = np.stack([euclidean_errors(r.preds[method], r.truth) for r in results])  # (N, L)
    dist = np.array([projection_distance(r.preds[method], r.truth) for r in results])
    ang = np.array([plane_angle(r.preds[method], r.truth) for r in results])
    out: dict[str, Any] = {
        "landmarks": {n: vars(summarize(err[:, i])) for i, n in enumerate(names)},
        "all_landmarks": vars(summarize(err)),
        "plane_distance_mm": vars(summarize(dist)),
        "plane_angle_deg": vars(summarize(ang)),
        "sdr": {f"{t:g}mm": v for t, v in success_detection_rate(err).items()},
    }
    return out


def text_table(summary: dict[str, Any], names: Sequence[str]) -> str:
    """A short fixed-width table: median [IQR] and worst per landmark, plane, SDR."""
    lines = [
        f"{'method':<20} {'metric':<22} {'median':>7} {'q1':>7} {'q3':>7} {'worst':>7}",
        "-" * 74,
    ]
    for method in METHODS:
        m = summary["methods"][method]
        rows = [(f"{n} error (mm)", m["landmarks"][n]) for n in names]
        rows += [
            ("plane dist eq9 (mm)", m["plane_distance_mm"]),
            ("plane angle (deg)", m["plane_angle_deg"]),
        ]
        for i, (label, s) in enumerate(rows):
            head = METHOD_LABELS[method] if i == 0 else ""
            lines.append(
                f"{head:<20} {label:<22} {s['median']:7.2f} {s['q1']:7.2f} {s['q3']:7.2f} "
                f"{s['worst']:7.2f}"
            )
        sdr = "  ".join(f"<{k}: {100 * v:.0f}%" for k, v in m["sdr"].items())
        lines.append(f"{'':<20} SDR {sdr}")
        lines.append("")
    return "\n".join(lines)


def boxplot(results: Sequence[CaseResult], names: Sequence[str], path: Path) -> Path:
    """Boxplot of Euclidean errors per landmark and method, plus the plane distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*names, "plane (eq. 9)"]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = {"model": "#1f77b4", "argmax": "#9ecae1", "naive": "#d62728"}
    width = 0.25
    for k, method in enumerate(METHODS):
        data = []
        for i in range(len(names)):
            data.append([float(euclidean_errors(r.preds[method], r.truth)[i]) for r in results])
        data.append([projection_distance(r.preds[method], r.truth) for r in results])
        pos = np.arange(len(groups)) + (k - 1) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, sym=".")
        for b in bp["boxes"]:
            b.set_facecolor(colors[method])
        ax.plot([], [], color=colors[method], lw=8, label=METHOD_LABELS[method])
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("error (mm)")
    ax.set_yscale("symlog", linthresh=2)
    ax.axhline(2.0, color="grey", lw=0.8, ls="--")
    ax.set_title(f"Landmark and plane errors, {len(results)} cases")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
    predictor = Predictor(bundle, threads=threads)
    man = predictor.bundle.manifest
    offsets = man.metadata.get("naive_offsets_mm")
    if offsets is None:
        raise ValueError(f"{bundle}: bundle metadata lacks naive_offsets_mm (retrain)")
    names = list(man.landmarks)
    rows = read_manifest(manifest)
    results: list[CaseResult] = []
    for row in tqdm(rows, desc="evaluate", unit="case", disable=not progress):
        t0 = time.perf_counter()
        vol = load_volume(row.path)
        t1 = time.perf_counter()
        grid = to_model_grid(vol, man.preprocessing)
        t2 = time.perf_counter()
        pred = predictor.predict_grid(grid)
        naive = naive_predict(grid, man.preprocessing, np.asarray(offsets))
        timings = {"load": t1 - t0, "resample": t2 - t1, **pred.timings_s}
        results.append(
            CaseResult(
                row.case_id,
                row.quality,
                np.asarray(row.landmarks, dtype=np.float64),
                {"model": pred.landmarks_lps, "argmax": pred.landmarks_argmax_lps, "naive": naive},
                timings,
            )
        )
    if not results:
        raise ValueError(f"{manifest}: no cases")
    summary: dict[str, Any] = {
        "bundle": str(bundle),
        "model_version": predictor.model_version,
        "manifest": str(manifest),
        "cases": len(results),
        "sdr_thresholds_mm": list(SDR_THRESHOLDS_MM),
        "methods": {m: _metrics(results, m, names) for m in METHODS},
        "median_timings_s": {
            k: float(np.median([r.timings_s[k] for r in results])) for k in results[0].timings_s
        },
    }
    _write_cases_csv(results, names, out_dir / "cases.csv")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    table = text_table(summary, names)
    (out_dir / "table.txt").write_text(table + "\n")
    boxplot(results, names, out_dir / "boxplot.png")
    return summary


def _write_cases_csv(results: Sequence[CaseResult], names: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["case_id", "quality"]
        for m in METHODS:
            head += [f"{m}_{n}_mm" for n in names] + [f"{m}_plane_mm", f"{m}_angle_deg"]
        head += [f"{m}_{n}_{ax}" for m in ("model",) for n in names for ax in "xyz"]
        head += [f"t_{k}_s" for k in results[0].timings_s]
        w.writerow(head)
        for r in results:
            line: list[Any] = [r.case_id, r.quality]
            for m in METHODS:
                e = euclidean_errors(r.preds[m], r.truth)
                line += [f"{v:.3f}" for v in e]
                line += [
                    f"{projection_distance(r.preds[m], r.truth):.3f}",
                    f"{plane_angle(r.preds[m], r.truth):.3f}",
                ]
            line += [f"{v:.3f}" for v in r.preds["model"].ravel()]
            line += [f"{v:.3f}" for v in r.timings_s.values()]
            w.writerow(line)
