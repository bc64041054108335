"""``dicomnode series``: list and show received series."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from dicomnode.db.models import utcnow
from dicomnode.operate import admin
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.format import (
    console,
    fmt_ago,
    fmt_size,
    fmt_when,
    make_table,
    print_json,
    short_uid,
    state_text,
)
from dicomnode.operate.admin_cli.help import SERIES_HELP
from dicomnode.operate.admin_cli.options import JsonOpt, LimitOpt, SeriesDecision, SeriesState
from dicomnode.operate.admin_cli.tables import detail_panel, events_table, jobs_table
from dicomnode.operate.node_cli import ConfigOpt

series_app = typer.Typer(help=SERIES_HELP, no_args_is_help=True)


@series_app.command("list")
def series_list(
    ctx: typer.Context,
    state: Annotated[SeriesState | None, typer.Option(help="Only series in this state.")] = None,
    decision: Annotated[
        SeriesDecision | None, typer.Option(help="Only complete series with this decision.")
    ] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List series, newest first."""
    with node_db(ctx, config) as (_cfg, engine):
        rows = admin.list_series(
            engine, state.value if state else None, decision.value if decision else None, limit
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no series")
        return
    now = utcnow()
    t = make_table(None, "id", "series", "description", "n", "state", "decision", "last", "job")
    for x in rows:
        job = f"{x.latest_job_id} {x.latest_job_state}" if x.latest_job_id else "-"
        t.add_row(
            str(x.id),
            short_uid(x.series_instance_uid),
            x.series_description or "-",
            str(x.instance_count),
            state_text(x.state),
            state_text(x.decision) if x.decision else Text("-"),
            fmt_ago(x.last_received_at, now) + " ago",
            job,
        )
    console.print(t)


@series_app.command("show")
def series_show(
    ctx: typer.Context,
    series: Annotated[str, typer.Argument(help="Series id or SeriesInstanceUID.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show one series: its instances, decision, jobs and history."""
    with node_db(ctx, config) as (_cfg, engine):
        d = admin.series_detail(engine, series)
    if as_json:
        print_json(d)
        return
    x, inst = d.series, d.instances
    thick = ", ".join(f"{t:g}" for t in inst.slice_thickness_mm) or "-"
    console.print(
        detail_panel(
            f"series {x.id}",
            [
                ("uid", x.series_instance_uid),
                ("study", x.study_instance_uid),
                ("accession", x.accession_number or "-"),
                ("modality", x.modality or "-"),
                ("number", str(x.series_number) if x.series_number is not None else "-"),
                ("description", x.series_description or "-"),
                ("manufacturer", d.manufacturer or "-"),
                ("state", state_text(x.state)),
                ("decision", state_text(x.decision) if x.decision else Text("-")),
                ("reason", x.decision_reason or "-"),
                ("first received", fmt_when(x.first_received_at)),
                ("last received", fmt_when(x.last_received_at)),
                ("completed", f"{fmt_when(x.completed_at)} ({x.completion or '-'})"),
                ("instances", f"{inst.count} ({fmt_size(inst.bytes)})"),
                ("matrix", ", ".join(inst.matrix) or "-"),
                ("slice thickness", thick + " mm"),
                ("transfer syntax", ", ".join(inst.transfer_syntaxes) or "-"),
                ("images purged", fmt_when(d.study_purged_at) if d.study_purged_at else "no"),
            ],
        )
    )
    if d.jobs:
        console.print(jobs_table(d.jobs, utcnow()))
    console.print(events_table(d.events))
