"""``dicomnode jobs``: list, show, retry and cancel jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import typer

from dicomnode.db.models import utcnow
from dicomnode.operate import admin
from dicomnode.operate.admin import AdminError
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.errors import print_error
from dicomnode.operate.admin_cli.format import console, fmt_when, print_json, state_text
from dicomnode.operate.admin_cli.help import JOBS_HELP
from dicomnode.operate.admin_cli.options import JsonOpt, LimitOpt
from dicomnode.operate.admin_cli.tables import (
    deliveries_table,
    detail_panel,
    events_table,
    jobs_table,
    result_panel,
)
from dicomnode.operate.node_cli import ConfigOpt
from dicomnode.process.jobs import JobState

jobs_app = typer.Typer(help=JOBS_HELP, no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List jobs, newest first."""
    with node_db(ctx, config) as (_cfg, engine):
        rows = admin.list_jobs(engine, state.value if state else None, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no jobs" + (f" in state {state.value}" if state else ""))
        return
    console.print(jobs_table(rows, utcnow()))


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id (`dicomnode jobs list`).")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show one job: its series, lease, results, deliveries and history."""
    with node_db(ctx, config) as (_cfg, engine):
        d = admin.job_detail(engine, job_id)
    if as_json:
        print_json(d)
        return
    j = d.job
    phase = f"{d.phase_key}={d.phase_value}" if d.phase_key else "-"
    console.print(
        detail_panel(
            f"job {j.id}",
            [
                ("state", state_text(j.state)),
                ("reason", j.reason or "-"),
                ("attempts", str(j.attempts)),
                ("study", j.study_instance_uid),
                ("accession", j.accession_number or "-"),
                ("series", f"{j.series_instance_uid} (id {j.series_id})"),
                ("description", j.series_description or "-"),
                ("phase", phase),
                ("instances", str(d.instance_count)),
                ("worker", j.worker_id or "-"),
                ("model", j.model_version or "-"),
                ("created", fmt_when(j.created_at)),
                ("started", fmt_when(j.started_at)),
                ("heartbeat", fmt_when(j.heartbeat_at)),
                ("lease until", fmt_when(j.lease_expires_at)),
                ("finished", fmt_when(j.finished_at)),
            ],
        )
    )
    for r in d.results:
        console.print(result_panel(r))
    if d.deliveries:
        console.print(deliveries_table(d.deliveries, "deliveries"))
    console.print(events_table(d.events))


@jobs_app.command("retry")
def jobs_retry(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(help="Job ids.")],
    config: ConfigOpt = None,
) -> None:
    """Queue failed, cancelled or done jobs again (attempts reset, reason cleared).

    A running job is refused: cancel it first or let it finish."""
    with node_db(ctx, config) as (_cfg, engine):
        _each(job_ids, lambda i: admin.retry_job(engine, i), "queued again")


@jobs_app.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(help="Job ids.")],
    reason: Annotated[
        str | None, typer.Option(help="Why (recorded on the job and in its history).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Cancel queued, held or running jobs. A running job's worker loses its lease, so its
    results are discarded rather than stored or sent."""
    with node_db(ctx, config) as (_cfg, engine):
        _each(job_ids, lambda i: admin.cancel_job(engine, i, reason), "cancelled")


def _each(ids: Sequence[int], action: Callable[[int], admin.JobRow], done: str) -> None:
    """Apply ``action`` to each job id; report each; exit 1 if any was refused."""
    refused = 0
    for i in ids:
        try:
            row = action(i)
        except AdminError as exc:
            print_error(str(exc), exc.hint)
            refused += 1
            continue
        console.print(f"job {row.id}: {done}")
    if refused:
        raise typer.Exit(code=1)
