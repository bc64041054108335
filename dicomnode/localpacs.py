"""A local PACS for the demo, benchmarks and tests: a real Orthanc when installed,
otherwise a small built-in storage SCP that keeps what it receives in a folder.

Both listen on loopback only, on free ports, with their state in a given folder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

ORTHANC_BIN = "/usr/sbin/Orthanc"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPacs(Protocol):
    """What the demo needs from a PACS."""

    ae_title: str
    port: int
    kind: str

    def sop_instance_uids(self) -> set[str]: ...

    def stop(self) -> None: ...


class OrthancServer:
    """A throwaway Orthanc on loopback (DICOM and REST ports free), state in ``folder``."""

    kind = "Orthanc"

    def __init__(self, folder: Path, ae_title: str = "ORTHANC") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = folder / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        """Whether the Orthanc binary is installed."""
        return Path(ORTHANC_BIN).exists() or shutil.which("Orthanc") is not None

    def config(self) -> dict[str, Any]:
        """The JSON configuration this instance runs with."""
        return {
            "Name": "glip-node local PACS",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": True,
            "HttpServerEnabled": True,
            "Plugins": [],
            "StorageCompression": False,
        }

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        """Start Orthanc and wait until its REST API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg_path = self.folder / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        exe = ORTHANC_BIN if Path(ORTHANC_BIN).exists() else shutil.which("Orthanc") or "Orthanc"
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen([exe, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.log_path}:\n{self.log()}")
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def log(self) -> str:
        """Orthanc's log so far (last 4000 characters)."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def rest(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(self.http_url + path, timeout=10) as r:
            return json.loads(r.read())

    def rest_bytes(self, path: str) -> bytes:
        """GET a REST resource as bytes (e.g. /instances/ID/file)."""
        with urllib.request.urlopen(self.http_url + path, timeout=30) as r:
            data: bytes = r.read()
            return data

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        ids: list[str] = self.rest("/instances")
        return ids

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        return {
            self.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
            for i in self.instances()
        }

    def find_sop(self, sop_uid: str) -> str | None:
        """The Orthanc id of an instance by SOP Instance UID."""
        for i in self.instances():
            if self.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] == sop_uid:
                return i
        return None

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


class BuiltinStoreSCP:
    """A minimal storage SCP (pynetdicom) that writes what it receives to ``folder`` and
    counts successful stores per SOP Instance UID."""

    kind = "built-in storage SCP"

    def __init__(self, folder: Path, ae_title: str = "LOCALPACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> BuiltinStoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def _on_store(self, event: Event) -> int:
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        ds.save_as(self.folder / f"{uid}.dcm", enforce_file_format=True)
        with self._lock:
            self.counts[uid] += 1
        return 0x0000

    def sop_instance_uids(self) -> set[str]:
        with self._lock:
            return set(self.counts)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def start_local_pacs(folder: Path, prefer_orthanc: bool = True) -> OrthancServer | BuiltinStoreSCP:
    """Orthanc when installed (and preferred), else the built-in storage SCP; started."""
    if prefer_orthanc and OrthancServer.available():
        return OrthancServer(folder).start()
    return BuiltinStoreSCP(folder).start()
