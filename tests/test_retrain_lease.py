"""One retrain at a time (the lease), and `dicomnode retrain` without annotations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.db.models import utcnow
from dicomnode.learn.retrain_lease import RetrainBusyError, acquire, current_lease


def test_a_held_lease_refuses_a_second_retrain(sqlite_engine: Engine) -> None:
    lease = acquire(sqlite_engine, 600)
    with pytest.raises(RetrainBusyError, match="another retrain is running"):
        acquire(sqlite_engine, 600)
    lease.renew("training: epoch 1")
    info = current_lease(sqlite_engine)
    assert info is not None and info.stage == "training: epoch 1" and not info.expired()
    lease.release()
    assert current_lease(sqlite_engine) is None
    acquire(sqlite_engine, 600).release()


def test_an_expired_lease_is_taken_over(sqlite_engine: Engine) -> None:
    crashed = acquire(sqlite_engine, 60, now=utcnow() - timedelta(minutes=5))
    info = current_lease(sqlite_engine)
    assert info is not None and info.expired()
    taker = acquire(sqlite_engine, 600)
    info = current_lease(sqlite_engine)
    assert info is not None and not info.expired() and "took over" in (info.stage or "")
    with pytest.raises(RetrainBusyError, match="taken over"):
        crashed.renew("still here")
    crashed.release()  # the crashed holder cannot drop the new lease
    assert current_lease(sqlite_engine) is not None
    taker.release()


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"var_dir": str(tmp_path / "var"), "database": {"url": url}}))
    return config


def test_retrain_without_annotations_says_so_and_fails(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    config = _config(tmp_path, sqlite_url)
    res = CliRunner().invoke(app, ["retrain", "--budget", "1", "--config", str(config)])
    assert res.exit_code == 1
    assert "no annotated studies" in res.output


def test_retrain_while_another_runs_exits_3(
    sqlite_url: str, sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    lease = acquire(sqlite_engine, 600)
    try:
        res = CliRunner().invoke(app, ["retrain", "--config", str(_config(tmp_path, sqlite_url))])
    finally:
        lease.release()
    assert res.exit_code == 3 and "another retrain is running" in res.output
