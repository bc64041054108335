"""One first-stage run: train a U-Net with one loss under the budget, record its learning
curve, score its best checkpoint on the held-out test set, and write the results.

Training is :func:`glipcore.train.train_fold` with ``steps_per_epoch = eval_every``: every
``eval_every`` steps it validates (median landmark error on whole model-grid volumes; the
pilot validates on the held-out set itself, since the pilot's job is to find how many steps
reach the target there), checkpoints ``last.pt`` and resumes from it when restarted.

A test case *fails* when its predicted hinge points are collinear (no plane) or when the
prediction collapses: two landmarks' peaks under :data:`COLLAPSE_MM` apart, or a flat
heatmap (peak sharpness under :data:`FLAT_SHARPNESS`).
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

import glipcore
from glipcore import LANDMARKS
from glipcore.dataset import Case
from glipcore.experiment.budget import Budget
from glipcore.experiment.spec import ResolvedRun
from glipcore.experiment.store import Store
from glipcore.experiment.testset import load_test_set
from glipcore.metrics import SDR_THRESHOLDS_MM, euclidean_errors, plane_errors
from glipcore.train import (
    CVConfig,
    DataConfig,
    GridConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    predict_cases,
    train_fold,
)
from glipcore.unet import UNetConfig, build_unet

COLLAPSE_MM = 3.0
"""Two predicted landmarks closer than this are one collapsed peak."""
FLAT_SHARPNESS = 10.0
"""A peak less sharp than this (robust-spread units, see glipcore.decode) is a flat map."""
SPLIT_SEED = 0
"""The validation cases are the same for every run (not the run's seed)."""

log = logging.getLogger("glipcore.experiment")


# ---------------------------------------------------------------------------- config


def run_settings(run: ResolvedRun, budget: Budget, steps: int) -> dict[str, Any]:
    """Everything that determines a run's result (hashed into its key): the run, the
    training sizes and data, the test set. Not the device or threads."""
    return {
        "run": run.model_dump(mode="json"),
        "steps": steps,
        "eval_every": budget.eval_every,
        "batch_size": budget.batch_size,
        "lr": budget.lr,
        "plateau_patience": budget.plateau_patience,
        "crop_zyx": list(budget.crop_zyx),
        "margin_vox": budget.margin_vox,
        "widths": list(budget.widths),
        "preprocessing": budget.preprocessing.model_dump(mode="json"),
        "train": budget.train.model_dump(mode="json"),
        "val_cases": budget.val_cases,
        "test": budget.test.model_dump(mode="json"),
    }


def train_config(run: ResolvedRun, budget: Budget, steps: int, out_dir: Path) -> TrainConfig:
    """The :class:`TrainConfig` of a run (one fold, ``steps / eval_every`` epochs)."""
    from glipcore.dataset import CropConfig

    return TrainConfig(
        name=run.name,
        out_dir=out_dir,
        seed=run.seed,
        device=budget.device,
        threads=budget.threads,
        channels_last=budget.channels_last,
        data=DataConfig(phantom=budget.train, cache_dir=budget.cache_dir),
        preprocessing=budget.preprocessing,
        model=UNetConfig(widths=budget.widths, out_channels=len(LANDMARKS)),
        loss=LossConfig(name=run.loss, variant=run.variant),
        grid=GridConfig(sigma_mm=(run.sigma_mm,), lam=(run.lam,)),
        crop=CropConfig(size_zyx=budget.crop_zyx, margin_vox=budget.margin_vox),
        optim=OptimConfig(
            lr=budget.lr,
            batch_size=budget.batch_size,
            epochs=max(1, steps // budget.eval_every),
            steps_per_epoch=budget.eval_every,
            plateau_patience=budget.plateau_patience,
        ),
        cv=CVConfig(test_fraction=0.0, folds=2, train_folds=(0,)),
    )


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ExperimentData:
    """Training, validation and held-out test cases of a budget (model grid)."""

    train: list[Case]
    val: list[Case]
    test: list[Case]


_DATA: dict[str, ExperimentData] = {}


def load_data(budget: Budget, progress: bool = True) -> ExperimentData:
    """The budget's cases, loaded once per process: the training cohort split into
    training and ``val_cases`` validation cases (fixed, not per run), and the test set."""
    from glipcore.phantom_cases import phantom_cases

    memo = budget.model_dump_json(include={"train", "val_cases", "test", "preprocessing"})
    memo += str(budget.cache_dir)
    if memo not in _DATA:
        cohort, _ = phantom_cases(budget.train, budget.preprocessing, budget.cache_dir, progress)
        cohort = sorted(cohort, key=lambda c: c.case_id)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(cohort))
        val = [cohort[i] for i in sorted(order[: budget.val_cases])]
        train = [cohort[i] for i in sorted(order[budget.val_cases :])]
        test = load_test_set(budget.test, budget.preprocessing, budget.cache_dir, progress)
        overlap = {c.case_id for c in test} & {c.case_id for c in cohort}
        if overlap:
            raise ValueError(f"test cases also in the training cohort: {sorted(overlap)[:3]}")
        _DATA[memo] = ExperimentData(train, val, test)
    return _DATA[memo]


# ---------------------------------------------------------------------------- scoring


def score_cases(
    models: Sequence[torch.nn.Module], cases: Sequence[Case], device: torch.device
) -> list[dict[str, Any]]:
    """One row per case: every hinge point's error (sub-voxel and argmax) and position,
    plane distance (eq. 9) and angle, peak sharpness, closest pair, collapsed, failed."""
    sharp: list[np.ndarray] = []
    refined, argmax = predict_cases(models, cases, device, sharpness=sharp)
    return case_rows(cases, refined, argmax, np.stack(sharp))


def case_rows(
    cases: Sequence[Case],
    refined: NDArray[np.float64],
    argmax: NDArray[np.float64],
    sharpness: NDArray[np.float64] | None = None,
) -> list[dict[str, Any]]:
    """The rows of :func:`score_cases` from predictions (N, 3, 3) in LPS mm."""
    rows = []
    for n, case in enumerate(cases):
        truth = case.points(LANDMARKS)
        err = euclidean_errors(refined[n], truth)
        err_arg = euclidean_errors(argmax[n], truth)
        dist, angle = plane_errors(refined[n], truth)
        pair = min(
            float(np.linalg.norm(refined[n][a] - refined[n][b]))
            for a, b in ((0, 1), (0, 2), (1, 2))
        )
        sh = sharpness[n] if sharpness is not None else np.full(len(LANDMARKS), np.inf)
        collapsed = pair < COLLAPSE_MM or bool(np.min(sh) < FLAT_SHARPNESS)
        row: dict[str, Any] = {"case_id": case.case_id, "quality": case.quality}
        for i, name in enumerate(LANDMARKS):
            row[f"{name}_mm"] = float(err[i])
        for i, name in enumerate(LANDMARKS):
            row[f"{name}_argmax_mm"] = float(err_arg[i])
        row["plane_mm"] = dist
        row["angle_deg"] = angle
        row["closest_pair_mm"] = pair
        for i, name in enumerate(LANDMARKS):
            row[f"{name}_sharpness"] = float(sh[i])
        row["collapsed"] = collapsed
        row["failed"] = collapsed or bool(np.isnan(dist))
        for i, name in enumerate(LANDMARKS):
            for k, ax in enumerate("xyz"):
                row[f"{name}_{ax}"] = float(refined[n][i][k])
        rows.append(row)
    return rows


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians, worst, plane metrics, SDR and failure counts of :func:`case_rows` rows."""
    err = np.array([[r[f"{n}_mm"] for n in LANDMARKS] for r in rows], dtype=np.float64)
    arg = np.array([[r[f"{n}_argmax_mm"] for n in LANDMARKS] for r in rows], dtype=np.float64)
    plane = np.array([r["plane_mm"] for r in rows], dtype=np.float64)
    angle = np.array([r["angle_deg"] for r in rows], dtype=np.float64)
    return {
        "cases": len(rows),
        "median_mm": float(np.median(err)),
        "mean_mm": float(np.mean(err)),
        "worst_mm": float(np.max(err)),
        "median_argmax_mm": float(np.median(arg)),
        "median_per_landmark_mm": {n: float(np.median(err[:, i])) for i, n in enumerate(LANDMARKS)},
        "plane_median_mm": _nanmedian(plane),
        "plane_worst_mm": _nanmax(plane),
        "angle_median_deg": _nanmedian(angle),
        "angle_worst_deg": _nanmax(angle),
        "sdr": {f"{t:g}": float(np.mean(err < t)) for t in SDR_THRESHOLDS_MM},
        "failed": int(sum(bool(r["failed"]) for r in rows)),
        "collapsed": int(sum(bool(r["collapsed"]) for r in rows)),
    }


def _nanmedian(v: NDArray[np.float64]) -> float | None:
    return float(np.nanmedian(v)) if np.isfinite(v).any() else None


def _nanmax(v: NDArray[np.float64]) -> float | None:
    return float(np.nanmax(v)) if np.isfinite(v).any() else None


# ---------------------------------------------------------------------------- running


@contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Log ``glipcore.experiment`` messages to ``path`` (appending) while inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def curve_rows(history: Sequence[dict[str, float]], eval_every: int) -> list[dict[str, Any]]:
    """train_fold's per-epoch history as a learning curve by step."""
    return [{"step": int(h["epoch"]) * eval_every, **h} for h in history]


def train_run(
    run: ResolvedRun,
    key: str,
    budget: Budget,
    steps: int,
    data: ExperimentData,
    *,
    progress: bool = True,
) -> tuple[torch.nn.Module, list[dict[str, float]], float]:
    """Train (or resume, or just reload when finished) the run's model in its checkpoint
    folder; returns the best model (eval mode), the history and the training seconds."""
    out = budget.runs_dir / f"{run.name}-{key}"
    cfg = train_config(run, budget, steps, out)
    val = data.test if run.curve_on == "test" else data.val
    t0 = time.perf_counter()
    result = train_fold(
        cfg,
        data.train,
        val,
        sigma_mm=run.sigma_mm,
        lam=run.lam,
        fold=0,
        out_dir=out / "fold0",
        resume=True,
        progress=progress,
        on_epoch=lambda row: log.info(
            "%s step %d: loss %.4f, val median %.2f mm, %.2f steps/s",
            run.name,
            int(row["epoch"]) * budget.eval_every,
            row["loss"],
            row["val_median_mm"],
            row["steps_per_s"],
        ),
    )
    model = build_unet(cfg.model)
    model.load_state_dict(result.best_state)
    return model.eval(), result.history, time.perf_counter() - t0


def execute(
    run: ResolvedRun,
    key: str,
    settings: dict[str, Any],
    budget: Budget,
    steps: int,
    store: Store,
    *,
    progress: bool = True,
) -> Path:
    """Run a first-stage run end to end and write its results; returns their folder."""
    from glipcore.phantom import GENERATOR_VERSION
    from glipcore.predict import pick_device

    out = budget.runs_dir / f"{run.name}-{key}"
    with log_file(out / "run.log"):
        log.info("start %s (%s): %s", run.name, key, settings)
        data = load_data(budget, progress)
        model, history, train_s = train_run(run, key, budget, steps, data, progress=progress)
        device = pick_device(budget.device)
        t0 = time.perf_counter()
        rows = score_cases([model.to(device)], data.test, device)
        test_s = time.perf_counter() - t0
        best = min(history, key=lambda h: h["val_median_mm"])
        summary: dict[str, Any] = {
            "name": run.name,
            "key": key,
            "label": run.label,
            "kind": "first-stage",
            "budget": budget.name,
            "settings": settings,
            "generator_version": GENERATOR_VERSION,
            "best_step": int(best["epoch"]) * budget.eval_every,
            "steps": steps,
            "test": summarize_rows(rows),
            "train_s": round(train_s, 1),
            "test_s": round(test_s, 1),
            "cpu_s_per_step": _per_step(history),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "glipcore": glipcore.__version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        folder = store.write(run.name, key, summary, rows, curve_rows(history, budget.eval_every))
        log.info(
            "done %s: test median %.2f mm -> %s", run.name, summary["test"]["median_mm"], folder
        )
    return folder


def _per_step(history: Sequence[dict[str, float]]) -> float | None:
    t = [h["train_s"] for h in history]
    n = [h["train_s"] * h["steps_per_s"] for h in history]
    return round(sum(t) / sum(n), 4) if history and sum(n) > 0 else None


def tiny_step(
    budget: Budget, run: ResolvedRun, crop_zyx: tuple[int, int, int] = (16, 32, 32)
) -> float:
    """Build a run's training configuration under ``budget`` and take one optimiser step
    on CPU with the budget's network on a small random crop (a check that a budget which
    cannot run here, such as ``paper``, is well formed); returns the loss."""
    from glipcore.heatmap import gaussian_heatmaps
    from glipcore.losses import make_loss

    steps = budget.steps if isinstance(budget.steps, int) else budget.max_steps
    cfg = train_config(run, budget, steps, budget.runs_dir / "tiny-step")
    torch.manual_seed(0)
    model = build_unet(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = make_loss(cfg.loss.name, lam=run.lam, variant=cfg.loss.variant)
    x = torch.rand((1, 1, *crop_zyx))
    affine = np.diag([1.6, 1.6, 1.6, 1.0])
    centre = (np.array(crop_zyx[::-1], dtype=np.float64) - 1) / 2 * 1.6
    points = centre + np.array([[-5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    h = gaussian_heatmaps(crop_zyx, affine, points, run.sigma_mm)[None]
    loss = loss_fn(model(x).float(), h)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())
