"""Senders that behave like a PACS forwarding series: each sends its series one
association at a time and, when an association breaks (the node was killed), resends
what was not acknowledged once the node answers again. Half of them are dcmtk's storescu,
half pynetdicom SCUs; every acknowledged instance is recorded in a :class:`Ledger`."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from bench.chaos_procs import NODE_AE

SenderKind = Literal["dcmtk", "pynetdicom"]


@dataclass(frozen=True)
class SeriesFiles:
    """A phantom series on disk, with its truth (RCC, LCC, NCC in LPS mm)."""

    series_uid: str
    study_uid: str
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]
    truth_lps: tuple[tuple[float, float, float], ...]


@dataclass
class Ledger:
    """What the senders were told: acknowledged SOP Instance UIDs, attempts, timings."""

    acked: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> series UID
    associations: int = 0
    broken: int = 0
    first_send: float | None = None
    last_ack: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, series: SeriesFiles, acked: set[Path], complete: bool) -> None:
        by_path = dict(zip(series.files, series.sop_uids, strict=True))
        with self.lock:
            self.associations += 1
            self.broken += not complete
            for p in acked:
                self.acked[by_path[p]] = series.series_uid
            if acked:
                self.last_ack = time.monotonic()

    def started(self) -> None:
        with self.lock:
            if self.first_send is None:
                self.first_send = time.monotonic()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


_SENDING = re.compile(r"Sending file: (.+)$")
_SUCCESS = "Received Store Response (Success)"


def send_dcmtk(port: int, files: list[Path], aet: str) -> tuple[set[Path], bool]:
    """Send with dcmtk's storescu; the files it got a Success response for, and whether
    the association completed."""
    cmd = ["/usr/bin/storescu", "-v", "-to", "20", "-ta", "20", "-td", "60"]
    cmd += ["-aet", aet, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)]
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    except subprocess.TimeoutExpired:
        return set(), False
    acked: set[Path] = set()
    current: Path | None = None
    for line in (r.stdout + r.stderr).splitlines():
        m = _SENDING.search(line)
        if m:
            current = Path(m.group(1).strip())
        elif _SUCCESS in line and current is not None:
            acked.add(current)
            current = None
    return acked, r.returncode == 0 and len(acked) == len(files)


def send_pynetdicom(port: int, files: list[Path], aet: str) -> tuple[set[Path], bool]:
    """Send with a pynetdicom SCU; the files answered with Success, and whether the
    association completed."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    acked: set[Path] = set()
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    except (OSError, RuntimeError):
        return acked, False
    if not assoc.is_established:
        return acked, False
    try:
        for f in files:
            rsp = assoc.send_c_store(dcmread(f))
            if "Status" not in rsp:  # aborted: the node is gone
                return acked, False
            if int(rsp.Status) == 0:
                acked.add(f)
        assoc.release()
    except (OSError, RuntimeError, ValueError):
        return acked, False
    finally:
        if assoc.is_established:
            assoc.abort()
    return acked, len(acked) == len(files)


SENDERS: dict[SenderKind, Callable[[int, list[Path], str], tuple[set[Path], bool]]] = {
    "dcmtk": send_dcmtk,
    "pynetdicom": send_pynetdicom,
}


def sender_loop(
    kind: SenderKind,
    aet: str,
    port: int,
    series: list[SeriesFiles],
    ledger: Ledger,
    deadline: float,
    retry_s: float = 1.0,
) -> list[str]:
    """Send each series until every instance is acknowledged (or the deadline passes);
    the problems met (series left incomplete)."""
    send = SENDERS[kind]
    problems: list[str] = []
    for s in series:
        pending = list(s.files)
        while pending and time.monotonic() < deadline:
            ledger.started()
            acked, complete = send(port, pending, aet)
            ledger.record(s, acked, complete)
            pending = [f for f in pending if f not in acked]
            if pending:
                time.sleep(retry_s)
        if pending:
            problems.append(f"{aet}: {len(pending)} instances of {s.series_uid} never acked")
    return problems


class Senders:
    """Several senders in threads, alternating dcmtk and pynetdicom."""

    def __init__(self, port: int, plan: list[list[SeriesFiles]], timeout_s: float) -> None:
        self.ledger = Ledger()
        self.problems: list[str] = []
        deadline = time.monotonic() + timeout_s
        kinds: tuple[SenderKind, ...] = ("dcmtk", "pynetdicom")
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(kinds[i % 2], f"SENDER{i + 1}", port, series, deadline),
                name=f"sender{i + 1}",
                daemon=True,
            )
            for i, series in enumerate(plan)
        ]

    def _run(
        self, kind: SenderKind, aet: str, port: int, series: list[SeriesFiles], deadline: float
    ) -> None:
        self.problems += sender_loop(kind, aet, port, series, self.ledger, deadline)

    def start(self) -> Senders:
        for t in self._threads:
            t.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def join(self) -> None:
        for t in self._threads:
            t.join()
