"""How much training a plan still holds, and how long that takes at the pace measured so far.

The pace of a stage is the median over its finished runs of (training + test seconds) /
steps: wall time on the machine that ran them, evaluations included. A stage with no
finished run borrows the other stage's pace; with none at all there is no time estimate.
Runs still waiting for the pilot are counted at the step count known now (the pilot's
answer, else the budget's ``max_steps``), so the estimate can only shrink when the pilot
picks fewer steps.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from glipcore.experiment.plan import Plan, PlannedRun
from glipcore.experiment.store import RunResult, Store


@dataclass(frozen=True)
class Remaining:
    """The runs not done yet, their steps, and the estimated wall seconds (None: no pace)."""

    runs: int
    steps: int
    seconds: float | None
    pace_s_per_step: dict[str, float]
    provisional: bool


def _steps(p: PlannedRun, plan: Plan) -> int:
    if p.steps is not None:
        return p.steps
    if p.stage == "second":
        return plan.budget.stage2.steps
    return plan.pilot_steps or plan.budget.max_steps


def pace(results: Iterable[RunResult]) -> dict[str, float]:
    """Median wall seconds per step of finished runs, by stage (``first``, ``second``)."""
    by_stage: dict[str, list[float]] = {"first": [], "second": []}
    for r in results:
        s = r.summary
        steps = s.get("steps")
        if not steps:
            continue
        stage = "second" if s.get("kind") == "second-stage" else "first"
        by_stage[stage].append((float(s.get("train_s", 0.0)) + float(s.get("test_s", 0.0))) / steps)
    return {k: statistics.median(v) for k, v in by_stage.items() if v}


def remaining(plan: Plan, store: Store) -> Remaining:
    """What is left of ``plan`` (each run name once) and its time at the measured pace."""
    todo: dict[str, PlannedRun] = {}
    for p in plan.runs:
        if p.state != "done":
            todo.setdefault(p.name, p)
    done = (store.load(p.key) for p in plan.runs if p.state == "done" and p.key)
    rates = pace(r for r in done if r is not None)
    steps = {name: _steps(p, plan) for name, p in todo.items()}
    fallback = next(iter(rates.values()), 0.0)  # a stage not timed yet: the other's pace
    seconds = (
        sum(n * rates.get(todo[name].stage, fallback) for name, n in steps.items())
        if rates
        else None
    )
    provisional = plan.budget.steps == "pilot" and plan.pilot_steps is None
    return Remaining(len(todo), sum(steps.values()), seconds, rates, provisional)


def describe(r: Remaining) -> str:
    """One line for ``glip experiment status``."""
    if r.runs == 0:
        return "nothing left to run"
    text = f"left: {r.runs} runs, {r.steps} training steps"
    if r.seconds is None:
        return text + " (no finished run yet to time them by)"
    rates = ", ".join(f"{k} stage {v:.2f} s/step" for k, v in sorted(r.pace_s_per_step.items()))
    hours = r.seconds / 3600
    text += f"; about {hours:.1f} h at the finished runs' pace ({rates}, evaluations included)"
    if r.provisional:
        text += "; runs waiting for the pilot are counted at max_steps until it picks fewer"
    return text


__all__ = ["Remaining", "describe", "pace", "remaining"]
