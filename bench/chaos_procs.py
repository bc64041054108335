"""The node's real processes for the chaos suite: ``dicomnode serve`` and ``dicomnode
worker`` as children that can be killed with SIGKILL and restarted, their configuration
file, and a sampler of their peak memory (RSS, children included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from dicomnode.operate.localpacs import free_port

CALLERS = ("STORESCU", "ECHOSCU", "SENDER1", "SENDER2", "SENDER3", "SENDER4", "CORPUS")
NODE_AE = "GLIPNODE"


def node_settings(
    var_dir: Path,
    db_url: str,
    port: int,
    *,
    quiet_s: float,
    pacs: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """A node configuration for the suite: every other setting at its default (so the
    memory and size limits are the defaults); short timers so that a run takes minutes."""
    cfg: dict[str, Any] = {
        "var_dir": str(var_dir),
        "database": {"url": db_url},
        "network": {"port": port},
        "access": {"allowed": [{"ae_title": ae} for ae in CALLERS]},
        "archive": {"min_free": "0"},
        "assembler": {"quiet_time_s": quiet_s, "sweep_interval_s": 0.2},
        "retention": {"enabled": False},
        # a killed worker's job is reclaimed once its lease expires
        "worker": {"poll_interval_s": 0.2, "lease_s": 12.0},
        # retries outlast a PACS outage of several minutes without dead letters
        "delivery": {
            "poll_interval_s": 0.2,
            "backoff_initial_s": 1.0,
            "backoff_max_s": 10.0,
            "max_attempts": 60,
            "breaker_open_s": 5.0,
        },
    }
    if pacs is not None:
        ae, pacs_port = pacs
        cfg["destinations"] = [
            {"name": "pacs", "ae_title": ae, "host": "127.0.0.1", "port": pacs_port}
        ]
    return cfg


def echo_ok(port: int, timeout_s: float = 10.0) -> bool:
    """Whether the node answers dcmtk's echoscu with Success."""
    cmd = ["/usr/bin/echoscu", "-to", str(int(timeout_s)), "-aet", "ECHOSCU", "-aec", NODE_AE]
    try:
        r = subprocess.run(
            [*cmd, "127.0.0.1", str(port)], capture_output=True, timeout=timeout_s + 5
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class PeakMemory:
    """Peak resident memory of a process tree: the process's own high-water mark (VmHWM,
    exact) or the sampled sum over it and its children, whichever is larger."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()

    def watch(self, pid: int | None) -> None:
        """Follow ``pid`` (a restarted process) from now on."""
        self._pid = pid

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        pid = self._pid
        if pid is None:
            return
        total = _status_kib(pid, "VmRSS") + sum(_status_kib(c, "VmRSS") for c in _children(pid))
        peak = max(total, _status_kib(pid, "VmHWM"))
        self.peak_bytes = max(self.peak_bytes, peak * 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class NodeProcess:
    """One ``dicomnode <command>`` child process that can be SIGKILLed and restarted."""

    def __init__(self, command: str, config: Path, log: Path, cwd: Path) -> None:
        self.command, self.config, self.log, self.cwd = command, config, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "--config", str(self.config), self.command],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Node:
    """``dicomnode serve`` and ``dicomnode worker`` on one configuration."""

    def __init__(self, folder: Path, settings: dict[str, Any], *, worker: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = int(settings["network"]["port"])
        self.config = folder / "node.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.serve = NodeProcess("serve", self.config, folder / "serve.log", folder)
        self.worker = (
            NodeProcess("worker", self.config, folder / "worker.log", folder) if worker else None
        )
        self.memory = PeakMemory()

    @staticmethod
    def new_port() -> int:
        return free_port()

    def start_serve(self, timeout_s: float = 90.0) -> None:
        """Start ``serve`` and wait until it answers C-ECHO."""
        self.serve.start()
        self.memory.watch(self.serve.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.serve.alive():
                raise RuntimeError(f"serve exited:\n{self.tail('serve')}")
            if echo_ok(self.port, 5):
                return
            time.sleep(0.2)
        raise RuntimeError(f"serve did not answer C-ECHO in {timeout_s:.0f} s")

    def start(self) -> Node:
        self.start_serve()
        if self.worker is not None:
            self.worker.start()
        return self

    def kill_serve(self) -> None:
        self.memory.sample()
        self.serve.kill()

    def tail(self, which: str, lines: int = 40) -> str:
        log = self.folder / f"{which}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.memory.sample()
        self.memory.stop()
        if self.worker is not None:
            self.worker.stop()
        self.serve.stop()
