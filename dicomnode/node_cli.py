"""``dicomnode`` commands of the ingest side: serve, db upgrade/downgrade/current,
config check, and the global ``--config`` option (registered in :mod:`dicomnode.cli`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from dicomnode.config import CONFIG_ENV, ConfigError, NodeConfig, load_config

console = Console(stderr=True)

db_app = typer.Typer(help="Database schema (alembic migrations in db/migrations).")
config_app = typer.Typer(help="Node configuration.")


def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"YAML configuration file (default: ${CONFIG_ENV}, else built-in defaults). "
            "Environment variables DICOMNODE_<SECTION>__<KEY> override it.",
            envvar=CONFIG_ENV,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """glip-node DICOM service. Research use only."""
    ctx.obj = {"config": config}


def node_config(ctx: typer.Context) -> NodeConfig:
    """The configuration of this invocation; exits with status 2 on a config error."""
    obj = ctx.find_root().obj or {}
    try:
        return load_config(obj.get("config"))
    except ConfigError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False)
        raise typer.Exit(code=2) from None


def _setup_logging(cfg: NodeConfig) -> None:
    logging.basicConfig(
        level=cfg.logging.level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # pynetdicom logs every message at INFO (and data sets at DEBUG): keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --- serve -------------------------------------------------------------------------


def serve(ctx: typer.Context) -> None:
    """Run the SCP (C-ECHO, C-STORE) and the assembler until SIGTERM or SIGINT.

    An empty database is migrated on first start; an outdated one must be upgraded with
    `dicomnode db upgrade`.
    """
    cfg = node_config(ctx)
    _setup_logging(cfg)
    from dicomnode.assembler import Assembler
    from dicomnode.db import migrate
    from dicomnode.db.session import DatabaseError, engine_from_config
    from dicomnode.scp import StorageSCP

    log = logging.getLogger("dicomnode.serve")
    engine = engine_from_config(cfg)
    try:
        if migrate.current_revision(engine) is None:
            log.info("empty database: creating the schema")
            migrate.upgrade(cfg.database_url)
        migrate.check_current(engine)
    except DatabaseError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False)
        raise typer.Exit(code=2) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scp = StorageSCP(cfg, engine)
    assembler = Assembler(cfg, engine)
    try:
        scp.start()
    except OSError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False)
        raise typer.Exit(code=1) from None
    assembler.start()
    log.info("dicomnode ready (archive %s)", cfg.archive_dir)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        scp.stop()
        assembler.stop()
        engine.dispose()
        log.info("dicomnode stopped")


# --- db --------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    url: Annotated[str | None, typer.Option(help="Database URL (default: config).")] = None,
) -> None:
    """Upgrade (or create) the database schema."""
    from dicomnode.db import migrate

    target = url or node_config(ctx).database_url
    migrate.upgrade(target, revision)
    console.print(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision ('base' drops all).")],
    url: Annotated[str | None, typer.Option(help="Database URL (default: config).")] = None,
) -> None:
    """Downgrade the database schema."""
    from dicomnode.db import migrate

    target = url or node_config(ctx).database_url
    migrate.downgrade(target, revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Database URL (default: config).")] = None,
) -> None:
    """Print the database's schema revision and the newest one."""
    from dicomnode.db import migrate
    from dicomnode.db.session import make_engine

    engine = make_engine(url or node_config(ctx).database_url)
    try:
        cur = migrate.current_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"current: {cur or '(empty)'}  head: {migrate.head_revision()}")


# --- config ---------------------------------------------------------------------------


def config_warnings(cfg: NodeConfig) -> list[str]:
    """Settings that are valid but risky."""
    out = []
    net = cfg.network
    if cfg.access.accept_any:
        out.append("access.accept_any is true: any calling AE title may store into the node")
    elif not cfg.access.allowed:
        out.append("access.allowed is empty: every association will be refused")
    if net.bind_address not in ("127.0.0.1", "::1", "localhost") and not net.tls.enabled:
        out.append(f"listening on {net.bind_address} without TLS")
    if not cfg.archive.fsync:
        out.append("archive.fsync is false: acknowledged instances can be lost on power failure")
    if cfg.model.bundle is not None and not cfg.model.bundle.exists():
        out.append(f"model.bundle {cfg.model.bundle} does not exist")
    for name in ("cert_file", "key_file", "ca_file"):
        p = getattr(net.tls, name)
        if net.tls.enabled and p is not None and not p.exists():
            out.append(f"network.tls.{name} {p} does not exist")
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    show: Annotated[bool, typer.Option(help="Print the effective configuration.")] = True,
) -> None:
    """Validate the configuration (defaults < file < environment) and print it."""
    cfg = node_config(ctx)
    if show:
        typer.echo(yaml.safe_dump(_plain(cfg.model_dump(mode="json")), sort_keys=False).rstrip())
        typer.echo(f"# archive: {cfg.archive_dir}\n# database: {cfg.database_url}")
    for w in config_warnings(cfg):
        console.print(f"[yellow]warning:[/] {w}")
    console.print("[green]configuration OK[/]")
