"""The reliability suite (issue 11): real processes, real SIGKILL, real peers.

Senders (dcmtk's storescu and pynetdicom SCUs) push phantom series into ``dicomnode
serve`` + ``dicomnode worker``, which deliver to an Orthanc keeping the first copy of each
SOP Instance UID; ``serve`` is SIGKILLed twice and the worker once at seeded random
moments and the PACS is down for a while; the same run without faults stands beside it.
Then the bad-input corpus goes to a fresh ``serve`` at its default limits. One table of
figures, each with its goal; the exit status is 1 when a goal is not met.

    python -m bench.chaos [--quick] [--seed 0] [--outage-s 120] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from bench.chaos_corpus import CorpusFigures, build_corpus, run_corpus
from bench.chaos_scenario import Faults, RunFigures, make_series, run_scenario
from bench.chaos_table import Row, all_met, corpus_rows, render, scenario_rows

app = typer.Typer(add_completion=False, help=(__doc__ or "").splitlines()[0])


@dataclass(frozen=True)
class Plan:
    """The size of a run: senders, series each, faults, and whether a fault-free
    reference run stands beside it."""

    senders: int
    series_per_sender: int
    faults: Faults
    reference: bool

    @staticmethod
    def full(seed: int, outage_s: float) -> Plan:
        return Plan(4, 5, Faults(serve_kills=2, worker_kills=1, outage_s=outage_s, seed=seed), True)

    @staticmethod
    def quick(seed: int, outage_s: float) -> Plan:
        return Plan(
            1, 1, Faults(serve_kills=1, worker_kills=0, outage_s=outage_s, seed=seed), False
        )


@dataclass
class Report:
    """Everything one suite run measured, and its table rows."""

    plan: Plan
    run: RunFigures
    reference: RunFigures | None
    corpus: CorpusFigures
    rows: list[Row]
    wall_s: float

    @property
    def ok(self) -> bool:
        return (
            all_met(self.rows)
            and not self.run.problems
            and not (self.reference and self.reference.problems)
        )


def run_suite(workdir: Path, plan: Plan, *, seed: int = 0) -> Report:
    """Run the scenario (and its reference) and the corpus in ``workdir``."""
    t0 = time.monotonic()
    n = plan.senders * plan.series_per_sender
    series = make_series(workdir / "series", n, 770_000 + seed)
    reference = None
    if plan.reference:
        reference = run_scenario(workdir / "fault-free", series, plan.senders, Faults.none())
    run = run_scenario(workdir / "faults", series, plan.senders, plan.faults)
    corpus = run_corpus(workdir / "corpus", build_corpus(workdir / "corpus-cases", seed))
    rows = scenario_rows(run, reference, plan.senders) + corpus_rows(corpus)
    return Report(plan, run, reference, corpus, rows, time.monotonic() - t0)


@app.command()
def main(
    quick: bool = typer.Option(False, help="one sender, one series, one serve kill, the corpus"),
    seed: int = typer.Option(0, help="seeds the phantoms and the moments of the faults"),
    outage_s: float = typer.Option(
        None, help="PACS down time in seconds (default 120; 15 with --quick)", show_default=False
    ),
    workdir: Path = typer.Option(None, help="work folder (default: a temporary one)"),
    keep: bool = typer.Option(False, help="keep the work folder (logs, archive, databases)"),
) -> None:
    """Run the reliability suite and print its table; exit 1 when a goal is not met."""
    outage = outage_s if outage_s is not None else (15.0 if quick else 120.0)
    plan = Plan.quick(seed, outage) if quick else Plan.full(seed, outage)
    work = workdir or Path(tempfile.mkdtemp(prefix="glip-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    console = Console(width=170)
    try:
        with console.status("chaos suite running (real processes; minutes)"):
            report = run_suite(work, plan, seed=seed)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    title = f"bench.chaos{' --quick' if quick else ''} --seed {seed}: {report.wall_s / 60:.1f} min"
    console.print(render(report.rows, title))
    for problem in report.run.problems + (report.reference.problems if report.reference else []):
        console.print(f"[red]problem:[/] {problem}")
    if keep:
        console.print(f"work folder kept: {work}")
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    app()
