"""Running a plan: the next pending run, again and again, each under a lock file.

Resumable: a killed run continues from its last checkpoint when started again, and a run
whose results exist is never run again (its key is in the store).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from glipcore.experiment.budget import Budget
from glipcore.experiment.keys import code_hash
from glipcore.experiment.plan import Plan, PlannedRun, lock_path, make_plan
from glipcore.experiment.runner import execute
from glipcore.experiment.spec import BEST_BASELINE, ExperimentSpec
from glipcore.experiment.stage_two import execute_stage_two
from glipcore.experiment.store import Store


def with_dependencies(
    experiments: Sequence[ExperimentSpec], only: Sequence[str], budget: Budget
) -> list[str]:
    """The experiments in ``only`` plus what they wait for: the pilot (for a ``pilot``
    budget) and the loss comparison (for runs of the best baseline)."""
    names = {e.name for e in experiments}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; known: {', '.join(sorted(names))}")
    out = list(only)
    chosen = [e for e in experiments if e.name in only]
    if budget.steps == "pilot":
        out += [e.name for e in experiments if e.kind == "pilot"]
    if any(r.loss == BEST_BASELINE for e in chosen for r in e.runs):
        out += [e.name for e in experiments if e.kind == "losses"]
    return list(dict.fromkeys(out))


def run_one(p: PlannedRun, budget: Budget, store: Store, progress: bool = True) -> None:
    """Execute one pending planned run under its lock file."""
    if p.run is None or p.key is None or p.settings is None or p.steps is None:
        raise ValueError(f"{p.name} is not resolved yet: {p.reason}")
    lock = lock_path(budget, p.name, p.key)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
        if p.stage == "first":
            execute(p.run, p.key, p.settings, budget, p.steps, store, progress=progress)
        else:
            if p.first_key is None:
                raise ValueError(f"{p.name}: no first-stage key")
            execute_stage_two(
                p.run, p.first_key, p.key, p.settings, budget, p.steps, store, progress=progress
            )
    finally:
        lock.unlink(missing_ok=True)


def run_plan(
    budget: Budget,
    experiments: Sequence[ExperimentSpec],
    store: Store,
    *,
    only: Sequence[str] | None = None,
    progress: bool = True,
    max_runs: int | None = None,
    code: str | None = None,
    on_start: Callable[[PlannedRun, Plan], None] | None = None,
) -> list[str]:
    """Run pending runs until none is left (or ``max_runs``); returns their names.

    ``code`` (default: hashed now) should be hashed when the process starts: the process
    runs the code it imported then, whatever happens to the files later."""
    code = code or code_hash()
    wanted = with_dependencies(experiments, only, budget) if only else None
    done: list[str] = []
    while max_runs is None or len(done) < max_runs:
        plan = make_plan(budget, experiments, store, code)
        todo = plan.runnable(wanted)
        if not todo:
            break
        if on_start:
            on_start(todo[0], plan)
        run_one(todo[0], budget, store, progress)
        done.append(todo[0].name)
    return done
