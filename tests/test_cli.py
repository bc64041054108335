"""The ``dicomnode`` command itself: which commands load torch (in fresh interpreters, since
pytest has torch loaded), and ``--config`` accepted before and after the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from dicomnode.cli import app

# Runs `dicomnode ARGS...` in this interpreter, then reports on stderr's last line whether
# torch (and the SCP) were imported. For `serve`, a thread sends SIGTERM once the command
# has installed its handler, so serve starts everything, then shuts down at once.
RUNNER = """
import json, os, signal, sys, threading, time

def stop_serve():
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

if sys.argv[1] == "serve":
    threading.Thread(target=stop_serve, daemon=True).start()
sys.argv = ["dicomnode", *sys.argv[1:]]
from dicomnode.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
report = {
    "code": code,
    "torch": "torch" in sys.modules,
    "scp": "dicomnode.receive.scp" in sys.modules,
}
print(json.dumps(report), file=sys.stderr)
"""


def _write_config(path: Path, var_dir: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "var_dir": str(var_dir),
                "network": {"port": 0, "bind_address": "127.0.0.1"},
                "archive": {"min_free": "0"},
                "metrics": {"enabled": False},
            }
        )
    )
    return path


def _run(args: list[str], config: Path) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "DICOMNODE_CONFIG": str(config), "HOME": "/tmp"},
    )
    report: dict[str, object] = json.loads(res.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, res.stdout + res.stderr
    return report


@pytest.fixture(scope="module")
def node_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return _write_config(root / "node.yaml", root / "var")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["config", "check"],
        ["db", "upgrade"],
        ["status"],
        ["models", "list"],
    ],
    ids=" ".join,
)
def test_commands_do_not_import_torch(node_yaml: Path, args: list[str]) -> None:
    report = _run(args, node_yaml)  # db upgrade runs before status: status finds a database
    assert report["torch"] is False
    assert report["scp"] is False  # only the start-up of receiving imports the SCP


def test_serve_starts_and_stops_without_torch(node_yaml: Path) -> None:
    """The SCP service (systemd/dicomnode-scp.service runs `dicomnode serve`) never needs
    torch: the whole start-up and shut-down runs without importing it."""
    report = _run(["serve"], node_yaml)
    assert report["scp"] is True
    assert report["torch"] is False


def test_scp_unit_runs_serve() -> None:
    unit = (Path(__file__).parents[1] / "systemd" / "dicomnode-scp.service").read_text()
    assert "ExecStart=/opt/glip-node/.venv/bin/dicomnode serve\n" in unit


def test_config_after_the_command(tmp_path: Path) -> None:
    before = _write_config(tmp_path / "before.yaml", tmp_path / "var-before")
    after = _write_config(tmp_path / "after.yaml", tmp_path / "var-after")
    runner = CliRunner()
    res = runner.invoke(app, ["db", "upgrade", "--config", str(after)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "var-after" / "dicomnode.db").is_file()
    # Given in both places, the command's own --config wins.
    res = runner.invoke(app, ["--config", str(before), "status", "--json", "--config", str(after)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "var-before").exists()
    res = runner.invoke(app, ["-c", str(before), "db", "current", "-c", str(after)])
    assert res.exit_code == 0 and "(empty)" not in res.stdout, res.output


def test_every_command_accepts_config() -> None:
    def leaves(cmd: object, path: str) -> list[tuple[str, object]]:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            return [(path, cmd)]
        return [leaf for name, sub in subs.items() for leaf in leaves(sub, f"{path} {name}")]

    commands = leaves(typer.main.get_command(app), "dicomnode")
    assert len(commands) > 20
    for path, cmd in commands:
        opts = {o for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])}
        assert "--config" in opts, path
