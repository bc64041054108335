"""A local PACS for the demo, benchmarks and tests: a real Orthanc when installed,
otherwise a small built-in storage SCP that keeps what it receives in a folder.

Both listen on loopback only, on free ports, with their state in a given folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
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

log = logging.getLogger(__name__)


def dcmtk_tool(name: str) -> str | None:
    """The path of dcmtk's ``name`` (storescu, echoscu, ...) on PATH, or None.

    The Python environment's ``bin/`` is skipped: pynetdicom installs apps of the same
    names there (storescu, echoscu, storescp, ...) that take other options."""
    own_bin = (Path(sys.prefix) / "bin").resolve()
    dirs = [d for d in os.get_exec_path() if d and Path(d).resolve() != own_bin]
    return shutil.which(name, path=os.pathsep.join(dirs))


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
    """A throwaway Orthanc on loopback (free DICOM and REST ports), state in ``folder``.

    Orthanc 1.10 has no bind-address setting for DICOM (it listens on every interface);
    its REST API is limited to localhost (RemoteAccessAllowed false).
    """

    kind = "Orthanc"

    def __init__(self, folder: Path, ae_title: str = "ORTHANC") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.http_port = free_port()
        while self.http_port == self.port:
            self.http_port = free_port()
        self.log_path = folder / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dicom_port(self) -> int:
        """Orthanc's DICOM port (alias of ``port``)."""
        return self.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @staticmethod
    def binary() -> str | None:
        """The Orthanc executable, or None when it is not installed."""
        return ORTHANC_BIN if Path(ORTHANC_BIN).exists() else shutil.which("Orthanc")

    @staticmethod
    def available() -> bool:
        """Whether the Orthanc binary is installed."""
        return OrthancServer.binary() is not None

    def config(self) -> dict[str, Any]:
        """The JSON configuration this instance runs with."""
        storage = str(self.folder / "storage")
        return {
            "Name": "glip-node local PACS",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomThreadsCount": 2,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {},
        }

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        """Start Orthanc and wait until its REST API answers on our port."""
        exe = self.binary()
        if exe is None:
            raise RuntimeError("Orthanc is not installed: run scripts/setup.sh (Debian orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg_path = self.folder / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        self._proc = subprocess.Popen(
            [exe, f"--logfile={self.log_path}", "--no-jobs", str(cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            try:
                if self.get("/system").get("DicomPort") == self.port:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        code = self._proc.poll()
        self.stop()
        raise RuntimeError(
            f"Orthanc did not answer within {timeout_s:.0f} s (exit code {code}); "
            f"its log:\n{self.log()}"
        )

    def alive(self) -> bool:
        """Whether the Orthanc process is running."""
        return self._proc is not None and self._proc.poll() is None

    def log(self, tail_lines: int = 200) -> str:
        """The last lines of Orthanc's log."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail_lines:])

    def get(self, path: str) -> Any:
        """GET a REST resource (e.g. ``/system``) as JSON."""
        with urllib.request.urlopen(self.http_url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes) -> Any:
        """POST ``body`` to a REST resource; the JSON answer."""
        req = urllib.request.Request(self.http_url + path, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        with urllib.request.urlopen(
            f"{self.http_url}/instances/{instance_id}/file", timeout=30
        ) as r:
            data: bytes = r.read()
            return data

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """An instance's tags by keyword (``/instances/ID/simplified-tags``)."""
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        tags = (self.get(f"/instances/{i}")["MainDicomTags"] for i in self.instances())
        return {t["SOPInstanceUID"] for t in tags}

    def find_sop(self, sop_uid: str) -> str | None:
        """The Orthanc id of the instance with this SOP Instance UID, or None."""
        for hit in self.post("/tools/lookup", sop_uid.encode("ascii")):
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
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
    """Orthanc when installed (and preferred), else the built-in storage SCP; started.
    An Orthanc that fails to start is logged and replaced by the built-in SCP."""
    if prefer_orthanc and OrthancServer.available():
        try:
            return OrthancServer(folder / "orthanc").start()
        except RuntimeError as exc:
            log.warning("Orthanc did not start (%s); using the built-in storage SCP", exc)
    return BuiltinStoreSCP(folder / "builtin").start()
