"""Schema migrations (alembic scripts in ``db/migrations`` at the repository top).

Works from any working directory: the alembic configuration is built here, not read from
an ini file (``db/alembic.ini`` exists for the plain ``alembic`` command).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from dicomnode.db.session import DatabaseError, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"


def alembic_config(url: str) -> Config:
    """An alembic Config pointing at the node's migrations and the database ``url``."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(
            f"alembic migrations not found at {MIGRATIONS_DIR}; dicomnode must run from a "
            "checkout or an editable install of glip-node"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (creating it when empty)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``base`` drops everything)."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest revision of the migration scripts."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise DatabaseError("db/migrations holds no revision: the installation is incomplete")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_current(engine: Engine) -> None:
    """Raise a readable error when the database is not at the newest revision."""
    cur, head = current_revision(engine), head_revision()
    if cur != head:
        raise DatabaseError(
            f"database schema is at revision {cur or '(empty)'}, the node needs {head}: "
            "run `dicomnode db upgrade`"
        )


def upgrade_url_engine(url: str) -> Engine:
    """Upgrade to head and return an engine (test and tool convenience)."""
    upgrade(url)
    return make_engine(url)
