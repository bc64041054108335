"""``dicomnode`` commands that run the node: serve, worker, retrain, db upgrade/downgrade/
current, config check; the global options and the ``--config`` option every command also
accepts after its name (registered in :mod:`dicomnode.cli`).

Heavy modules (the SCP, the worker and torch) are imported inside the commands that need
them, so ``dicomnode --help``, ``status`` or ``config check`` start quickly."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console

from dicomnode.config import CONFIG_ENV, ConfigError, NodeConfig, load_config

if TYPE_CHECKING:
    from sqlalchemy import Engine

console = Console(stderr=True)

DEBUG_ENV = "DICOMNODE_DEBUG"
"""Environment variable that turns on --debug."""

db_app = typer.Typer(help="Database schema (alembic migrations in db/migrations).")
config_app = typer.Typer(help="Node configuration.")


CONFIG_HELP = (
    f"YAML configuration file (default: ${CONFIG_ENV}, else built-in defaults). "
    "Environment variables DICOMNODE_<SECTION>__<KEY> override it."
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=CONFIG_HELP + " Given after the command, it wins over one given before it.",
        dir_okay=False,
    ),
]
"""The ``--config`` option every command that loads the configuration accepts after its
name (``dicomnode db upgrade --config FILE``); :func:`node_config` takes its value."""


def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help=CONFIG_HELP, envvar=CONFIG_ENV, dir_okay=False),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the full traceback of errors instead of one line and a hint.",
            envvar=DEBUG_ENV,
        ),
    ] = False,
) -> None:
    """glip-node DICOM service. Research use only."""
    ctx.obj = {"config": config, "debug": debug}


def node_config(ctx: typer.Context, config: Path | None = None) -> NodeConfig:
    """The configuration of this invocation: the command's ``--config``, else the global
    one (or its environment variable); exits with status 2 on a config error."""
    obj = ctx.find_root().obj or {}
    try:
        return load_config(config if config is not None else obj.get("config"))
    except ConfigError as exc:
        _fail(str(exc), code=2)


def _fail(message: str, code: int) -> NoReturn:
    """Print ``message`` in red on stderr and exit with ``code``."""
    console.print(message, style="bold red", highlight=False, markup=False)
    raise typer.Exit(code=code) from None


def _open_engine(cfg: NodeConfig) -> Engine:
    """The database engine with its schema checked; exits with status 2 when outdated."""
    from dicomnode.db.session import DatabaseError
    from dicomnode.services import open_engine

    try:
        return open_engine(cfg)
    except DatabaseError as exc:
        _fail(str(exc), code=2)


def _setup_logging(cfg: NodeConfig) -> None:
    """Text or JSON logs to stderr, with the PHI scrubber (dicomnode.operate.logs)."""
    from dicomnode.operate.logs import setup_logging

    setup_logging(cfg.logging)


# --- serve -------------------------------------------------------------------------


def serve(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Receive, assemble and deliver: SCP, assembler, delivery and retention purge.

    Runs until SIGTERM or SIGINT. Jobs are processed by `dicomnode worker` (one or more,
    separate processes).

    An empty database is migrated on first start; an outdated one must be upgraded with
    `dicomnode db upgrade`.
    """
    cfg = node_config(ctx, config)
    _setup_logging(cfg)
    from dicomnode.services import start_background_services, start_receiving

    log = logging.getLogger("dicomnode.serve")
    engine = _open_engine(cfg)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        receiving = start_receiving(cfg, engine)
    except OSError as exc:
        _fail(str(exc), code=1)
    scheduler = start_background_services(cfg, engine, retention=True)
    _start_metrics(cfg, engine, 0)
    log.info("dicomnode ready (archive %s)", cfg.archive_dir)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        receiving.stop()
        scheduler.shutdown(wait=True)
        engine.dispose()
        log.info("dicomnode stopped")


# --- db --------------------------------------------------------------------------------

UrlOpt = Annotated[str | None, typer.Option(help="Database URL (default: config).")]


