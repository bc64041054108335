"""``glip experiment``: run the paper's experiments on phantoms and write their report."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from glipcore.experiment.budget import Budget
    from glipcore.experiment.spec import ExperimentSpec
    from glipcore.experiment.store import Store

DEFAULT_BUDGETS = Path("configs/experiments/budgets.yaml")
DEFAULT_EXPERIMENTS_DIR = Path("configs/experiments")
DEFAULT_REPORT_DIR = Path("reports/paper-on-phantoms")
DEFAULT_SHIPPED_BUNDLE = Path("models/phantom-glip/bundle.json")

console = Console(stderr=True)
app = typer.Typer(
    name="experiment",
    help="The paper's experiments on phantoms: runs, status and the report.",
    no_args_is_help=True,
    add_completion=False,
)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


BudgetOpt = Annotated[
    str, typer.Option(help="Budget preset: cpu or paper (a name in the --budgets file).")
]
DeviceOpt = Annotated[
    Device | None, typer.Option(help="Override the budget's device (auto: CUDA when present).")
]
BudgetsFile = Annotated[Path, typer.Option("--budgets", help="Budget presets YAML.")]
ExperimentsDir = Annotated[Path, typer.Option("--experiments", help="Experiment YAML folder.")]
ReportDir = Annotated[Path, typer.Option("--report-dir", help="Report and committed results.")]


def _fail(message: str, hint: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}\n[dim]hint: {hint}[/]")
    return typer.Exit(code=2)


def _budget(name: str, path: Path, device: Device | None) -> Budget:
    from glipcore.experiment.budget import load_budget

    try:
        budget = load_budget(name, path)
    except (OSError, ValueError) as e:
        raise _fail(f"{path}: {e}", "see configs/experiments/budgets.yaml") from e
    if device is not None:
        budget = budget.model_copy(update={"device": device.value})
    return budget


def _experiments(folder: Path) -> list[ExperimentSpec]:
    from glipcore.experiment.spec import load_experiments

    try:
        return load_experiments(folder)
    except (OSError, ValueError) as e:
        raise _fail(str(e), "see configs/experiments/*.yaml") from e


def _status_table(plan: object) -> Table:
    from glipcore.experiment.plan import Plan

    assert isinstance(plan, Plan)
    table = Table(title=f"experiment runs, budget {plan.budget.name}")
    for col in ("state", "run", "key", "steps", "experiments", "note"):
        table.add_column(col)
    colors = {"done": "green", "running": "yellow", "pending": "white", "waiting": "dim"}
    for r in plan.runs:
        table.add_row(
            f"[{colors[r.state]}]{r.state}[/]",
            r.name,
            r.key or "-",
            str(r.steps or "-"),
            ", ".join(r.experiments),
            r.reason,
        )
    return table


def _go(
    budget: Budget,
    experiments: list[ExperimentSpec],
    report_dir: Path,
    only: list[str] | None,
    dry_run: bool,
    report: bool,
) -> None:
    from glipcore.experiment.execute import run_plan, with_dependencies
    from glipcore.experiment.keys import code_hash
    from glipcore.experiment.plan import make_plan
    from glipcore.experiment.runner import log_file
    from glipcore.experiment.store import Store

    store = Store(report_dir)
    code = code_hash()  # the code this process imported: fixed for the whole invocation
    try:
        wanted = with_dependencies(experiments, only, budget) if only else None
    except ValueError as e:
        raise _fail(str(e), "glip experiment status lists the experiments") from e
    plan = make_plan(budget, experiments, store, code)
    console.print(_status_table(plan))
    console.print(f"steps per run: {plan.pilot_steps or 'from the pilot'} ({plan.pilot_note})")
    if dry_run:
        n = len(plan.runnable(wanted))
        console.print(f"dry run: {n} run(s) pending now; nothing started")
        return
    if budget.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _fail(
                f"budget {budget.name} runs on CUDA and this machine has no GPU",
                "use --budget cpu here, or --device cpu to force it (very slow)",
            )
    with log_file(budget.runs_dir / "experiment.log"):
        while True:
            done = run_plan(budget, experiments, store, only=only, max_runs=1, code=code)
            if not done:
                break
            console.print(f"[green]finished[/] {done[0]}")
            if report:
                _write_report(budget, experiments, store, code)
    if report:
        _write_report(budget, experiments, store, code)
    left = [r for r in make_plan(budget, experiments, store, code).runs if r.state != "done"]
    console.print(f"runs not done: {len(left)}")


def _write_report(
    budget: Budget,
    experiments: list[ExperimentSpec],
    store: Store,
    code: str | None = None,
    shipped: Path = DEFAULT_SHIPPED_BUNDLE,
) -> None:
    from glipcore.experiment.report import write_report

    path = write_report(budget, experiments, store, code, shipped)
    console.print(f"report: {path}")


@app.command()
def paper(
    budget: BudgetOpt = "cpu",
    device: DeviceOpt = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Only this experiment (repeatable), plus what it needs."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Show the plan; start nothing.")] = False,
    report: Annotated[bool, typer.Option(help="Rewrite the report after each run.")] = True,
    budgets: BudgetsFile = DEFAULT_BUDGETS,
    experiments: ExperimentsDir = DEFAULT_EXPERIMENTS_DIR,
    report_dir: ReportDir = DEFAULT_REPORT_DIR,
) -> None:
    """Run every experiment of the paper on phantoms (the pilot first), then the report.

    Resumable: a finished run (its results in the report folder) is never redone, an
    interrupted one continues from its last checkpoint under runs/.

    Example (background, 2 cores):

      nohup nice -n 10 glip experiment paper --budget cpu > runs/experiment-paper.log 2>&1 &
    """
    b = _budget(budget, budgets, device)
    _go(b, _experiments(experiments), report_dir, only, dry_run, report)


@app.command("run")
def run_config(
    config: Annotated[Path, typer.Argument(help="One experiment YAML file.")],
    budget: BudgetOpt = "cpu",
    device: DeviceOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Show the plan; start nothing.")] = False,
    budgets: BudgetsFile = DEFAULT_BUDGETS,
    experiments: ExperimentsDir = DEFAULT_EXPERIMENTS_DIR,
    report_dir: ReportDir = DEFAULT_REPORT_DIR,
) -> None:
    """Run one experiment file (and what it waits for: the pilot, the loss comparison)."""
    from glipcore.experiment.spec import load_experiment

    try:
        spec = load_experiment(config)
    except (OSError, ValueError) as e:
        raise _fail(f"{config}: {e}", "see configs/experiments/*.yaml") from e
    specs = [e for e in _experiments(experiments) if e.name != spec.name] + [spec]
    b = _budget(budget, budgets, device)
    _go(b, specs, report_dir, [spec.name], dry_run, report=True)


@app.command()
def status(
    budget: BudgetOpt = "cpu",
    budgets: BudgetsFile = DEFAULT_BUDGETS,
    experiments: ExperimentsDir = DEFAULT_EXPERIMENTS_DIR,
    report_dir: ReportDir = DEFAULT_REPORT_DIR,
) -> None:
    """Table of the runs: done, running, pending or waiting, with their keys, and what is
    left: runs, training steps and hours at the pace of the runs finished so far."""
    from glipcore.experiment.eta import describe, remaining
    from glipcore.experiment.plan import make_plan
    from glipcore.experiment.store import Store

    plan = make_plan(_budget(budget, budgets, None), _experiments(experiments), Store(report_dir))
    Console().print(_status_table(plan))
    counts = {
        s: sum(r.state == s for r in plan.runs) for s in ("done", "running", "pending", "waiting")
    }
    Console().print(", ".join(f"{n} {s}" for s, n in counts.items()))
    Console().print(describe(remaining(plan, Store(report_dir))))
    stale = Store(report_dir).keys() - {r.key for r in plan.runs if r.key}
    if stale:
        Console().print(
            f"{len(stale)} result folder(s) under {report_dir}/runs belong to no current run "
            "(another configuration, code or phantom version): never reused"
        )


@app.command()
def report(
    budget: BudgetOpt = "cpu",
    budgets: BudgetsFile = DEFAULT_BUDGETS,
    experiments: ExperimentsDir = DEFAULT_EXPERIMENTS_DIR,
    report_dir: ReportDir = DEFAULT_REPORT_DIR,
    shipped: Annotated[
        Path,
        typer.Option(
            help="The shipped model's bundle.json: the report tests one-setting changes "
            "against the loss settings it was trained with."
        ),
    ] = DEFAULT_SHIPPED_BUNDLE,
) -> None:
    """Write REPORT_DIR/README.md with figures and tables from the finished runs."""
    from glipcore.experiment.store import Store

    _write_report(
        _budget(budget, budgets, None),
        _experiments(experiments),
        Store(report_dir),
        shipped=shipped,
    )
