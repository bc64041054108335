"""Every experiment's runs, resolved against a budget and the results so far.

Two things are only known once earlier runs finish: the step count of a budget whose
``steps`` is ``pilot`` (the pilot's answer), and the best baseline (the loss comparison's
answer). Runs that need them wait; :func:`make_plan` is simply called again after each
finished run. Equal runs listed by several experiments are planned once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from glipcore.experiment.budget import Budget
from glipcore.experiment.keys import code_hash, run_key
from glipcore.experiment.runner import run_settings
from glipcore.experiment.spec import ExperimentSpec, ResolvedRun, RunSpec
from glipcore.experiment.stage_two import stage_two_name, stage_two_settings
from glipcore.experiment.store import RunResult, Store
from glipcore.losses import BASELINE_NAMES

State = Literal["done", "running", "pending", "waiting"]


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: first or second stage, its key once resolvable, its state."""

    experiments: tuple[str, ...]
    stage: Literal["first", "second"]
    spec: RunSpec
    run: ResolvedRun | None
    name: str
    key: str | None
    settings: dict[str, Any] | None
    steps: int | None
    state: State
    reason: str = ""
    first_key: str | None = None


@dataclass
class Plan:
    """The resolved runs of a budget, in execution order, and what was learnt so far."""

    budget: Budget
    experiments: list[ExperimentSpec]
    runs: list[PlannedRun]
    code: str
    generator: str
    pilot_steps: int | None
    pilot_note: str
    best_baseline: str | None
    notes: list[str] = field(default_factory=list)

    def runnable(self, only: Sequence[str] | None = None) -> list[PlannedRun]:
        """Pending runs (of the experiments in ``only``, with what they wait for)."""
        wanted = set(only) if only else None
        return [
            r
            for r in self.runs
            if r.state == "pending" and (wanted is None or wanted & set(r.experiments))
        ]

    def for_experiment(self, name: str) -> list[PlannedRun]:
        return [r for r in self.runs if name in r.experiments]


def lock_path(budget: Budget, name: str, key: str) -> Path:
    """The file that marks a run in progress (holds the process id)."""
    return budget.runs_dir / f"{name}-{key}" / "running.pid"


