"""The operator commands of `dicomnode` (typer CliRunner on a temporary configuration)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ingest_fixtures import free_port, wait_for
from sqlalchemy import Engine, select
from test_admin import UID, Seeded, local_noon, seed
from typer.testing import CliRunner, Result

from dicomnode.cli import app
from dicomnode.config import SHIPPED_BUNDLE, load_config
from dicomnode.db import migrate
from dicomnode.db.models import Delivery, Job, ModelVersion
from dicomnode.db.session import make_engine, session_factory
from glipcore.bundle import read_manifest


@dataclass
class Cli:
    """A configuration file in a temporary folder and a runner for it."""

    config: Path
    var_dir: Path

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(app, ["--config", str(self.config), *args])


def write_config(tmp_path: Path, **extra: object) -> Path:
    data = {"var_dir": str(tmp_path / "var"), "archive": {"min_free": "0"}, **extra}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    monkeypatch.delenv("DICOMNODE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return Cli(write_config(tmp_path), tmp_path / "var")


@pytest.fixture
def db(cli: Cli) -> Iterator[tuple[Engine, Seeded]]:
    url = load_config(cli.config).database_url
    migrate.upgrade(url)
    engine = make_engine(url)
    seeded = seed(engine, local_noon())
    yield engine, seeded
    engine.dispose()


def assert_one_line_error(res: Result, *fragments: str) -> None:
    """Exit status 1, an ``error:`` line and a ``hint:`` line, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: "), res.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), res.stderr
    for f in fragments:
        assert f in res.stderr, res.stderr


