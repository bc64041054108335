"""``dicomnode retrain``: annotated archived studies in, a gated candidate model out.

One run, under the retrain lease (one at a time) and within a wall-time budget (dataset
building, training and evaluation together):

1. the dataset: the newest annotation of every annotated study with its CT, split into
   training and held-out studies by a stable hash of the StudyInstanceUID;
2. a candidate trained by ``glip train`` in a subprocess (fine-tuning the active model by
   default), stopped at the training deadline with its best checkpoint;
3. candidate and active model predicted on the same held-out studies and on the fixed
   phantom reference set; the gate decides (:mod:`dicomnode.learn.gate`);
4. the candidate registered with its parent, decision, reasons, comparison and training
   record; promoted when it passed and ``retrain.promote`` is ``auto``.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

import dicomnode
from dicomnode.config import NodeConfig
from dicomnode.db.models import Event, utcnow
from dicomnode.db.session import session_factory, session_scope
from dicomnode.learn.compare import CaseErrors, compare, predict_errors, scores_of
from dicomnode.learn.gate import Decision, GateInput, Scores, decide
from dicomnode.learn.registry import promote, register_bundle, resolve_bundle
from dicomnode.learn.retrain_dataset import (
    RetrainDataset,
    build_dataset,
    check_landmark_coverage,
    phantom_rows,
    prune_image_cache,
)
from dicomnode.learn.retrain_lease import Lease, acquire
from dicomnode.learn.retrain_training import run_training, train_config
from glipcore.manifest import read_manifest as read_rows

log = logging.getLogger("dicomnode.retrain")

EVALUATION_SHARE = 0.2
"""Share of the budget kept for evaluating both models after training."""

NO_SCORES = Scores(0, math.nan, math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class RetrainOptions:
    """Command-line choices that override ``retrain`` configuration keys."""

    dry_run: bool = False
    budget_min: float | None = None
    from_scratch: bool = False
    threads: int | None = None


@dataclass
class RetrainOutcome:
    """What a retrain did."""

    dataset: RetrainDataset
    run_dir: Path
    candidate: str | None = None
    parent: str | None = None
    decision: Decision | None = None
    promoted: bool = False
    stopped_at_deadline: bool = False
    wall_s: float = 0.0


def retrain_root(cfg: NodeConfig) -> Path:
    """Where retrains keep their runs and the reference set (``retrain.dir``)."""
    return cfg.retrain.dir if cfg.retrain.dir is not None else cfg.var_dir / "retrain"


def image_cache_dir(cfg: NodeConfig) -> Path:
    """The exported images of annotated studies, kept across retrains and named by their
    series' content (SOP Instance UIDs) and the code version."""
    return retrain_root(cfg) / "image-cache"


def grid_cache_dir(cfg: NodeConfig) -> Path:
    """Model-grid volumes of the cached images (keyed by file and preprocessing), kept
    across retrains: an unchanged study is neither exported nor resampled again."""
    return retrain_root(cfg) / "grid-cache"


