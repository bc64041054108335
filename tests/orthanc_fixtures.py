"""A real Orthanc PACS for integration tests: fixture ``orthanc``.

Orthanc (Debian package, ``/usr/sbin/Orthanc``) runs as a subprocess with a temporary JSON
configuration: free DICOM and HTTP ports, storage and index in a temporary folder, HTTP
reachable from localhost only without authentication, any calling AE title allowed to
store and echo, the called AE title not checked, unknown storage SOP classes accepted
(Orthanc 1.10 listens for DICOM on all interfaces; it has no bind-address option).

The Orthanc log is printed at teardown, so pytest shows it with a failing test.
Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_AET = "ORTHANC"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc and a small client of its REST API."""

    ae_title: str
    dicom_port: int
    http_port: int
    root: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/system``) and decode the JSON answer."""
        with urllib.request.urlopen(self.http_url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: bytes) -> Any:
        """POST ``body`` to ``path`` and decode the JSON answer."""
        req = urllib.request.Request(self.http_url + path, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return json.loads(rsp.read())

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return cast(list[str], self.get("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's main tags by keyword (``/instances/ID/simplified-tags``)."""
        return cast(dict[str, Any], self.get(f"/instances/{instance_id}/simplified-tags"))

    def file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance (``/instances/ID/file``)."""
        with urllib.request.urlopen(
            f"{self.http_url}/instances/{instance_id}/file", timeout=30
        ) as rsp:
            return cast(bytes, rsp.read())

    def find_sop(self, sop_uid: str) -> str | None:
        """The Orthanc identifier of the instance with this SOP Instance UID, or None."""
        hits = self.post("/tools/lookup", sop_uid.encode("ascii"))
        for hit in hits:
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def log_text(self, tail_lines: int = 200) -> str:
        """The last lines of Orthanc's log."""
        if not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail_lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def orthanc_config(root: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    """The test configuration (keys as in ``Orthanc --config=-``)."""
    storage = str(root / "storage")
    return {
        "Name": "glip-node-test",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "StorageCompression": False,
        "Plugins": [],
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpThreadsCount": 4,
        "HttpCompressionEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomThreadsCount": 2,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {},
    }


def _start_once(root: Path) -> Orthanc:
    dicom_port, http_port = _free_port(), _free_port()
    while http_port == dicom_port:
        http_port = _free_port()
    cfg_path = root / "orthanc.json"
    cfg_path.write_text(json.dumps(orthanc_config(root, dicom_port, http_port), indent=2))
    log_path = root / "orthanc.log"
    proc = subprocess.Popen(
        [str(ORTHANC_BIN), f"--logfile={log_path}", "--no-jobs", str(cfg_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    server = Orthanc(ORTHANC_AET, dicom_port, http_port, root, log_path, proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.alive():
        try:
            system = server.get("/system")
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.1)
            continue
        if system.get("DicomPort") == dicom_port:
            return server
    server.stop()
    raise RuntimeError(
        f"Orthanc did not answer GET /system within {START_TIMEOUT_S:g} s "
        f"(exit code {proc.returncode}); its log:\n{server.log_text()}"
    )


def start_orthanc(root: Path, tries: int = 3) -> Orthanc:
    """Start Orthanc in ``root`` (a port taken meanwhile by someone else: next ports)."""
    if not ORTHANC_BIN.exists():
        pytest.fail(
            f"Orthanc not found at {ORTHANC_BIN}: run scripts/setup.sh "
            "(it installs the Debian orthanc package)",
            pytrace=False,
        )
    error = ""
    for n in range(tries):
        attempt_root = root / f"run{n}"
        attempt_root.mkdir(parents=True, exist_ok=True)
        try:
            return _start_once(attempt_root)
        except RuntimeError as exc:
            error = str(exc)
    pytest.fail(f"could not start Orthanc after {tries} tries: {error}", pytrace=False)


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A running Orthanc with an empty store; stopped (and its log shown) after the test."""
    root = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(root)
    try:
        yield server
    finally:
        exited = not server.alive()
        server.stop()
        print(f"--- Orthanc log ({server.log_path}) ---\n{server.log_text()}")
        if exited:
            pytest.fail(f"Orthanc exited during the test:\n{server.log_text()}", pytrace=False)
        shutil.rmtree(root, ignore_errors=True)
