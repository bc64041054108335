"""Decoding methods and ensemble modes on real model outputs of a labelled manifest.

Each case runs through every fold of the bundle once (``infer_heatmaps`` on the model
grid); the same fold heatmaps are then decoded with argmax and every sub-voxel method of
``glipcore.decode`` on the fold-mean heatmap (the "heatmap" ensemble, and the only mode
with one fold), and, with two or more folds, also as the mean of the per-fold decoded
points (the "coordinate" ensemble) and per single fold. Errors are Euclidean distances to
the manifest's truth (LPS mm); ratios are against argmax on the same heatmaps.

The worst (case, landmark) pairs of the bundle's default decoding are listed with their
peak statistics (sharpness, coherence, fold spread) and the strongest secondary local
maximum of the heatmap (distance from the main peak, height relative to it).

    .venv/bin/python -m bench.decode_real [--model models/phantom-glip]
        [--data data/heldout/manifest.csv] [--cases N] [--case ID ...] [--threads 2]
        [--out errors.csv]
        [--plot CASE_ID:LANDMARK --plot-out runs/heatmap.png]
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from glipcore.bundle import Bundle, load_bundle
from glipcore.decode import DEFAULT_REFINE, REFINE_METHODS, RefineMethod, argmax_ijk, refine_ijk
from glipcore.geometry import FloatArray, ijk_to_lps, zyx_to_ijk
from glipcore.manifest import ManifestRow, read_manifest
from glipcore.predict import decode_ensemble, infer_heatmaps, set_threads
from glipcore.preprocess import to_model_grid
from glipcore.volume import Volume
from glipcore.volume_io import load_volume

SECOND_PEAK_EXCLUDE_VOX = 3
"""Local maxima closer than this (Chebyshev, voxels) to the main peak are its own."""


@dataclass(frozen=True)
class PeakStats:
    """One landmark's heatmap statistics on the fold-mean map."""

    sharpness: float
    coherence: float
    fold_spread_mm: float
    second_dist_mm: float
    second_rel_height: float
    """(second max - map median) / (main max - map median): 1 = as high as the main peak."""
    second_zyx: tuple[int, int, int]


@dataclass(frozen=True)
class CaseDecode:
    """Decoded points per method label (each (L, 3) LPS mm) and per-landmark peak stats."""

    case_id: str
    truth: FloatArray
    points: dict[str, FloatArray]
    peaks: tuple[PeakStats, ...]


def method_labels(n_folds: int) -> list[str]:
    """Labels in table order: heatmap-ensemble methods, then (two or more folds) the
    coordinate-ensemble methods and each single fold's argmax and refined points."""
    base = ["argmax", *REFINE_METHODS]
    if n_folds < 2:
        return base
    coord = [f"{m} coord" for m in base]
    folds = [f"fold{f} {m}" for f in range(n_folds) for m in ("argmax", DEFAULT_REFINE)]
    return [*base, *coord, *folds]


def decode_methods(fold_maps: Sequence[torch.Tensor], affine: FloatArray) -> dict[str, FloatArray]:
    """Every method label of :func:`method_labels` -> its (L, 3) points in LPS mm."""
    stack = torch.stack(list(fold_maps))  # (F, L, Z, Y, X)
    mean = stack.mean(dim=0)
    per_fold: dict[str, FloatArray] = {
        "argmax": ijk_to_lps(affine, argmax_ijk(stack).numpy())  # (F, L, 3)
    }
    out: dict[str, FloatArray] = {"argmax": ijk_to_lps(affine, argmax_ijk(mean).numpy())}
    for m in REFINE_METHODS:
        method: RefineMethod = m  # type: ignore[assignment]
        out[m] = ijk_to_lps(affine, refine_ijk(mean, method=method).numpy())
        per_fold[m] = ijk_to_lps(affine, refine_ijk(stack, method=method).numpy())
    if stack.shape[0] >= 2:
        for m, pts in per_fold.items():
            out[f"{m} coord"] = pts.mean(axis=0)
        for f in range(stack.shape[0]):
            for m in ("argmax", DEFAULT_REFINE):
                out[f"fold{f} {m}"] = per_fold[m][f]
    return out


