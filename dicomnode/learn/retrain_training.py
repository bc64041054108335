"""Training a retrain candidate: the generated ``glip train`` configuration and the
training subprocess, stopped at the deadline.

The configuration starts from ``retrain.train_config`` when given, else from the active
model's bundle (architecture, preprocessing, sigma, lambda, crop); the data is the
retrain's training manifest and, when fine-tuning, ``init_from`` is the active bundle.
Cross-validation trains one fold (the held-out studies are the test set, outside
training). Training runs as ``glip train`` in a subprocess; at the deadline it is stopped
and the bundle is written from the fold's best checkpoint so far.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("dicomnode.retrain")

MAX_EPOCHS = 10_000
"""Epochs of a budget-bound run: the deadline, not the count, ends it."""
STEPS_PER_EPOCH = 50
"""Steps between validations (checkpoints) of a budget-bound run of 20 minutes or more."""
MIN_STEPS_PER_EPOCH = 5


def steps_per_epoch(budget_min: float | None) -> int:
    """Steps between checkpoints: :data:`STEPS_PER_EPOCH` for 20 minutes or more, fewer
    for a short budget (2.5 per budget minute, at least :data:`MIN_STEPS_PER_EPOCH`), so
    that a short retrain on a busy CPU still reaches its first checkpoint."""
    if budget_min is None:
        return STEPS_PER_EPOCH
    return max(MIN_STEPS_PER_EPOCH, min(STEPS_PER_EPOCH, round(2.5 * budget_min)))


MAX_FOLDS = 5
STOP_GRACE_S = 10.0


class TrainingError(RuntimeError):
    """Training failed or produced no checkpoint before the deadline."""


def train_config(
    active_bundle: Path,
    base: dict[str, Any] | None,
    *,
    train_manifest: Path,
    train_cases: int,
    run_dir: Path,
    cache_dir: Path,
    threads: int,
    fine_tune: bool,
    budget_min: float | None = None,
) -> dict[str, Any]:
    """The ``glip train`` configuration (a mapping) of a retrain (checkpoints spaced for
    ``budget_min`` when it starts from the active bundle)."""
    from glipcore.bundle import read_manifest

    cfg: dict[str, Any]
    if base is not None:
        cfg = dict(base)
    else:
        manifest = read_manifest(active_bundle)[0]
        meta = manifest.metadata
        cfg = {
            "landmarks": list(manifest.landmarks),
            "preprocessing": manifest.preprocessing.model_dump(mode="json"),
            "model": manifest.model.model_dump(mode="json"),
            "loss": {"name": manifest.loss, "variant": meta.get("loss_variant", "code")},
            "grid": {"sigma_mm": [manifest.sigma_mm], "lam": [meta.get("lambda", 10.0)]},
            "optim": {"epochs": MAX_EPOCHS, "steps_per_epoch": steps_per_epoch(budget_min)},
        }
        if "crop_size_zyx" in meta:
            cfg["crop"] = {"size_zyx": meta["crop_size_zyx"]}
    folds = max(2, min(MAX_FOLDS, train_cases))
    cfg.update(
        name=str(cfg.get("name", "retrained")),
        out_dir=str(run_dir / "train"),
        bundle_dir=str(run_dir / "bundle"),
        device="cpu",
        threads=threads,
        data={"manifest": str(train_manifest), "cache_dir": str(cache_dir)},
        cv={**dict(cfg.get("cv") or {}), "test_fraction": 0.0, "folds": folds, "train_folds": [0]},
    )
    if fine_tune:
        cfg["init_from"] = str(active_bundle)
    else:
        cfg.pop("init_from", None)
    return cfg


def _command(config_file: Path, bundle_dir: Path) -> list[str]:
    glip = Path(sys.executable).with_name("glip")
    head = (
        [str(glip)]
        if glip.is_file()
        else [sys.executable, "-c", "from glipcore.cli import main; main()"]
    )
    return [*head, "train", "--config", str(config_file), "--bundle", str(bundle_dir)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_training(
    cfg: dict[str, Any],
    *,
    deadline: float,
    tick: Callable[[str], None],
    tick_s: float = 5.0,
) -> tuple[Path, bool]:
    """Run ``glip train`` on ``cfg`` until it ends or ``time.monotonic()`` passes
    ``deadline``; returns the bundle folder and whether the deadline stopped training.
    ``tick`` is called with a progress line every ``tick_s`` (it renews the lease)."""
    from glipcore.train import TrainConfig

    checked = TrainConfig.model_validate(cfg)
    out = Path(checked.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / "train.yaml"
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    bundle_dir = Path(cfg["bundle_dir"])
    log_file = out.parent / "train.log"
    with open(log_file, "wb") as sink:
        proc = subprocess.Popen(_command(config_file, bundle_dir), stdout=sink, stderr=sink)
        stopped = False
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                log.info("training budget spent: stopping and keeping the best checkpoint")
                _stop(proc)
                stopped = True
                break
            time.sleep(min(tick_s, max(0.1, deadline - time.monotonic())))
            tick(_progress(out))
    if not stopped and proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-2000:]
        raise TrainingError(f"glip train failed (exit {proc.returncode}):\n{tail}")
    if stopped:
        bundle_from_checkpoint(checked, out, bundle_dir)
    return bundle_dir, stopped


def _progress(out: Path) -> str:
    logs = sorted(out.glob("*/fold*/log.json"))
    if not logs:
        return "training: preparing the data"
    history = json.loads(logs[-1].read_text())
    last = history[-1]
    return (
        f"training: epoch {last['epoch']}, validation median {last['val_median_mm']:.2f} mm, "
        f"loss {last['loss']:.4f}"
    )


def bundle_from_checkpoint(cfg: Any, out: Path, bundle_dir: Path) -> Path:
    """Write a bundle from the best state in the (one) fold's ``last.pt``."""
    import torch

    from glipcore.bundle import save_bundle

    checkpoints = sorted(out.glob("sigma*-lambda*/fold*/last.pt"))
    if not checkpoints:
        raise TrainingError("the budget ended before the first epoch: no candidate")
    ck = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    if not ck.get("best_state"):
        raise TrainingError("the budget ended before the first validation: no candidate")
    return save_bundle(
        bundle_dir,
        name=cfg.name,
        landmarks=cfg.landmarks,
        model_cfg=cfg.model,
        preprocessing=cfg.preprocessing,
        sigma_mm=float(cfg.grid.sigma_mm[0]),
        fold_states=[ck["best_state"]],
        fold_metrics=[{"val_median_mm": float(ck["best"][0])}],
        trained_on="patients",
        loss=cfg.loss.name,
        metadata={
            "source": "manifest",
            "lambda": float(cfg.grid.lam[0]),
            "best_epoch": int(ck["best"][1]),
            "stopped_at_deadline": True,
        },
    )


__all__ = [
    "MAX_EPOCHS",
    "STEPS_PER_EPOCH",
    "TrainingError",
    "bundle_from_checkpoint",
    "run_training",
    "steps_per_epoch",
    "train_config",
]
