"""The systemd units (systemd/) and the multi-host configuration example.

``systemd-analyze verify`` runs here without systemd as PID 1 (it only loads the unit
files). Two adjustments make that work in a test:

* ``ExecStart`` names /opt/glip-node/.venv/bin/dicomnode, the install location; verify
  fails on a command that does not exist ("Command ... is not executable"), so the copies
  under tmp_path point at this checkout's ``dicomnode`` script instead;
* ``--man=no``: verify would otherwise run ``man`` for each ``Documentation=`` entry.

Verify exits 0 on unknown keys (it only warns), so its stderr must be empty as well.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.config import load_config

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
INSTALLED_COMMAND = "/opt/glip-node/.venv/bin/dicomnode"
SERVICES = ["dicomnode-scp.service", "dicomnode-worker@.service", "dicomnode-retrain.service"]
STATE_DIR = "/var/lib/glip-node"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: run scripts/setup.sh (it installs the Debian package systemd)",
            pytrace=False,
        )
    return path


def _local_command() -> str:
    """The ``dicomnode`` console script of this environment (or any executable)."""
    script = Path(sys.executable).parent / "dicomnode"
    return str(script) if os.access(script, os.X_OK) else "/bin/true"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def copy_units(dest: Path) -> Path:
    """The units in ``dest`` with ExecStart pointing at an existing executable."""
    dest.mkdir(parents=True, exist_ok=True)
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".timer"):
            text = unit.read_text().replace(INSTALLED_COMMAND, _local_command())
            (dest / unit.name).write_text(text)
    return dest


def verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", *(f"./{n}" for n in names)],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    d = copy_units(tmp_path / "units")
    names = [
        "dicomnode-scp.service",
        "dicomnode-worker@0.service",  # instances of the template
        "dicomnode-worker@1.service",
        "dicomnode-retrain.service",
        "dicomnode-retrain.timer",
    ]
    res = verify(d, *names)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown key and a missing command are reported."""
    d = copy_units(tmp_path / "units")
    unit = d / "dicomnode-scp.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    res = verify(d, "dicomnode-scp.service")
    assert "Unknown key" in res.stderr and "ProtectSystm" in res.stderr
    unit.write_text(unit.read_text().replace(_local_command(), "/nonexistent/dicomnode"))
    res = verify(d, "dicomnode-scp.service")
    assert res.returncode != 0 and "not executable" in res.stderr


@pytest.mark.parametrize("name", ["dicomnode-scp.service", "dicomnode-worker@0.service"])
def test_hardening_exposure_is_low(tmp_path: Path, name: str) -> None:
    """systemd's own hardening review: overall exposure at most 3.0 (of 10)."""
    d = copy_units(tmp_path / "units")
    cmd = [_tool("systemd-analyze"), "security", "--offline=true", "--threshold=30"]
    res = subprocess.run(
        [*cmd, "--no-pager", f"./{name}"],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert level is not None and float(level.group(1)) <= 3.0


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_confined_as_the_service_user(name: str) -> None:
    svc = parse_unit(UNITS / name)["Service"]
    assert svc["User"] == ["glip-node"] and svc["Group"] == ["glip-node"]
    assert svc["ProtectSystem"] == ["strict"]
    rw = " ".join(svc["ReadWritePaths"]).split()
    assert STATE_DIR in rw and "-/srv/glip-node" in rw
    assert svc["StateDirectory"] == ["glip-node"]
    assert svc["WorkingDirectory"] == [STATE_DIR]
    assert "DICOMNODE_CONFIG=/etc/glip-node/node.yaml" in svc["Environment"]
    assert svc["NoNewPrivileges"] == ["yes"] and svc["CapabilityBoundingSet"] == [""]
    assert svc["ExecStart"][0].startswith(INSTALLED_COMMAND + " ")


def test_service_commands_and_restart_policy() -> None:
    scp = parse_unit(UNITS / "dicomnode-scp.service")
    worker = parse_unit(UNITS / "dicomnode-worker@.service")
    retrain = parse_unit(UNITS / "dicomnode-retrain.service")
    timer = parse_unit(UNITS / "dicomnode-retrain.timer")
    assert scp["Service"]["ExecStart"] == [f"{INSTALLED_COMMAND} serve"]
    assert worker["Service"]["ExecStart"] == [f"{INSTALLED_COMMAND} worker --index %i"]
    assert "CUDA_VISIBLE_DEVICES=%i" in worker["Service"]["Environment"]
    assert retrain["Service"]["ExecStart"] == [f"{INSTALLED_COMMAND} retrain"]
    for unit in (scp, worker):
        assert unit["Service"]["Restart"] == ["on-failure"]
        assert unit["Service"]["RestartPreventExitStatus"] == ["2"]  # bad configuration
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert retrain["Service"]["Type"] == ["oneshot"]
    assert timer["Timer"]["Unit"] == ["dicomnode-retrain.service"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    res = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={root}", str(UNITS / "glip-node.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("glip-node:"))
    assert entry[5] == STATE_DIR and entry[6] == "/usr/sbin/nologin"
    assert int(entry[2]) < 1000  # a system user


def test_multi_host_example_loads_and_fits_the_units() -> None:
    cfg = load_config(REPO / "configs" / "multi-host.yaml")
    assert cfg.database_url.startswith("postgresql+psycopg://")
    assert "@" in cfg.database_url and ":5432/" in cfg.database_url
    # The shared archive and the state folder are writable under the units' sandbox.
    rw = " ".join(parse_unit(UNITS / "dicomnode-scp.service")["Service"]["ReadWritePaths"])
    writable = [Path(p.lstrip("-")) for p in rw.split()]
    assert cfg.archive_dir.is_absolute()
    assert any(cfg.archive_dir.is_relative_to(w) for w in writable)
    assert cfg.var_dir == Path(STATE_DIR)
    assert cfg.worker.device == "cuda" and cfg.worker.threads >= 1
    assert cfg.metrics.enabled and cfg.logging.format == "json"
    assert cfg.retention.enabled and cfg.destinations
    assert cfg.network.tls.enabled


def test_multi_host_password_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As node.env does it: the environment overrides the file's URL."""
    url = "postgresql+psycopg://glipnode:s3cret@db.example.org:5432/glipnode"
    monkeypatch.setenv("DICOMNODE_DATABASE__URL", url)
    assert load_config(REPO / "configs" / "multi-host.yaml").database_url == url
