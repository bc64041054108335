"""The one database session factory: SQLite (WAL, busy timeout) or PostgreSQL (psycopg 3)
through the same SQLAlchemy URL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeConfig


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not at the expected schema revision."""


def _normalise_url(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def make_engine(
    url: str, *, busy_timeout_s: float = 30.0, sqlite_synchronous: str = "FULL", echo: bool = False
) -> Engine:
    """An engine for ``url``.

    SQLite: WAL journal, ``busy_timeout``, foreign keys on, ``synchronous`` as given
    (FULL makes each commit durable; NORMAL only against process crashes), and every
    transaction opened with BEGIN IMMEDIATE so that concurrent writers queue on the busy
    timeout instead of failing on a lock upgrade. The SQLite file's folder is created.
    """
    url = _normalise_url(url)
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, future=True)
    if u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
    )
    sync = sqlite_synchronous.upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA, got {sync!r}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def engine_from_config(cfg: NodeConfig) -> Engine:
    """The engine for a node configuration (SQLite commits durable when archive.fsync)."""
    return make_engine(
        cfg.database_url,
        busy_timeout_s=cfg.database.busy_timeout_s,
        sqlite_synchronous="FULL" if cfg.archive.fsync else "NORMAL",
        echo=cfg.database.echo,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """The session factory of the node (objects stay usable after commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session
