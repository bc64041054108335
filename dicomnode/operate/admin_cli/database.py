"""Opening the node's database for a command, refusing a missing or outdated one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from dicomnode.config import NodeConfig
from dicomnode.operate import admin, node_cli
from dicomnode.operate.admin_cli.errors import CliError, cli_errors


def open_database(cfg: NodeConfig) -> Engine:
    """An engine on the node's database, refusing a missing or outdated one readably."""
    from dicomnode.db import migrate
    from dicomnode.db.session import engine_from_config

    url = make_url(cfg.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        if not path.is_file():
            raise CliError(
                f"no database at {path}",
                "run `dicomnode db upgrade` first (or check var_dir / database.url)",
            )
    engine = engine_from_config(cfg)
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
    except BaseException:
        engine.dispose()
        raise
    if current != head:
        engine.dispose()
        where = admin.safe_url(cfg.database_url)
        if current is None:
            raise CliError(f"the database {where} has no schema", "run `dicomnode db upgrade`")
        raise CliError(
            f"the database schema is at revision {current}; this dicomnode needs {head}",
            "run `dicomnode db upgrade` (or use the dicomnode that upgraded it)",
        )
    return engine


@contextmanager
def node_db(ctx: typer.Context, config: Path | None = None) -> Iterator[tuple[NodeConfig, Engine]]:
    """The configuration (the command's ``--config``, else the global one) and an engine on
    its database, with readable errors."""
    cfg = node_cli.node_config(ctx, config)
    with cli_errors(ctx):
        engine = open_database(cfg)
        try:
            yield cfg, engine
        finally:
            engine.dispose()
