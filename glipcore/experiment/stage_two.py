"""A second-stage run on top of a first-stage run (paper Fig. 9-10).

It needs the first-stage model: reloaded from its checkpoint folder (``runs/experiments``),
or trained again when only the committed results exist (a fresh machine). The first-stage
model predicts the training, validation and test cases; patches around those predictions
train and score the local network (:mod:`glipcore.second_stage`).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glipcore import LANDMARKS
from glipcore.experiment.budget import Budget
from glipcore.experiment.runner import load_data, log, log_file, train_run
from glipcore.experiment.spec import ResolvedRun
from glipcore.experiment.store import Store
from glipcore.metrics import euclidean_errors
from glipcore.second_stage import (
    StageTwoConfig,
    make_patches,
    predict_patches,
    sdr,
    train_stage_two,
    training_centres,
)
from glipcore.train import predict_cases


def stage_two_config(run: ResolvedRun, budget: Budget) -> StageTwoConfig:
    """The local network's settings: the budget's patch and training sizes, the first
    stage's loss, penalty, sigma and seed."""
    s = budget.stage2
    return StageTwoConfig(
        patch_vox=s.patch_vox,
        disturbance_vox=s.disturbance_vox,
        spacing_mm=s.spacing_mm,
        widths=s.widths,
        loss=run.loss,
        variant=run.variant,
        sigma_mm=run.sigma_mm,
        lam=run.lam,
        steps=s.steps,
        eval_every=s.eval_every,
        batch_size=s.batch_size,
        lr=s.lr,
        seed=run.seed,
    )


def stage_two_settings(run: ResolvedRun, first_key: str, budget: Budget) -> dict[str, Any]:
    """What determines a second-stage result (hashed into its key)."""
    return {
        "first_stage": first_key,
        "stage2": stage_two_config(run, budget).model_dump(mode="json"),
        "train_cases": budget.stage2.train_cases,
        "val_cases": budget.stage2.val_cases,
    }


def stage_two_name(run: ResolvedRun) -> str:
    return f"stage2-{run.name}"


def execute_stage_two(
    run: ResolvedRun,
    first_key: str,
    key: str,
    settings: dict[str, Any],
    budget: Budget,
    steps: int,
    store: Store,
    *,
    progress: bool = True,
) -> Path:
    """Train and score the second stage of first-stage run ``first_key``; write results."""
    from glipcore.phantom import GENERATOR_VERSION
    from glipcore.predict import pick_device

    name = stage_two_name(run)
    out = budget.runs_dir / f"{name}-{key}"
    with log_file(out / "run.log"):
        log.info("start %s (%s) on first stage %s", name, key, first_key)
        t0 = time.perf_counter()
        data = load_data(budget, progress)
        first, _, _ = train_run(run, first_key, budget, steps, data, progress=progress)
        device = pick_device(budget.device)
        first = first.to(device)
        cfg = stage_two_config(run, budget)
        train_cases = data.train[: budget.stage2.train_cases]
        val_cases = data.val[: budget.stage2.val_cases]
        pred_tr, _ = predict_cases([first], train_cases, device)
        pred_va, _ = predict_cases([first], val_cases, device)
        pred_te, _ = predict_cases([first], data.test, device)
        truth_tr = np.stack([c.points(LANDMARKS) for c in train_cases])
        centres = training_centres(truth_tr, pred_tr, cfg.reach_mm)
        cache = budget.cache_dir / "patches"
        prep = budget.preprocessing
        args = (cfg.spacing_mm, prep, cache, progress)
        tr = make_patches(train_cases, centres, cfg.region_vox, *args)
        va = make_patches(val_cases, pred_va, cfg.patch_vox, *args)
        te = make_patches(data.test, pred_te, cfg.patch_vox, *args)
        result = train_stage_two(cfg, tr, va, out / "stage2", device, progress)
        second = predict_patches(result.model, te, cfg, device).reshape(len(data.test), -1, 3)
        truth = np.stack([c.points(LANDMARKS) for c in data.test])
        e1, e2 = euclidean_errors(pred_te, truth), euclidean_errors(second, truth)
        rows: list[dict[str, Any]] = []
        for n, case in enumerate(data.test):
            row: dict[str, Any] = {"case_id": case.case_id, "quality": case.quality}
            row.update({f"first_{m}_mm": float(e1[n, i]) for i, m in enumerate(LANDMARKS)})
            row.update({f"second_{m}_mm": float(e2[n, i]) for i, m in enumerate(LANDMARKS)})
            for i, m in enumerate(LANDMARKS):
                row.update(
                    {f"second_{m}_{ax}": float(second[n, i, k]) for k, ax in enumerate("xyz")}
                )
            rows.append(row)
        summary: dict[str, Any] = {
            "name": name,
            "key": key,
            "label": run.label,
            "kind": "second-stage",
            "first_stage_key": first_key,
            "budget": budget.name,
            "settings": settings,
            "generator_version": GENERATOR_VERSION,
            "test": {
                "cases": len(rows),
                "first_median_mm": float(np.median(e1)),
                "second_median_mm": float(np.median(e2)),
                "first_worst_mm": float(np.max(e1)),
                "second_worst_mm": float(np.max(e2)),
                "median_mm": float(np.median(e2)),
                "first_sdr": sdr(e1),
                "second_sdr": sdr(e2),
            },
            "train_s": round(time.perf_counter() - t0, 1),
            "test_s": 0.0,
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        folder = store.write(name, key, summary, rows, result.history)
        log.info(
            "done %s: first %.2f mm -> second %.2f mm",
            name,
            summary["test"]["first_median_mm"],
            summary["test"]["second_median_mm"],
        )
    return folder
