"""The one table ``python -m bench.chaos`` prints: each figure with its goal and whether
it was met (figures without a goal are reported, not judged)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from bench.chaos_corpus import CorpusFigures
from bench.chaos_scenario import RunFigures

GIB = 1024**3


@dataclass(frozen=True)
class Row:
    """One line of the table; ``met`` None: reported without a goal."""

    section: str
    figure: str
    value: str
    goal: str
    met: bool | None


def scenario_rows(run: RunFigures, reference: RunFigures | None, senders: int) -> list[Row]:
    """The rows of the faulty run (and of the fault-free reference when there is one)."""
    faults = (
        f"{senders} senders x {run.series // max(1, senders)} series; serve SIGKILL x"
        f"{run.serve_kills}, worker SIGKILL x{run.worker_kills}"
    )
    rows = [
        Row(
            faults,
            "fault timeline (s from the first send)",
            "; ".join(run.events) or "none",
            "(reported)",
            None,
        ),
        Row(
            faults,
            "acknowledged instances lost",
            f"{run.acked_lost} of {run.acked}",
            "0",
            run.acked_lost == 0 and run.acked == run.instances_sent,
        ),
        Row(
            faults,
            "series whose final result comes from the complete input",
            f"{run.final_complete}/{run.series}",
            "all",
            run.final_complete == run.series,
        ),
        Row(faults, "superseded partial results", str(run.superseded_partial), "(counted)", None),
        Row(faults, "results (withheld)", f"{run.results} ({run.withheld})", "(counted)", None),
        Row(
            faults,
            "result UIDs in PACS with two clinical contents",
            str(run.two_contents),
            "0",
            run.two_contents == 0,
        ),
        Row(
            faults,
            "sent objects missing in PACS",
            str(run.pacs_missing),
            "0",
            run.pacs_missing == 0,
        ),
    ]
    outage = f"PACS down {run.outage_s:.0f} s during the run (goal: every result delivered after)"
    rows += [
        Row(
            outage,
            "deliveries that met the outage, delivered after it",
            f"{run.delivered_after_outage}/{run.waited_for_outage}",
            "all (and > 0)",
            run.waited_for_outage > 0 and run.delivered_after_outage == run.waited_for_outage,
        ),
        Row(
            outage,
            "deliveries not sent (dead letters)",
            f"{run.not_delivered} ({run.dead})",
            "0",
            run.not_delivered == 0,
        ),
        Row(
            outage,
            "duplicate objects in PACS",
            str(run.pacs_duplicates),
            "0",
            run.pacs_duplicates == 0,
        ),
    ]
    if reference is not None:
        ratio = run.wall_s / reference.wall_s if reference.wall_s else float("nan")
        rows += [
            Row(
                "fault-free run beside it",
                "wall time with faults / without",
                f"{run.wall_s:.0f} s / {reference.wall_s:.0f} s = {ratio:.2f}",
                "(reported)",
                None,
            ),
            Row(
                "fault-free run beside it",
                "its goals (lost, complete, two contents)",
                f"{reference.acked_lost}, {reference.final_complete}/{reference.series}, "
                f"{reference.two_contents}",
                "0, all, 0",
                reference.acked_lost == 0
                and reference.final_complete == reference.series
                and reference.two_contents == 0,
            ),
            Row(
                "throughput",
                f"series per hour end to end, {senders} senders, fault-free",
                f"{reference.series_per_hour:.0f}",
                "(reported)",
                None,
            ),
        ]
    else:
        rows.append(
            Row(
                "throughput",
                f"series per hour end to end, {senders} sender(s), with faults",
                f"{run.series_per_hour:.0f}",
                "(reported)",
                None,
            )
        )
    return rows


def corpus_rows(corpus: CorpusFigures) -> list[Row]:
    """One row per corpus case, then the node's state after the corpus."""
    rows = [
        Row(
            "bad-input corpus",
            f"{o.case.name}" + (f" (item {o.case.issue})" if o.case.issue else ""),
            o.describe(),
            o.case.expect.describe(),
            o.met,
        )
        for o in corpus.outcomes
    ]
    peak = corpus.peak_rss_bytes
    rows += [
        Row(
            "after the corpus",
            "serve alive and answers C-ECHO",
            "yes" if corpus.echo_after and corpus.serve_alive else "no",
            "yes",
            corpus.echo_after and corpus.serve_alive,
        ),
        Row(
            "after the corpus",
            "files written outside the archive",
            str(len(corpus.outside_archive)),
            "0",
            not corpus.outside_archive,
        ),
        Row(
            "after the corpus",
            "peak memory of serve (RSS incl. children), default limits",
            f"{peak / 2**20:.0f} MiB",
            "< 1 GiB",
            0 < peak < GIB,
        ),
    ]
    return rows


def render(rows: list[Row], title: str) -> Table:
    """The rich table of ``rows``."""
    table = Table(title=title, show_lines=False)
    for name in ("part", "figure", "value", "goal", "met"):
        table.add_column(name, overflow="fold")
    last = ""
    for r in rows:
        met = "—" if r.met is None else ("[green]met[/]" if r.met else "[red]NOT MET[/]")
        table.add_row("" if r.section == last else r.section, r.figure, r.value, r.goal, met)
        last = r.section
    return table


def all_met(rows: list[Row]) -> bool:
    """Whether every judged figure met its goal."""
    return all(r.met is not False for r in rows)