def code_version() -> dict[str, str]:
    """Versions of dicomnode and glipcore, and the git commit when run from a checkout."""
    import glipcore

    out = {"dicomnode": dicomnode.__version__, "glipcore": glipcore.__version__}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(dicomnode.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        out["git"] = head.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class _Stages:
    """Renews the lease with the current stage; logs and reports a stage that changed."""

    def __init__(self, lease: Lease, report: Callable[[str], None]) -> None:
        self.lease = lease
        self.report = report
        self.last = ""

    def __call__(self, message: str) -> None:
        if message != self.last:
            log.info("%s", message)
            self.report(message)
            self.last = message
        self.lease.renew(message)


def _evaluate(
    cfg: NodeConfig, candidate: Path, active: Path, dataset: RetrainDataset
) -> tuple[GateInput, dict[str, Any]]:
    rc = cfg.retrain
    threads = rc.threads
    root = retrain_root(cfg)
    ref_rows = phantom_rows(
        root / "reference" / f"seed{rc.reference_seed}", rc.reference_seed, rc.reference_cases
    )
    ref_cache = root / "reference" / "cache"
    ref_c = predict_errors(candidate, ref_rows, ref_cache, threads)
    ref_a = predict_errors(active, ref_rows, ref_cache, threads)
    table: dict[str, Any] = {"reference": compare(ref_c, ref_a, resamples=rc.bootstrap)}
    hold_c: CaseErrors | None = None
    hold_a: CaseErrors | None = None
    if dataset.holdout_rows:
        cache = grid_cache_dir(cfg)
        hold_c = predict_errors(candidate, dataset.holdout_rows, cache, threads)
        hold_a = predict_errors(active, dataset.holdout_rows, cache, threads)
        table["holdout"] = compare(hold_c, hold_a, resamples=rc.bootstrap)
    gate_in = GateInput(
        holdout_candidate=scores_of(hold_c.errors) if hold_c else NO_SCORES,
        holdout_active=scores_of(hold_a.errors) if hold_a else NO_SCORES,
        reference_candidate=scores_of(ref_c.errors),
        reference_active=scores_of(ref_a.errors),
    )
    return gate_in, table


def _record(
    engine: Engine,
    cfg: NodeConfig,
    bundle_dir: Path,
    parent: str,
    decision: Decision,
    comparison: dict[str, Any],
    training: dict[str, Any],
) -> tuple[str, bool]:
    """Register the candidate with its decision; promote it when allowed."""
    with session_scope(session_factory(engine)) as s:
        mv = register_bundle(s, bundle_dir)
        mv.parent_version = parent
        mv.decision = decision.decision
        mv.decision_reasons = decision.reasons()
        mv.comparison = comparison
        mv.training = training
        promoted = decision.passed and cfg.retrain.promote == "auto"
        s.add(
            Event(
                at=utcnow(),
                kind="retrain_decision",
                detail=f"{mv.version}: {decision.decision}"
                + ("; promoted" if promoted else "")
                + f" (parent {parent})",
            )
        )
        if promoted:
            promote(s, mv.version)
        return mv.version, promoted


def run_retrain(
    cfg: NodeConfig,
    engine: Engine,
    options: RetrainOptions = RetrainOptions(),
    report: Callable[[str], None] = lambda _m: None,
) -> RetrainOutcome:
    """One retrain (see the module docstring). Raises
    :class:`~dicomnode.learn.retrain_lease.RetrainBusyError` when another runs,
    :class:`~dicomnode.learn.retrain_dataset.NoAnnotationsError` without usable
    annotations and :class:`~dicomnode.learn.retrain_training.TrainingError` when
    training fails."""
    rc = cfg.retrain
    t0 = time.monotonic()
    budget_s = 60.0 * (options.budget_min if options.budget_min is not None else rc.budget_min)
    deadline = t0 + budget_s
    threads = options.threads or rc.threads
    run_dir = retrain_root(cfg) / f"{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    lease = acquire(engine, rc.lease_s)
    try:
        stage = _Stages(lease, report)
        stage("building the dataset from the annotated archived studies")
        dataset = build_dataset(
            engine,
            cfg.archive_dir,
            run_dir / "dataset",
            holdout_fraction=rc.holdout_fraction,
            holdout_min=rc.holdout_min,
            phantom_cases=rc.phantom_cases,
            phantom_dir=retrain_root(cfg) / "phantoms",
            image_cache=image_cache_dir(cfg),
        )
        used = {Path(r.path).resolve() for r in read_rows(run_dir / "dataset" / "manifest.csv")}
        if prune_image_cache(image_cache_dir(cfg), used):
            # model-grid volumes are keyed by file, not by name: drop them with any image
            # that went (rare: a changed series or a removed study); rebuilt when needed
            shutil.rmtree(grid_cache_dir(cfg), ignore_errors=True)
        outcome = RetrainOutcome(dataset, run_dir)
        stage(
            f"dataset: {len(dataset.train_annotations)} training and "
            f"{len(dataset.holdout_annotations)} held-out studies"
            + (f", {dataset.phantom_cases} phantom cases" if dataset.phantom_cases else "")
            + (f"; {len(dataset.skipped)} annotations skipped" if dataset.skipped else "")
            + (f"; {dataset.cache_hits} images from the cache" if dataset.cache_hits else "")
        )
        with session_scope(session_factory(engine)) as s:
            active_dir = resolve_bundle(s, cfg)
        from glipcore.bundle import read_manifest

        active_manifest, parent = read_manifest(active_dir)
        check_landmark_coverage(read_rows(dataset.train_manifest), active_manifest.landmarks)
        if options.dry_run:
            outcome.wall_s = time.monotonic() - t0
            return outcome
        fine_tune = rc.fine_tune and not options.from_scratch
        base = yaml.safe_load(rc.train_config.read_text()) if rc.train_config else None
        tcfg = train_config(
            active_dir,
            base,
            train_manifest=dataset.train_manifest,
            train_cases=len(dataset.train_annotations) + dataset.phantom_cases,
            run_dir=run_dir,
            cache_dir=grid_cache_dir(cfg),
            threads=threads,
            fine_tune=fine_tune,
            budget_min=budget_s / 60.0,
        )
        stage(("fine-tuning " + parent) if fine_tune else "training from scratch")
        train_deadline = deadline - EVALUATION_SHARE * budget_s
        bundle_dir, stopped = run_training(tcfg, deadline=train_deadline, tick=stage)
        outcome.stopped_at_deadline = stopped
        stage("evaluating the candidate and the active model on the same cases")
        gate_in, table = _evaluate(cfg, bundle_dir, active_dir, dataset)
        decision = decide(gate_in, rc.gate)
        table["active_version"] = parent
        table["rules"] = [vars(r) for r in decision.rules]
        outcome.wall_s = time.monotonic() - t0
        training = {
            "config": tcfg,
            "dataset": dataset.summary(),
            "code_version": code_version(),
            "fine_tuned": fine_tune,
            "budget_min": budget_s / 60.0,
            "threads": threads,
            "stopped_at_deadline": stopped,
            "wall_s": round(outcome.wall_s, 1),
        }
        outcome.candidate, outcome.promoted = _record(
            engine, cfg, bundle_dir, parent, decision, table, training
        )
        outcome.parent, outcome.decision = parent, decision
        stage(
            f"candidate {outcome.candidate}: {decision.decision}"
            + ("; promoted" if outcome.promoted else "")
        )
        return outcome
    finally:
        lease.release()
        shutil.rmtree(run_dir / "dataset" / "images", ignore_errors=True)  # kept: image cache


__all__ = [
    "EVALUATION_SHARE",
    "RetrainOptions",
    "RetrainOutcome",
    "code_version",
    "grid_cache_dir",
    "image_cache_dir",
    "retrain_root",
    "run_retrain",
]
