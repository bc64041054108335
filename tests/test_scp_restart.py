"""`dicomnode serve` killed with SIGKILL in the middle of an association (issue 11, items
1 and 7), on SQLite and PostgreSQL: after the restart the interrupted audit row is closed
with the real counts, the partial series gets a fresh quiet period instead of being
declared complete at once, and the sender that resumes completes it into one job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_fixtures import RawScu, free_port, wait_for, write_series
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy import Engine, select

from dicomnode.db.models import AssociationAudit, Event, Job, Series
from dicomnode.db.session import make_engine, session_factory

QUIET_S = 3.0


class Serve:
    """`dicomnode serve` as a child process on a fixed port."""

    def __init__(self, folder: Path, db_url: str) -> None:
        self.port = free_port()
        self.config = folder / "node.yaml"
        cfg = {
            "var_dir": str(folder / "var"),
            "database": {"url": db_url},
            "network": {"port": self.port},
            "access": {"allowed": [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}]},
            "archive": {"min_free": "0"},
            "assembler": {"quiet_time_s": QUIET_S, "sweep_interval_s": 0.2},
            "selection": {"min_slices": 10, "min_z_coverage_mm": 15.0},
            "retention": {"enabled": False},
        }
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = folder / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "--config", str(self.config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        echo = ["/usr/bin/echoscu", "-aet", "ECHOSCU", "-aec", "GLIPNODE"]
        echo += ["127.0.0.1", str(self.port)]
        ok = wait_for(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 60)
        assert ok, f"serve did not answer C-ECHO:\n{self.log.read_text()}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(migrated_url: str, tmp_path: Path) -> Iterator[Serve]:
    node = Serve(tmp_path, migrated_url)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def db(migrated_url: str) -> Iterator[Engine]:
    eng = make_engine(migrated_url)
    yield eng
    eng.dispose()


def _rows(engine: Engine, model: type[Any], *where: Any) -> list[Any]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def _store_audits(engine: Engine) -> list[AssociationAudit]:
    """The audit rows of the storing associations (not the readiness C-ECHOs)."""
    return _rows(engine, AssociationAudit, AssociationAudit.calling_ae == "STORESCU")


def test_sigkill_mid_association_then_restart(serve: Serve, db: Engine, tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", seed=51, case_id="sigkill")  # 24 slices
    first, rest = files[:10], files[10:]
    serve.start()
    scu = RawScu(serve.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    assert [scu.send(f) for f in first] == [0] * len(first)
    serve.kill()  # the association is still open
    scu.assoc.abort()
    (audit, *_) = _store_audits(db)
    assert (audit.outcome, audit.stored) == ("open", 0)
    time.sleep(QUIET_S + 0.5)  # the node stays down longer than the quiet time
    serve.start()
    (audit, *_) = _store_audits(db)
    assert (audit.outcome, audit.requests, audit.stored) == ("interrupted", 10, 10)
    assert audit.ended_at is not None and "interrupted" in (audit.reason or "")
    time.sleep(0.6)  # several sweeps: the partial series must not be declared complete
    (series,) = _rows(db, Series)
    assert series.state == "receiving"
    storescu = ["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "GLIPNODE", "127.0.0.1"]
    res = subprocess.run(
        [*storescu, str(serve.port), *map(str, rest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert wait_for(lambda: _rows(db, Job), 30), serve.log.read_text()
    time.sleep(0.5)  # a few more sweeps
    (job,) = _rows(db, Job)
    assert job.instance_count == len(files)
    kinds = [e.kind for e in _rows(db, Event)]
    assert kinds.count("series_complete") == 1