def _running(budget: Budget, name: str, key: str) -> bool:
    p = lock_path(budget, name, key)
    if not p.is_file():
        return False
    try:
        pid = int(p.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return pid != os.getpid()


def pilot_choice(results: Sequence[RunResult], target_mm: float, max_steps: int) -> tuple[int, str]:
    """The smallest checkpoint step at which every pilot seed's held-out median is at most
    ``target_mm`` (``max_steps`` when none is), with a sentence saying which."""
    curves = []
    for r in results:
        steps = r.curve_column("step")
        med = r.curve_column("val_median_mm")
        curves.append(dict(zip(steps.astype(int).tolist(), med.tolist(), strict=True)))
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    for s in common:
        worst = max(c[s] for c in curves)
        if worst <= target_mm:
            return s, (
                f"every pilot seed reached a held-out median <= {target_mm:g} mm at step {s} "
                f"(worst seed {worst:.2f} mm)"
            )
    best = min(common, key=lambda s: max(c[s] for c in curves)) if common else max_steps
    worst = max(c[best] for c in curves) if curves else float("nan")
    return max_steps, (
        f"no step up to {max_steps} brought every pilot seed to <= {target_mm:g} mm (best: "
        f"step {best}, worst seed {worst:.2f} mm); every run gets the cap, {max_steps} steps"
    )


def make_plan(
    budget: Budget,
    experiments: Sequence[ExperimentSpec],
    store: Store,
    code: str | None = None,
) -> Plan:
    """Resolve every experiment's runs (see the module docstring)."""
    from glipcore.phantom import GENERATOR_VERSION

    code = code or code_hash()
    gen = GENERATOR_VERSION
    planned: dict[str, PlannedRun] = {}
    order: list[str] = []

    def add(p: PlannedRun, ident: str) -> None:
        if ident in planned:
            old = planned[ident]
            merged = tuple(dict.fromkeys((*old.experiments, *p.experiments)))
            planned[ident] = PlannedRun(**{**old.__dict__, "experiments": merged})
        else:
            planned[ident] = p
            order.append(ident)

    def first(spec: RunSpec, exp: str, steps: int | None, best: str | None) -> PlannedRun:
        run = spec.resolve(best)
        if run is None:
            label = f"{spec.loss}-s{spec.sigma_mm:g}-seed{spec.seed}"
            return PlannedRun(
                (exp,),
                "first",
                spec,
                None,
                label,
                None,
                None,
                steps,
                "waiting",
                "waiting for the loss comparison (best baseline)",
            )
        if steps is None:
            return PlannedRun(
                (exp,),
                "first",
                spec,
                run,
                run.name,
                None,
                None,
                None,
                "waiting",
                "waiting for the pilot (step count)",
            )
        settings = run_settings(run, budget, steps)
        key = run_key(settings, gen, code)
        return PlannedRun(
            (exp,), "first", spec, run, run.name, key, settings, steps, _state(run.name, key)
        )

    def _state(name: str, key: str) -> State:
        if store.find(key) is not None:
            return "done"
        return "running" if _running(budget, name, key) else "pending"

    # the pilot first: it fixes the step count of a "pilot" budget
    pilot_steps: int | None = budget.steps if isinstance(budget.steps, int) else None
    pilot_note = f"fixed by the budget: {pilot_steps} steps" if pilot_steps else ""
    for exp in experiments:
        if exp.kind != "pilot":
            continue
        results = []
        for spec in exp.runs:
            p = first(
                spec.model_copy(update={"curve_on": "test"}), exp.name, budget.max_steps, None
            )
            add(p, _ident(p))
            if p.key and p.state == "done":
                res = store.load(p.key)
                if res is not None:
                    results.append(res)
        if pilot_steps is None:
            if results and len(results) == len(exp.runs):
                pilot_steps, pilot_note = pilot_choice(
                    results, budget.pilot_target_mm, budget.max_steps
                )
            else:
                pilot_note = f"pilot: {len(results)} of {len(exp.runs)} runs done"
    if budget.steps == "pilot" and not any(e.kind == "pilot" for e in experiments):
        pilot_steps, pilot_note = budget.max_steps, "no pilot experiment: the budget's max_steps"

    # the loss comparison fixes the best baseline
    best: str | None = None
    for exp in experiments:
        if exp.kind != "losses":
            continue
        scores: dict[str, float] = {}
        complete = True
        for spec in exp.runs:
            p = first(spec, exp.name, pilot_steps, None)
            add(p, _ident(p))
            if p.run is not None and p.run.loss in BASELINE_NAMES:
                res = store.load(p.key) if p.key else None
                if res is None:
                    complete = False
                else:
                    scores[p.run.loss] = float(res.summary["test"]["median_mm"])
        if complete and scores:
            best = min(scores, key=lambda k: scores[k])

    for exp in experiments:
        if exp.kind in ("pilot", "losses"):
            continue
        for spec in exp.runs:
            p = first(spec, exp.name, pilot_steps, best)
            add(p, _ident(p))
            if spec.second_stage:
                add(_second(p, exp.name, budget, store, gen, code, _running), "2:" + _ident(p))
    return Plan(
        budget,
        list(experiments),
        [planned[i] for i in order],
        code,
        gen,
        pilot_steps,
        pilot_note,
        best,
    )


def _ident(p: PlannedRun) -> str:
    """What makes two planned runs the same run."""
    if p.key is not None:
        return p.key
    return p.run.name if p.run is not None else p.spec.model_dump_json()


def _second(
    p: PlannedRun,
    exp: str,
    budget: Budget,
    store: Store,
    gen: str,
    code: str,
    running: Any,
) -> PlannedRun:
    if p.run is None or p.key is None:
        return PlannedRun(
            (exp,),
            "second",
            p.spec,
            p.run,
            f"stage2-{p.name}",
            None,
            None,
            p.steps,
            "waiting",
            p.reason,
        )
    name = stage_two_name(p.run)
    settings = stage_two_settings(p.run, p.key, budget)
    key = run_key(settings, gen, code)
    if store.find(key) is not None:
        state: State = "done"
    elif running(budget, name, key):
        state = "running"
    elif p.state != "done":
        return PlannedRun(
            (exp,),
            "second",
            p.spec,
            p.run,
            name,
            key,
            settings,
            p.steps,
            "waiting",
            f"waiting for its first stage {p.name}",
            p.key,
        )
    else:
        state = "pending"
    return PlannedRun(
        (exp,), "second", p.spec, p.run, name, key, settings, p.steps, state, "", p.key
    )


def estimate_s(plan: Plan, seconds_per_step: float) -> float:
    """Rough seconds left: pending and waiting first-stage runs times the step count."""
    steps = plan.pilot_steps or plan.budget.max_steps
    n = sum(1 for r in plan.runs if r.stage == "first" and r.state in ("pending", "waiting"))
    return float(np.round(n * steps * seconds_per_step))