def test_status_json_counts(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    _, seeded = db
    res = cli("status", "--json")
    assert res.exit_code == 0, res.output
    snap = json.loads(res.stdout)
    assert snap["jobs"]["queue_depth"] == 1
    assert snap["jobs"]["by_state"]["running"] == 2
    assert snap["series"]["receiving"] == 1 and snap["series"]["complete"] == 3
    assert snap["deliveries"]["dead"] == 2 and snap["deliveries"]["pending"] == 1
    assert snap["failures"]["recent"][0]["id"] == seeded.jobs["failed"]
    assert snap["today"]["instances"] == 3
    assert snap["model"]["version"] == read_manifest(SHIPPED_BUNDLE)[1]
    assert snap["node"]["archive_dir"] == str(cli.var_dir / "archive")


def test_status_screen(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    res = cli("status")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for text in ("jobs · queue 1", "running jobs", "host-a:1", "slice gap", "0xA700", "problems"):
        assert text in out, out
    assert len(out.splitlines()) < 60  # one screen


def test_jobs_list_show_retry(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    engine, seeded = db
    res = cli("jobs", "list", "--state", "failed", "--json")
    assert res.exit_code == 0, res.output
    assert [j["id"] for j in json.loads(res.stdout)] == [seeded.jobs["failed"]]
    res = cli("jobs", "list")
    assert res.exit_code == 0 and "host-a:1" in res.stdout
    res = cli("jobs", "show", str(seeded.jobs["done"]))
    assert res.exit_code == 0, res.output
    assert "RCC" in res.stdout and "hinge distance" in res.stdout
    res = cli("jobs", "retry", str(seeded.jobs["failed"]))
    assert res.exit_code == 0, res.output
    assert f"job {seeded.jobs['failed']}: queued again" in res.stdout
    with session_factory(engine)() as s:
        job = s.get(Job, seeded.jobs["failed"])
        assert job is not None and job.state == "queued" and job.attempts == 0
    res = cli("jobs", "retry", str(seeded.jobs["running"]))
    assert_one_line_error(res, "is running", "jobs cancel")


def test_jobs_cancel_and_series(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    _, seeded = db
    res = cli("jobs", "cancel", str(seeded.jobs["queued"]), "--reason", "duplicate")
    assert res.exit_code == 0, res.output
    res = cli("jobs", "list", "--state", "cancelled", "--json")
    assert {j["reason"] for j in json.loads(res.stdout)} == {
        "duplicate",
        "series no longer qualifies",
    }
    res = cli("series", "list", "--state", "receiving", "--json")
    assert [x["id"] for x in json.loads(res.stdout)] == [seeded.series["s2"]]
    res = cli("series", "show", UID + "1.3")
    assert res.exit_code == 0, res.output
    assert "only 3 slices" in res.stdout
    assert_one_line_error(cli("series", "show", "999"), "no series with id 999")


def test_deliveries_list_and_requeue(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    engine, seeded = db
    res = cli("deliveries", "list", "--state", "dead")
    assert res.exit_code == 0 and "0xA700" in res.stdout
    res = cli("deliveries", "requeue", "--destination", "VNA")
    assert res.exit_code == 0, res.output
    assert "1 delivery requeued to VNA" in res.stdout
    assert "not in the configuration" in res.stderr
    res = cli("deliveries", "requeue")
    assert res.exit_code == 0 and "1 delivery requeued" in res.stdout
    with session_factory(engine)() as s:
        states = {d.id: d.state for d in s.scalars(select(Delivery))}
    assert states[seeded.deliveries["dead"]] == "pending"
    assert states[seeded.deliveries["dead2"]] == "pending"
    res = cli("deliveries", "requeue")
    assert res.exit_code == 0 and "nothing to requeue" in res.stdout
    assert_one_line_error(
        cli("deliveries", "requeue", str(seeded.deliveries["sent"])), "already sent"
    )


def test_results_export_csv(cli: Cli, db: tuple[Engine, Seeded], tmp_path: Path) -> None:
    _, seeded = db
    out = tmp_path / "results.csv"
    res = cli("results", "export", "--csv", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "2 studies exported" in res.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    a = next(r for r in rows if r["study_instance_uid"] == UID + "1")
    assert a["result_id"] == str(seeded.results["A"]) and a["NCC_z"] == "32.0"
    assert a["coplanar_lao_deg"] == "12.0" and a["confidence_RCC"] == "0.9"
    res = cli("results", "export", "--csv")
    assert res.exit_code == 0
    assert list(csv.DictReader(io.StringIO(res.stdout))) == rows


def test_models_list_promote_and_tampered(
    cli: Cli, db: tuple[Engine, Seeded], tmp_path: Path
) -> None:
    engine, _ = db
    version = read_manifest(SHIPPED_BUNDLE)[1]
    res = cli("models", "list", "--json")
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert listed["versions"] == [] and listed["in_use"] == version
    assert listed["config_default"]["registered"] is False
    res = cli("models", "promote", str(SHIPPED_BUNDLE))
    assert res.exit_code == 0, res.output
    assert version in res.stdout and "trained on phantoms" in res.stdout
    res = cli("models", "list")
    assert res.exit_code == 0 and "active" in res.stdout and version in res.stdout
    # a tampered copy is refused, and the active version stays
    bad = tmp_path / "tampered"
    bad.mkdir()
    for f in ("bundle.json", *(fold.file for fold in read_manifest(SHIPPED_BUNDLE)[0].folds)):
        shutil.copy2(SHIPPED_BUNDLE / f, bad / f)
    data = bytearray((bad / "fold0.pt").read_bytes())
    data[-100] ^= 0xFF
    (bad / "fold0.pt").write_bytes(bytes(data))
    assert_one_line_error(cli("models", "promote", str(bad)), "checksum mismatch")
    assert_one_line_error(cli("models", "register", str(bad)), "checksum mismatch")
    assert_one_line_error(cli("models", "promote", "nope"), "unknown model version", version)
    with session_factory(engine)() as s:
        rows = list(s.scalars(select(ModelVersion)))
    assert [(m.version, m.active) for m in rows] == [(version, True)]
    res = cli("status", "--json")
    model = json.loads(res.stdout)["model"]
    assert model["source"] == "database" and model["version"] == version


def test_missing_database_is_one_line(cli: Cli) -> None:
    res = cli("status")
    assert_one_line_error(res, "no database at", "dicomnode db upgrade")
    assert not (cli.var_dir / "dicomnode.db").exists()  # the check creates nothing
    res = CliRunner().invoke(app, ["--config", str(cli.config), "--debug", "status"])
    assert res.exit_code == 1 and res.exception is not None  # --debug lets it through
    assert "no database" in str(res.exception)


def test_outdated_schema_is_one_line(cli: Cli) -> None:
    url = load_config(cli.config).database_url
    migrate.upgrade(url, "0001")
    assert_one_line_error(cli("jobs", "list"), "revision 0001", "dicomnode db upgrade")


def test_help_teaches_states(cli: Cli) -> None:
    res = cli("jobs", "--help")
    assert res.exit_code == 0
    for state in ("queued", "held", "running", "done", "failed", "superseded", "cancelled"):
        assert state in res.stdout
    res = cli("deliveries", "--help")
    assert "dead" in res.stdout and "requeue" in res.stdout


def test_echo(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_one_line_error(cli("echo", "PACS"), "no destination 'PACS'", "destinations:")
    port, closed = free_port(), free_port()
    dests = [
        {"name": "PACS", "ae_title": "PACSAE", "host": "127.0.0.1", "port": port},
        {"name": "GONE", "ae_title": "GONEAE", "host": "127.0.0.1", "port": closed},
    ]
    cfg = write_config(tmp_path, destinations=dests, delivery={"connect_timeout_s": 3})
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "PACSAE", "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: _listening(port), timeout=10)
        res = CliRunner().invoke(app, ["--config", str(cfg), "echo", "PACS"])
        assert res.exit_code == 0, res.output
        assert "succeeded" in res.stdout
        res = CliRunner().invoke(app, ["--config", str(cfg), "echo", "GONE"])
        assert_one_line_error(res, "GONE")
        res = CliRunner().invoke(app, ["--config", str(cfg), "echo", "NOPE"])
        assert_one_line_error(res, "configured: PACS, GONE")
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_purge_dry_run(cli: Cli, db: tuple[Engine, Seeded]) -> None:
    res = cli("purge", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dry_run"] is True and report["files"] == 0
    res = cli("purge", "--dry-run")
    assert res.exit_code == 0 and res.stdout.startswith("dry run: would purge 0 studies")
