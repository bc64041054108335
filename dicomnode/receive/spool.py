"""Bounded holding of received data sets: memory up to a threshold, then a temporary file,
and nothing past the maximum instance size; and streaming inflation of deflated data sets
under the same cap.

Whatever a peer sends, an association holds at most ``spool_above`` bytes of a data set
in memory; a data set larger than ``max_bytes`` (as received, or once inflated) is
counted but not kept, and is refused by the C-STORE handler.
"""

from __future__ import annotations

import contextlib
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SpoolLimits:
    """Where and how much of a received data set is held."""

    max_bytes: int
    spool_above: int
    spool_dir: Path | None = None


class OversizeError(Exception):
    """A data set (received, or once inflated) is larger than the configured maximum."""


class SpoolBuffer(BytesIO):
    """A write-once data set buffer for pynetdicom's DIMSE layer (which needs a BytesIO).

    Bytes are kept in memory up to ``limits.spool_above``, then moved to an anonymous
    temporary file in ``limits.spool_dir``; past ``limits.max_bytes`` nothing more is
    kept and :attr:`oversized` is set (:attr:`size` still counts every byte). Read the
    content through :meth:`reader` or :meth:`chunks`; :meth:`close` frees it.
    """

    def __init__(self, limits: SpoolLimits) -> None:
        super().__init__()
        self.limits = limits
        self.size = 0
        self.oversized = False
        self._file: IO[bytes] | None = None

    @property
    def spooled(self) -> bool:
        """Whether the content is in a temporary file."""
        return self._file is not None

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        if self.oversized:
            return n
        if self.size > self.limits.max_bytes:
            self.oversized = True
            self._drop()
            return n
        if self._file is None and self.size > self.limits.spool_above:
            where = self.limits.spool_dir
            # closed by close() or _drop(): it lives as long as the buffer
            self._file = tempfile.TemporaryFile(dir=str(where) if where is not None else None)  # noqa: SIM115
            self._file.write(super().getbuffer())
            super().seek(0)
            super().truncate()
        if self._file is not None:
            self._file.write(data)
            return n
        return super().write(data)

    def _drop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().seek(0)
        super().truncate()

    def reader(self) -> IO[bytes]:
        """A binary stream over the content, positioned at its start."""
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            return self._file
        super().seek(0)
        return self

    @contextlib.contextmanager
    def body(self) -> Iterator[memoryview | IO[bytes]]:
        """The content: a view of the memory (released on exit), or the temporary file
        positioned at its start."""
        if self._file is not None:
            yield self.reader()
            return
        with super().getbuffer() as view:
            yield view

    def close(self) -> None:
        self._drop()
        super().close()


def inflate_capped(raw: IO[bytes], limits: SpoolLimits) -> IO[bytes]:
    """Inflate a raw deflate stream (Deflated Explicit VR Little Endian) as a stream, into
    memory or a temporary file (as :class:`SpoolBuffer` holds data), never past
    ``limits.max_bytes``.

    Raises :class:`OversizeError` when the inflated data set would be larger, and
    ``zlib.error`` (or ValueError when the stream ends early) for a broken stream.
    """
    where = str(limits.spool_dir) if limits.spool_dir is not None else None
    out = tempfile.SpooledTemporaryFile(max_size=limits.spool_above, dir=where)  # noqa: SIM115 (returned)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or raw.read(_CHUNK)
            block = inflater.decompress(data, _CHUNK)
            if not data and not block:
                raise ValueError("the deflate stream ends before its last block")
            total += len(block)
            if total > limits.max_bytes:
                raise OversizeError(
                    f"the data set inflates to more than the maximum instance size "
                    f"({limits.max_bytes} bytes)"
                )
            out.write(block)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def as_spool(data: BytesIO | None, limits: SpoolLimits) -> SpoolBuffer | None:
    """``data`` as a :class:`SpoolBuffer` (a copy when it is a plain BytesIO)."""
    if data is None or isinstance(data, SpoolBuffer):
        return data
    buf = SpoolBuffer(limits)
    with data.getbuffer() as view:
        buf.write(view)
    return buf
