"""On-disk archive of received instances: layout, atomic durable writes, duplicates.

Files are ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` (layout ``uid``) or
``<root>/<h0h1>/<h2h3>/<SOPInstanceUID>.dcm`` with ``h`` the sha256 of the SOP Instance UID
(layout ``hashed``). A file only ever appears under its final name complete: it is written
to ``<root>/.incoming``, fsynced, then linked (keep first: fails if the name exists) or
renamed over the old one (keep newest), and the folder is fsynced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from dicomnode.config import ArchiveConfig

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
INCOMING = ".incoming"

Buffer = bytes | bytearray | memoryview
Chunk = Buffer | IO[bytes]
"""A piece of a file to write: bytes, or a binary stream read from its position to its end."""
_COPY_BLOCK = 1 << 20


def chunk_size(chunk: Chunk) -> int:
    """The bytes ``chunk`` holds (for a stream: from its position to its end)."""
    if isinstance(chunk, bytes | bytearray | memoryview):
        return memoryview(chunk).nbytes
    here = chunk.tell()
    end = chunk.seek(0, os.SEEK_END)
    chunk.seek(here)
    return end - here


class ArchiveError(OSError):
    """The archive could not store a file."""


def safe_name(uid: str) -> str:
    """``uid`` when it is a well-formed UID, else a stable hash-derived name (no path tricks)."""
    if len(uid) <= 64 and _SAFE_UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True)
class DiskSpace:
    """Free and total bytes of the archive's file system and the configured watermark."""

    free: int
    total: int
    watermark: int

    def allows(self, incoming: int) -> bool:
        """Whether ``incoming`` more bytes keep free space at or above the watermark."""
        return self.free - incoming >= self.watermark


class Archive:
    """The archive folder. Thread-safe; one instance per process is enough."""

    def __init__(
        self,
        root: Path,
        *,
        layout: Literal["uid", "hashed"] = "uid",
        fsync: bool = True,
        min_free: str = "0",
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.fsync = fsync
        self._cfg = ArchiveConfig(layout=layout, fsync=fsync, min_free=min_free)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = {self.root, self.incoming}
        self._dir_lock = threading.Lock()
        self._counter = 0

    @classmethod
    def from_config(cls, root: Path, cfg: ArchiveConfig) -> Archive:
        """An archive at ``root`` configured by the archive section."""
        return cls(root, layout=cfg.layout, fsync=cfg.fsync, min_free=cfg.min_free)

    def relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Path of an instance relative to the root (POSIX separators)."""
        name = safe_name(sop_uid) + ".dcm"
        if self.layout == "hashed":
            h = hashlib.sha256(sop_uid.encode("utf-8", "surrogateescape")).hexdigest()
            return f"{h[:2]}/{h[2:4]}/{name}"
        return f"{safe_name(study_uid)}/{safe_name(series_uid)}/{name}"

    def path(self, relpath: str) -> Path:
        """Absolute path of an archived file."""
        return self.root / relpath

    def space(self) -> DiskSpace:
        """Free space of the archive's file system against the watermark."""
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        return DiskSpace(
            free=st.f_bavail * st.f_frsize, total=total, watermark=self._cfg.min_free_bytes(total)
        )

    def clean_incoming(self) -> int:
        """Remove temporary files left by a crash; returns how many."""
        n = 0
        for p in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

    def write_temp(self, chunks: Iterable[Chunk]) -> tuple[Path, int]:
        """Write ``chunks`` to a new temporary file in the archive (fsynced when configured);
        returns its path and size."""
        with self._dir_lock:
            self._counter += 1
            n = self._counter
        tmp = self.incoming / f"{os.getpid()}-{threading.get_ident()}-{n}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        size = 0
        try:
            for chunk in chunks:
                size += _write_all(fd, chunk)
            if self.fsync:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        return tmp, size

    def commit_new(self, tmp: Path, relpath: str) -> bool:
        """Give ``tmp`` its final name unless that name exists. True when it was placed;
        False (and ``tmp`` removed) when a file of that name already exists."""
        final = self.root / relpath
        try:
            self._with_dir(final.parent, lambda: os.link(tmp, final))
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._sync_dir(final.parent)
        return True

    def commit_replace(self, tmp: Path, relpath: str) -> None:
        """Give ``tmp`` its final name, atomically replacing any file of that name."""
        final = self.root / relpath
        try:
            self._with_dir(final.parent, lambda: os.replace(tmp, final))
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sync_dir(final.parent)

    def discard(self, relpath: str) -> None:
        """Remove an archived file (used when a duplicate lost a race)."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / relpath).unlink()
        self._sync_dir((self.root / relpath).parent)

    def _with_dir(self, d: Path, op: Callable[[], None]) -> None:
        """Run ``op`` (a link or rename into ``d``), creating ``d`` first when needed."""
        self._ensure_dir(d)
        try:
            op()
        except FileNotFoundError:  # the folder was removed behind our back: recreate once
            self._known_dirs.discard(d)
            self._ensure_dir(d)
            op()

    def _ensure_dir(self, d: Path) -> None:
        if d in self._known_dirs:
            return
        with self._dir_lock:
            missing: list[Path] = []
            p = d
            while not p.exists():
                missing.append(p)
                p = p.parent
            for m in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    m.mkdir()
                self._sync_dir(m.parent)
            self._known_dirs.add(d)

    def _sync_dir(self, d: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, chunk: Chunk) -> int:
    """Write ``chunk`` (a stream: block by block) to ``fd``; the bytes written."""
    if not isinstance(chunk, bytes | bytearray | memoryview):
        n = 0
        while block := chunk.read(_COPY_BLOCK):
            n += _write_all(fd, block)
        return n
    view = memoryview(chunk)
    n = len(view)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return n
