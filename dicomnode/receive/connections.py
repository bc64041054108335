"""Admission of TCP connections before any DICOM is spoken: a per-host connection limit,
a deadline for the association request, and the TLS handshake off the accept loop.

A peer that connects and stays silent costs a thread until ``request_timeout_s`` and
never an association slot; one host holds at most ``max_connections_per_host``
connections; a silent or broken TLS client never blocks the accepting thread.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time

log = logging.getLogger("dicomnode.receive.connections")

_PEEK_LIMIT = 1 << 16  # an A-ASSOCIATE-RQ longer than this is not waited for in full


class HostSlots:
    """Counts open connections per peer address against a limit. Thread-safe."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, host: str) -> bool:
        """Count a new connection from ``host``; False (nothing counted) at the limit."""
        with self._lock:
            n = self._open.get(host, 0)
            if n >= self.per_host:
                return False
            self._open[host] = n + 1
            return True

    def give(self, host: str) -> None:
        """Uncount a connection taken with :meth:`take`."""
        with self._lock:
            n = self._open.get(host, 0) - 1
            if n > 0:
                self._open[host] = n
            else:
                self._open.pop(host, None)

    def count(self, host: str) -> int:
        """Open connections from ``host``."""
        with self._lock:
            return self._open.get(host, 0)


def _readable(sock: socket.socket, deadline: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    try:
        ready, _, _ = select.select([sock], [], [], remaining)
    except (OSError, ValueError):
        return False
    return bool(ready)


def wait_for_request(sock: socket.socket, deadline: float) -> bool:
    """Wait until the peer has sent a whole PDU header and (up to 64 KiB) its body, i.e.
    its A-ASSOCIATE-RQ, by ``deadline`` (``time.monotonic()``). False when it has not or
    closed the connection. On a TLS socket the first byte is enough."""
    if isinstance(sock, ssl.SSLSocket):
        return _readable(sock, deadline)
    want = 6
    while _readable(sock, deadline):
        try:
            head = sock.recv(want, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:
            return False
        if not head:
            return False  # closed by the peer
        if len(head) >= 6 and want == 6:
            (length,) = struct.unpack(">L", head[2:6])
            want = min(6 + length, _PEEK_LIMIT)
        if len(head) >= want:
            return True
        time.sleep(0.01)  # part of the PDU is there: let the rest arrive
    return False


def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, deadline: float
) -> ssl.SSLSocket | None:
    """The server side of the TLS handshake, finished by ``deadline``; None (logged, the
    socket closed) when it fails or the client is too slow."""
    peer = _peer(sock)
    if not _readable(sock, deadline):
        log.warning("TLS connection from %s closed: no handshake within the request timeout", peer)
        close_quietly(sock)
        return None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        tls = context.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        log.warning("TLS handshake with %s failed: %s", peer, exc)
        close_quietly(sock)
        return None
    tls.settimeout(None)
    return tls


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "(disconnected peer)"


def close_quietly(sock: socket.socket) -> None:
    """Shut down and close ``sock``, ignoring a peer that is already gone."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
