"""Bounded holding of received data sets (issue 11, item 4): the spool buffer keeps at
most its threshold in memory and nothing past the maximum; a deflate bomb is inflated as
a stream and stopped at the cap without ever holding the inflated data."""

from __future__ import annotations

import io
import tracemalloc
import zlib
from io import BytesIO
from pathlib import Path

import pytest

from dicomnode.receive.spool import OversizeError, SpoolBuffer, SpoolLimits, inflate_capped


def _bomb(inflated: int) -> bytes:
    """A raw deflate stream of ``inflated`` zero bytes, made without holding them."""
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(1 << 20)
    out = [z.compress(block) for _ in range(inflated >> 20)]
    return b"".join([*out, z.flush()])


def test_spool_buffer_moves_to_disk_past_its_threshold(tmp_path: Path) -> None:
    buf = SpoolBuffer(SpoolLimits(max_bytes=1 << 20, spool_above=64 << 10, spool_dir=tmp_path))
    data = bytes(range(256)) * 1000  # 256 kB in pieces
    for i in range(0, len(data), 16384):
        buf.write(data[i : i + 16384])
    assert buf.spooled and not buf.oversized and buf.size == len(data)
    assert BytesIO.getbuffer(buf).nbytes == 0  # nothing left in memory
    assert buf.reader().read() == data
    with buf.body() as body:
        assert isinstance(body, io.IOBase) and body.read() == data
    buf.close()


def test_spool_buffer_keeps_nothing_past_the_maximum(tmp_path: Path) -> None:
    buf = SpoolBuffer(SpoolLimits(max_bytes=100_000, spool_above=10_000, spool_dir=tmp_path))
    for _ in range(50):
        buf.write(bytes(10_000))
    assert buf.oversized and buf.size == 500_000 and not buf.spooled
    assert BytesIO.getbuffer(buf).nbytes == 0
    small = SpoolBuffer(SpoolLimits(max_bytes=100_000, spool_above=10_000))
    small.write(b"abc")
    with small.body() as body:
        assert bytes(body) == b"abc"  # in memory, as a view
    small.close()


def test_deflate_bomb_is_stopped_at_the_cap_in_bounded_memory(tmp_path: Path) -> None:
    bomb = _bomb(64 << 20)
    limits = SpoolLimits(max_bytes=4 << 20, spool_above=1 << 20, spool_dir=tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(OversizeError, match="maximum instance size"):
            inflate_capped(BytesIO(bomb), limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the inflated 64 MiB were never held


def test_inflate_within_the_cap_and_broken_streams(tmp_path: Path) -> None:
    limits = SpoolLimits(max_bytes=8 << 20, spool_above=1 << 20, spool_dir=tmp_path)
    payload = bytes(range(256)) * 20_000  # 5 MB: spooled to a file on the way
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = z.compress(payload) + z.flush()
    with inflate_capped(BytesIO(stream), limits) as out:
        assert out.read() == payload
    with pytest.raises(ValueError, match="ends before its last block"):
        inflate_capped(BytesIO(stream[: len(stream) // 2]), limits)
    with pytest.raises(zlib.error):
        inflate_capped(BytesIO(b"\xff" * 64), limits)