def second_peak(
    heatmap: torch.Tensor, exclude_vox: int = SECOND_PEAK_EXCLUDE_VOX
) -> tuple[tuple[int, int, int], tuple[int, int, int], float]:
    """Main peak (z, y, x), the highest other local maximum (3x3x3) at Chebyshev distance
    > ``exclude_vox`` from it, and that maximum's relative height (see :class:`PeakStats`).
    With no other local maximum the second peak is the main one and the height is 0."""
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap must be (Z, Y, X), got shape {tuple(heatmap.shape)}")
    h = heatmap.float()
    flat = int(h.argmax())
    _, ny, nx = h.shape
    main = (flat // (ny * nx), (flat // nx) % ny, flat % nx)
    pooled = F.max_pool3d(h[None, None], 3, stride=1, padding=1)[0, 0]
    is_max = h >= pooled
    z0, y0, x0 = main
    r = exclude_vox
    is_max[
        max(0, z0 - r) : z0 + r + 1, max(0, y0 - r) : y0 + r + 1, max(0, x0 - r) : x0 + r + 1
    ] = False
    if not bool(is_max.any()):
        return main, main, 0.0
    cand = torch.where(is_max, h, torch.tensor(float("-inf")))
    f2 = int(cand.argmax())
    second = (f2 // (ny * nx), (f2 // nx) % ny, f2 % nx)
    med = float(h.median())
    top = float(h[main])
    rel = (float(h[second]) - med) / (top - med) if top > med else 0.0
    return main, second, rel


def peak_stats(
    fold_maps: Sequence[torch.Tensor], affine: FloatArray, refine: str, ensemble: str
) -> tuple[FloatArray, list[PeakStats]]:
    """The Predictor's own decoding (``decode_ensemble``) and per-landmark peak stats."""
    final, _, _, conf = decode_ensemble(
        fold_maps,
        affine,
        ensemble="coordinate" if ensemble == "coordinate" else "heatmap",
        refine=refine,
    )
    mean = torch.stack(list(fold_maps)).mean(dim=0)
    stats = []
    for lm in range(mean.shape[0]):
        main, second, rel = second_peak(mean[lm])
        d = ijk_to_lps(affine, zyx_to_ijk(np.array(second))) - ijk_to_lps(
            affine, zyx_to_ijk(np.array(main))
        )
        c = conf[lm]
        stats.append(
            PeakStats(
                c.sharpness, c.coherence, c.fold_spread_mm, float(np.linalg.norm(d)), rel, second
            )
        )
    return final, stats


def case_grid(row: ManifestRow, bundle: Bundle) -> Volume:
    """A manifest case loaded and resampled to the bundle's model grid."""
    return to_model_grid(load_volume(row.path), bundle.manifest.preprocessing)


def fold_heatmaps(bundle: Bundle, grid: Volume) -> list[torch.Tensor]:
    """Each fold model's raw output (L, Z, Y, X) on a model-grid volume."""
    image = torch.from_numpy(np.ascontiguousarray(grid.array, dtype=np.float32))
    return [infer_heatmaps(m, image) for m in bundle.models]


def decode_case(
    case_id: str,
    truth: FloatArray,
    fold_maps: Sequence[torch.Tensor],
    affine: FloatArray,
    bundle: Bundle,
) -> CaseDecode:
    """All methods on one case's fold maps; checks that the bench's label for the bundle's
    own setting equals what ``decode_ensemble`` (the Predictor) returns."""
    m = bundle.manifest
    points = decode_methods(fold_maps, affine)
    final, stats = peak_stats(fold_maps, affine, m.refine, m.ensemble)
    label = default_label(bundle)
    if not np.allclose(points[label], final, atol=1e-6):
        raise AssertionError(f"{case_id}: bench label {label!r} differs from decode_ensemble")
    return CaseDecode(case_id, np.asarray(truth, dtype=np.float64), points, tuple(stats))


def default_label(bundle: Bundle) -> str:
    """The method label the bundle's Predictor uses."""
    m = bundle.manifest
    if len(bundle.models) >= 2 and m.ensemble == "coordinate":
        return f"{m.refine} coord"
    return m.refine


def errors(results: Sequence[CaseDecode], label: str) -> NDArray[np.float64]:
    """(N cases, L) Euclidean errors in mm of one method."""
    return np.stack([np.linalg.norm(r.points[label] - r.truth, axis=-1) for r in results])


def stats_row(e: NDArray[np.float64]) -> tuple[float, float, float, float]:
    """Median, mean, 90th percentile and worst."""
    v = np.asarray(e, dtype=np.float64).ravel()
    return (float(np.median(v)), float(v.mean()), float(np.percentile(v, 90)), float(v.max()))


def paired_delta(
    e: NDArray[np.float64], ref: NDArray[np.float64], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """Paired comparison of (cases, L) errors against a reference on the same heatmaps:
    mean difference (mm), its 95 % bootstrap interval resampling cases (landmarks of a case
    stay together), and the share of (case, landmark) pairs where ``e`` is smaller."""
    d = (e - ref).mean(axis=1)  # per case
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi), float(np.mean(e < ref))


def method_table(results: Sequence[CaseDecode], labels: Sequence[str], default: str) -> str:
    """Median / mean / p90 / worst per method, each median over argmax's median, and the
    paired mean difference to the default (95 % CI over cases) with the share it wins."""
    ref = stats_row(errors(results, "argmax"))[0]
    e_def = errors(results, default)
    lines = [
        f"{'method':<18} {'median':>7} {'mean':>7} {'p90':>7} {'worst':>7} {'med/argmax':>11}"
        f"   {'mean - default [95% CI]':<26} {'wins':>5}",
        "-" * 97,
    ]
    for lab in labels:
        e = errors(results, lab)
        med, mean, p90, worst = stats_row(e)
        name = f"{lab} (default)" if lab == default else lab
        row = f"{name:<18} {med:7.3f} {mean:7.3f} {p90:7.3f} {worst:7.3f} {med / ref:11.2f}"
        if lab != default:
            d, lo, hi, win = paired_delta(e, e_def)
            row += f"   {d:+.3f} [{lo:+.3f}, {hi:+.3f}]{'':<4} {100 * win:4.0f}%"
        lines.append(row)
    return "\n".join(lines)


def landmark_table(results: Sequence[CaseDecode], names: Sequence[str], label: str) -> str:
    """Per-landmark statistics of one method."""
    e = errors(results, label)
    lines = [f"{'landmark':<10} {'median':>7} {'mean':>7} {'p90':>7} {'worst':>7}"]
    for i, n in enumerate(names):
        med, mean, p90, worst = stats_row(e[:, i])
        lines.append(f"{n:<10} {med:7.3f} {mean:7.3f} {p90:7.3f} {worst:7.3f}")
    return "\n".join(lines)


def worst_table(
    results: Sequence[CaseDecode], names: Sequence[str], label: str, top: int = 3
) -> str:
    """The worst (case, landmark) pairs of one method with their peak statistics, and the
    medians of those statistics over all pairs for comparison."""
    e = errors(results, label)
    arg = errors(results, "argmax")
    order = np.argsort(e.ravel())[::-1][:top]
    lines = [
        f"{'case':<22} {'lm':<4} {'err':>6} {'argmax':>6} {'sharp':>6} {'coher':>6} "
        f"{'spread':>6} {'2nd mm':>7} {'2nd rel':>7}"
    ]

    def fmt(head: str, lm: str, err: str, a: str, p: Sequence[float]) -> str:
        return (
            f"{head:<22} {lm:<4} {err:>6} {a:>6} {p[0]:6.2f} {p[1]:6.3f} {p[2]:6.2f} "
            f"{p[3]:7.1f} {p[4]:7.3f}"
        )

    for flat in order:
        c, lm = divmod(int(flat), len(names))
        p = results[c].peaks[lm]
        vals = (p.sharpness, p.coherence, p.fold_spread_mm, p.second_dist_mm, p.second_rel_height)
        lines.append(
            fmt(results[c].case_id, names[lm], f"{e[c, lm]:.2f}", f"{arg[c, lm]:.2f}", vals)
        )
    allp = [p for r in results for p in r.peaks]
    med = [
        float(np.median([getattr(p, k) for p in allp]))
        for k in ("sharpness", "coherence", "fold_spread_mm", "second_dist_mm", "second_rel_height")
    ]
    lines.append(fmt("median of all", "", f"{np.median(e):.2f}", f"{np.median(arg):.2f}", med))
    return "\n".join(lines)


def write_csv(
    results: Sequence[CaseDecode], names: Sequence[str], labels: Sequence[str], path: Path
) -> Path:
    """One row per (case, landmark): every method's error and the peak statistics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "case_id",
                "landmark",
                *[f"err_{lab.replace(' ', '_')}_mm" for lab in labels],
                "sharpness",
                "coherence",
                "fold_spread_mm",
                "second_peak_mm",
                "second_peak_rel",
            ]
        )
        for r in results:
            for i, n in enumerate(names):
                p = r.peaks[i]
                errs = [float(np.linalg.norm(r.points[lab][i] - r.truth[i])) for lab in labels]
                w.writerow(
                    [
                        r.case_id,
                        n,
                        *[f"{v:.4f}" for v in errs],
                        f"{p.sharpness:.4f}",
                        f"{p.coherence:.4f}",
                        f"{p.fold_spread_mm:.4f}",
                        f"{p.second_dist_mm:.3f}",
                        f"{p.second_rel_height:.4f}",
                    ]
                )
    return path


def plot_case(
    grid: Volume,
    fold_maps: Sequence[torch.Tensor],
    truth_lps: FloatArray,
    landmark: int,
    name: str,
    path: Path,
    *,
    half_mm: float = 24.0,
) -> Path:
    """PNG: CT and fold-mean heatmap of one landmark on the oblique plane through the main
    peak, the second peak and the true point (axial when they are collinear), with the
    three points marked, plus each fold's heatmap when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import map_coordinates

    mean = torch.stack(list(fold_maps)).mean(dim=0)[landmark]
    main, second, rel = second_peak(mean)
    a = grid.affine
    pts = {
        "peak": ijk_to_lps(a, zyx_to_ijk(np.array(main))),
        "2nd peak": ijk_to_lps(a, zyx_to_ijk(np.array(second))),
        "truth": np.asarray(truth_lps, dtype=np.float64),
    }
    centre = pts["peak"]
    u = pts["2nd peak"] - centre
    if np.linalg.norm(u) < 1e-6:
        u = np.array([1.0, 0.0, 0.0])
    u = u / np.linalg.norm(u)
    v = pts["truth"] - centre
    v = v - (v @ u) * u
    if np.linalg.norm(v) < 0.5:
        v = np.cross(u, [0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.cross(u, [1.0, 0.0, 0.0])
    v = v / np.linalg.norm(v)
    extent_u = max(half_mm, 1.2 * float(np.linalg.norm(pts["2nd peak"] - centre)))
    step = 0.4
    su = np.arange(-extent_u, extent_u + step, step)
    sv = np.arange(-half_mm, half_mm + step, step)
    uu, vv = np.meshgrid(su, sv)
    lps = centre + uu[..., None] * u + vv[..., None] * v
    zyx = np.linalg.solve(a[:3, :3], (lps - a[:3, 3]).reshape(-1, 3).T)[::-1]

    def sample(arr: NDArray[np.float32]) -> NDArray[np.float64]:
        out = map_coordinates(arr, zyx, order=1, mode="nearest")
        return np.asarray(out, dtype=np.float64).reshape(uu.shape)

    panels = [("CT (model grid, 0-1)", sample(grid.array), "gray")]
    panels.append(("fold-mean heatmap", sample(mean.numpy()), "viridis"))
    if len(fold_maps) > 1:
        panels += [
            (f"fold {f}", sample(fm[landmark].numpy()), "viridis") for f, fm in enumerate(fold_maps)
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=110)
    marks = {"peak": ("r", "x"), "2nd peak": ("orange", "+"), "truth": ("cyan", "o")}
    for ax, (title, img, cmap) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, cmap=cmap, origin="lower", extent=(su[0], su[-1], sv[0], sv[-1]))
        for k, p in pts.items():
            d = p - centre
            col, mk = marks[k]
            ax.plot(d @ u, d @ v, mk, color=col, ms=9, mfc="none", mew=2, label=k)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("mm along peak -> 2nd peak")
    np.atleast_1d(axes)[0].set_ylabel("mm (towards truth)")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    d2 = float(np.linalg.norm(pts["2nd peak"] - centre))
    dt = float(np.linalg.norm(pts["truth"] - centre))
    fig.suptitle(
        f"{name}: peak-truth {dt:.2f} mm, 2nd peak {d2:.1f} mm away, rel. height {rel:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(
    model: Path,
    data: Path,
    *,
    cases: int | None = None,
    only: Sequence[str] = (),
    threads: int | None = 2,
    out: Path | None = None,
    plot: str | None = None,
    plot_out: Path | None = None,
) -> list[CaseDecode]:
    """Run the bench and print its tables; returns the per-case results."""
    n_threads = set_threads(threads)
    bundle = load_bundle(model)
    names = list(bundle.manifest.landmarks)
    rows = read_manifest(data)
    if only:
        missing = set(only) - {r.case_id for r in rows}
        if missing:
            raise SystemExit(f"{data}: no case(s) {sorted(missing)}")
        rows = [r for r in rows if r.case_id in only]
    rows = rows[: cases if cases else None]
    if not rows:
        raise SystemExit(f"{data}: no cases")
    plot_case_id, _, plot_lm = (plot or "").partition(":")
    labels = method_labels(len(bundle.models))
    default = default_label(bundle)
    results: list[CaseDecode] = []
    t_infer = t_decode = 0.0
    t0 = time.perf_counter()
    for row in rows:
        grid = case_grid(row, bundle)
        t1 = time.perf_counter()
        maps = fold_heatmaps(bundle, grid)
        t2 = time.perf_counter()
        results.append(decode_case(row.case_id, row.landmarks, maps, grid.affine, bundle))
        t_infer += t2 - t1
        t_decode += time.perf_counter() - t2
        if row.case_id == plot_case_id:
            lm = names.index(plot_lm) if plot_lm else 0
            png = plot_out or Path(f"runs/heatmap-{row.case_id}-{names[lm]}.png")
            plot_case(grid, maps, row.landmarks[lm], lm, f"{row.case_id} {names[lm]}", png)
            print(f"wrote {png}")
    wall = time.perf_counter() - t0
    print(
        f"model {bundle.version} ({len(bundle.models)} fold(s), "
        f"ensemble={bundle.manifest.ensemble}, refine={bundle.manifest.refine}), "
        f"{len(results)} cases of {data}, "
        f"torch threads {n_threads}"
    )
    print(f"wall {wall:.0f} s (inference {t_infer:.0f} s, decoding all methods {t_decode:.0f} s)")
    print(
        f"\nEuclidean error (mm), {len(results)} cases x {len(names)} landmarks; "
        "plain names decode the fold-mean heatmap, 'coord' = mean of per-fold points"
    )
    print(method_table(results, labels, default))
    print(f"\nPer landmark, {default} (default):")
    print(landmark_table(results, names, default))
    print(
        f"\nWorst (case, landmark) of {default}; peak stats on the fold-mean map "
        f"(2nd = highest other local max beyond {SECOND_PEAK_EXCLUDE_VOX} voxels):"
    )
    print(worst_table(results, names, default))
    if out:
        print(f"\nwrote {write_csv(results, names, labels, out)}")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.decode_real", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", type=Path, default=Path("models/phantom-glip"))
    p.add_argument("--data", type=Path, default=Path("data/heldout/manifest.csv"))
    p.add_argument("--cases", type=int, default=None, help="first N cases (default all)")
    p.add_argument("--case", action="append", default=[], help="only this case id (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="per-case errors CSV")
    p.add_argument("--plot", default=None, help="CASE_ID[:LANDMARK]: PNG of its heatmap")
    p.add_argument("--plot-out", type=Path, default=None)
    a = p.parse_args(argv)
    run(
        a.model,
        a.data,
        cases=a.cases,
        only=a.case,
        threads=a.threads,
        out=a.out,
        plot=a.plot,
        plot_out=a.plot_out,
    )


if __name__ == "__main__":
    main()