def _database_url(ctx: typer.Context, url: str | None, config: Path | None) -> str:
    """``--url`` when given, else the configured database."""
    return url or node_config(ctx, config).database_url


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Upgrade (or create) the database schema."""
    from dicomnode.db import migrate

    migrate.upgrade(_database_url(ctx, url, config), revision)
    console.print(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision ('base' drops all).")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Downgrade the database schema."""
    from dicomnode.db import migrate

    migrate.downgrade(_database_url(ctx, url, config), revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(
    ctx: typer.Context,
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print the database's schema revision and the newest one."""
    from dicomnode.db import migrate
    from dicomnode.db.session import make_engine

    engine = make_engine(_database_url(ctx, url, config))
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
    config: ConfigOpt = None,
) -> None:
    """Validate the configuration (defaults < file < environment) and print it."""
    cfg = node_config(ctx, config)
    if show:
        typer.echo(yaml.safe_dump(_plain(cfg.model_dump(mode="json")), sort_keys=False).rstrip())
        typer.echo(f"# archive: {cfg.archive_dir}\n# database: {cfg.database_url}")
    for w in config_warnings(cfg):
        console.print(f"[yellow]warning:[/] {w}")
    console.print("[green]configuration OK[/]")


# --- worker ----------------------------------------------------------------------------


def worker(
    ctx: typer.Context,
    index: Annotated[
        int,
        typer.Option(
            "--index",
            "-i",
            help="Worker index on this host (the systemd instance): names the worker and "
            "offsets its metrics port (metrics.port + 1 + index).",
            min=0,
        ),
    ] = 0,
    once: Annotated[
        bool, typer.Option(help="Process the jobs queued now, then exit (for cron or tests).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Process jobs: find the hinge points, write SR / SEG / key images, queue delivery.

    A worker claims queued jobs with a lease (renewed by heartbeats; a dead worker's job is
    taken over by another one when its lease expires).

    The model bundle is loaded once: the active model version in the database
    (`dicomnode models promote`), else model.bundle, else the shipped phantom model.
    Device: worker.device (auto = CUDA when present). Several workers, on one host or many
    sharing a PostgreSQL database, never take the same job.
    """
    cfg = node_config(ctx, config)
    _setup_logging(cfg)
    from dicomnode.process.worker import Worker

    log = logging.getLogger("dicomnode.process.worker")
    engine = _open_engine(cfg)
    _start_metrics(cfg, engine, 1 + index)
    w = Worker(cfg, engine, index=index)
    try:
        version = w.load_model()
    except Exception as exc:  # bundle missing, tampered or incompatible
        _fail(f"cannot load the model: {exc}", code=2)
    log.info("worker %s ready with model %s", w.worker_id, version)
    if once:
        n = 0
        while w.process_one() is not None:
            n += 1
        log.info("processed %d jobs", n)
        engine.dispose()
        return
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "%s received: finishing the current job, then stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        w.run(stop)
    finally:
        engine.dispose()
        log.info("worker stopped")


def _start_metrics(cfg: NodeConfig, engine: Any, offset: int) -> None:
    if not cfg.metrics.enabled:
        return
    from dicomnode.operate import metrics

    port = metrics.start_metrics_server(cfg.metrics, offset=offset, engine=engine)
    logging.getLogger("dicomnode.operate.metrics").info("metrics on port %d", port)


# --- retrain ---------------------------------------------------------------------------


RETRAIN_BUSY_EXIT = 3
"""Exit status of `dicomnode retrain` while another retrain holds the lease."""


def retrain(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build and split the dataset only; no training.")
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", min=0.1, help="Wall-time budget in minutes (default retrain.budget_min)."
        ),
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Train from scratch, not fine-tune.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="CPU threads (default retrain.threads)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Retrain from the annotated archived studies: a candidate model, compared with the
    active model on held-out studies and a phantom reference set, promoted when the gate
    passes (retrain.promote: auto) or registered for `dicomnode models promote`.

    Exits 1 without usable annotations or when training fails, 3 while another retrain
    runs; a candidate the gate refuses is recorded and the command exits 0."""
    cfg = node_config(ctx, config)
    _setup_logging(cfg)
    from dicomnode.learn.retrain import RetrainOptions, run_retrain
    from dicomnode.learn.retrain_dataset import NoAnnotationsError
    from dicomnode.learn.retrain_lease import RetrainBusyError
    from dicomnode.learn.retrain_training import TrainingError

    engine = _open_engine(cfg)
    options = RetrainOptions(dry_run, budget, from_scratch, threads)
    try:
        outcome = run_retrain(cfg, engine, options, report=lambda m: console.print(f"- {m}"))
    except NoAnnotationsError as exc:
        _fail(f"nothing to retrain on: {exc}", code=1)
    except RetrainBusyError as exc:
        _fail(str(exc), code=RETRAIN_BUSY_EXIT)
    except TrainingError as exc:
        _fail(f"training failed: {exc}", code=1)
    finally:
        engine.dispose()
    for annotation_id, reason in outcome.dataset.skipped:
        console.print(f"skipped annotation {annotation_id}: {reason}", markup=False)
    if dry_run:
        console.print(f"dry run: dataset in {outcome.run_dir / 'dataset'}", markup=False)
        return
    if outcome.decision is not None:
        for reason in outcome.decision.reasons():
            console.print(f"  {reason}", markup=False)
    state = (
        "promoted" if outcome.promoted else (outcome.decision.decision if outcome.decision else "?")
    )
    console.print(
        f"candidate {outcome.candidate} ({state}); active model before: {outcome.parent}; "
        f"{outcome.wall_s / 60:.1f} min",
        markup=False,
    )
