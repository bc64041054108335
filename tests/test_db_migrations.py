"""Migrations build, tear down and rebuild the schema on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from dicomnode.db import migrate
from dicomnode.db.session import make_engine

TABLES = {
    "associations",
    "patients",
    "studies",
    "series",
    "instances",
    "jobs",
    "results",
    "deliveries",
    "delivery_attempts",
    "annotations",
    "model_versions",
    "retrain_leases",
    "events",
}


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == set()
        migrate.upgrade(db_url)
        assert set(sa.inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.downgrade(db_url, "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        assert migrate.current_revision(engine) is None
        migrate.upgrade(db_url)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_models_match_the_migrations(db_url: str) -> None:
    """Autogenerate against the migrated schema finds nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dicomnode.db.models import Base

    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_cli_upgrade_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dicomnode.cli import app

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    res = CliRunner().invoke(app, ["db", "upgrade", "--url", url])
    assert res.exit_code == 0, res.output
    engine = make_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    res = CliRunner().invoke(app, ["db", "downgrade", "base", "--url", url])
    assert res.exit_code == 0, res.output
    assert migrate.current_revision(engine) is None
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}", busy_timeout_s=7)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
