"""``dicomnode echo`` (C-ECHO a destination) and ``dicomnode purge`` (archive retention)."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, cast

import typer
from rich.markup import escape

from dicomnode.config import Destination, NodeConfig
from dicomnode.operate import node_cli
from dicomnode.operate.admin import jsonable
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.errors import CliError, cli_errors, debug_enabled, print_error
from dicomnode.operate.admin_cli.format import console, make_table
from dicomnode.operate.admin_cli.options import JsonOpt
from dicomnode.operate.node_cli import ConfigOpt


def _destination(cfg: NodeConfig, name: str) -> Destination:
    for d in cfg.destinations:
        if d.name == name:
            return d
    names = ", ".join(d.name for d in cfg.destinations)
    if not names:
        raise CliError(
            f"no destination {name!r}: none is configured",
            "add one under `destinations:` in the configuration file",
        )
    raise CliError(
        f"no destination {name!r}; configured: {names}",
        "names are case-sensitive; `dicomnode config check` shows the destinations",
    )


def _optional_module(name: str, feature: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise CliError(
            f"{feature} needs {name}, which this installation does not have",
            "update glip-node",
        ) from None


def echo(
    ctx: typer.Context,
    dest: Annotated[str, typer.Argument(help="Destination name from the configuration.")],
    config: ConfigOpt = None,
) -> None:
    """C-ECHO a configured destination (tests the path that deliveries use).

    Uses the destination's host, port, AE title and TLS settings and the node's AE title."""
    cfg = node_cli.node_config(ctx, config)
    if not debug_enabled(ctx):
        # pynetdicom logs a failed association at ERROR; the one-line report says it all
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    with cli_errors(ctx):
        d = _destination(cfg, dest)
        scu = _optional_module("dicomnode.deliver.scu", "C-ECHO")
        ok, message = cast(Callable[[Destination, NodeConfig], tuple[bool, str]], scu.echo)(d, cfg)
    if ok:
        console.print(f"[green]ok:[/] {escape(message)}", soft_wrap=True)
        return
    print_error(message, "check the destination's host, port, AE title and TLS settings")
    raise typer.Exit(code=1)


def purge(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be deleted.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Delete archived images of delivered studies (--dry-run: only report).

    A study qualifies when all its results were delivered more than
    retention.delivered_days ago; its database rows stay, and studies with annotations are
    never purged (retraining needs them)."""
    with node_db(ctx, config) as (cfg, engine):
        retention = _optional_module("dicomnode.operate.retention", "purge")
        report = retention.purge(engine, cfg.archive_dir, cfg.retention, dry_run=dry_run)
    data = jsonable(report)
    if isinstance(data, dict):
        for name in ("files", "bytes"):  # properties are not dataclass fields
            if isinstance(getattr(report, name, None), int):
                data[name] = getattr(report, name)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    summary = report.summary() if callable(getattr(report, "summary", None)) else str(data)
    console.print(("dry run: " if dry_run else "") + escape(str(summary)), soft_wrap=True)
    failed = data.get("failed") if isinstance(data, dict) else None
    if isinstance(failed, dict) and failed:
        t = make_table("not purged", "study id", "why")
        for study_id, why in failed.items():
            t.add_row(str(study_id), str(why))
        console.print(t)
