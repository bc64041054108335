"""``dicomnode deliveries``: list deliveries and requeue dead ones."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from dicomnode.deliver.states import DeliveryState
from dicomnode.operate import admin
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.format import console, err_console, print_json
from dicomnode.operate.admin_cli.help import DELIVERIES_HELP
from dicomnode.operate.admin_cli.options import JsonOpt, LimitOpt
from dicomnode.operate.admin_cli.tables import deliveries_table
from dicomnode.operate.node_cli import ConfigOpt

deliveries_app = typer.Typer(help=DELIVERIES_HELP, no_args_is_help=True)


@deliveries_app.command("list")
def deliveries_list(
    ctx: typer.Context,
    state: Annotated[
        DeliveryState | None, typer.Option(help="Only deliveries in this state.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Only deliveries to this destination (its name).")
    ] = None,
    limit: LimitOpt = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List deliveries, newest first."""
    with node_db(ctx, config) as (_cfg, engine):
        rows = admin.list_deliveries(engine, state.value if state else None, destination, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no deliveries")
        return
    console.print(deliveries_table(rows))


@deliveries_app.command("requeue")
def deliveries_requeue(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(help="Delivery ids (dead, failed or pending). None: every dead one."),
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Only deliveries to this destination (its name).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Send dead deliveries again: state pending, attempts 0, next attempt now.

    Fix the cause first (`dicomnode echo DEST` tests the connection)."""
    with node_db(ctx, config) as (cfg, engine):
        names = [d.name for d in cfg.destinations]
        if destination is not None and destination not in names:
            known = ", ".join(names) or "none configured"
            err_console.print(
                f"[yellow]warning:[/] destination {escape(destination)!s} is not in the "
                f"configuration (configured: {escape(known)})",
                soft_wrap=True,
            )
        n = admin.requeue_deliveries(engine, ids or None, destination)
    if n == 0:
        console.print("nothing to requeue: no dead deliveries" + _to(destination))
        return
    console.print(f"{n} deliver{'y' if n == 1 else 'ies'} requeued{_to(destination)}")


def _to(destination: str | None) -> str:
    return f" to {destination}" if destination else ""
