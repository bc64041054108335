"""Event-driven pynetdicom acceptor: the same protocol machinery, without polling sleeps.

Stock pynetdicom 3 polls: its DUL thread sleeps 1 ms whenever idle and the association
thread sleeps 1 ms on every loop, so each C-STORE round trip waits for several sleeps
(about 2.5 ms per instance on loopback, more than the transfer of a 512 KB slice). Here:

* the DUL thread waits in ``select`` on the socket and on a wake-up pipe that is written
  whenever a primitive is queued for sending, so it reacts to both at once;
* the association thread blocks on the DIMSE message queue instead of sleeping;
* the socket reads whole PDUs with ``recv_into`` (stock reads 4 KB at a time);
* C-STORE requests go straight to the node's handler and the C-STORE-RSP command set is
  encoded directly (stock builds and encodes it through pydicom data sets);
* TCP_NODELAY is set on accepted connections, TCP_QUICKACK after every read;
* the calling AE title and peer address are checked against the node's allow-list during
  negotiation (A-ASSOCIATE-RJ, "calling AE title not recognised"); every refusal (called
  AE title, allow-list, association limit) is logged with its reason;
* storage SOP classes the peer proposes are accepted as ``accept_class`` says (standard,
  private and unknown ones too), not only the listed supported contexts;
* data sets are received into a :class:`dicomnode.receive.spool.SpoolBuffer` (memory up
  to a threshold, then a temporary file, nothing past the maximum instance size), and a
  PDU longer than the configured limit closes the connection before it is read;
* connections are admitted by :mod:`dicomnode.receive.connections` (per-host limit,
  deadline for the association request, TLS handshake off the accept loop).

The reactor loops below follow pynetdicom 3.0's ``DULServiceProvider.run_reactor`` and
``Association._run_reactor`` (MIT licence) with only the waiting changed.

Why private ground: pynetdicom has no public setting for these waits (the 1 ms sleeps are
literals in ``Association._run_reactor`` and ``DULServiceProvider._run_loop_delay``), so
the gain needs its internals (``_dul_ready``, ``_kill``, ``_serve_request``, the server's
``_handlers``, the AE's ``_servers``...). They are held still by an exact pin: the module
refuses to import outside :data:`PYNETDICOM_TESTED` (pyproject pins the same range), and
``tests/test_netfast_pin.py`` checks the range and every private name used. To move to a
new pynetdicom minor, compare its ``dul.py``, ``association.py`` and ``transport.py`` with
the loops here, then widen both pins together.

``NodeServer(fast=False)`` keeps the allow-list but runs pynetdicom's own association,
DUL, socket and C-STORE path (the node's ``DICOMNODE_ACCEPTOR=stock``, for comparison).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomnode.receive.connections import (
    HostSlots,
    close_quietly,
    tls_handshake,
    wait_for_request,
)
from dicomnode.receive.spool import SpoolBuffer, SpoolLimits

LOGGER = logging.getLogger("dicomnode.receive.netfast")

PYNETDICOM_TESTED = ">=3.0,<3.1"
"""The pynetdicom releases netfast is tested with (the pin in pyproject.toml)."""
_TESTED_MINOR = (3, 0)


def check_pynetdicom_version(version: str) -> None:
    """Raise ImportError unless ``version`` is inside :data:`PYNETDICOM_TESTED`."""
    try:
        minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        minor = ()
    if minor != _TESTED_MINOR:
        raise ImportError(
            f"dicomnode.receive.netfast needs pynetdicom {PYNETDICOM_TESTED}, found {version}. "
            "It replaces pynetdicom's reactor loops through private attributes that change "
            "between minor releases. Install a pynetdicom in that range (pip install "
            f"'pynetdicom{PYNETDICOM_TESTED}'), or port netfast to the new release and widen "
            "PYNETDICOM_TESTED and the pin in pyproject.toml together."
        )


check_pynetdicom_version(pynetdicom.__version__)

Admit = Callable[[str, str], str | None]
"""(calling AE title, peer address) -> None to admit, or the reason for refusing."""

StoreHandler = Callable[[Association, C_STORE, str, str], int]
"""(association, C-STORE request, transfer syntax UID, the context's SOP class UID) ->
DIMSE status."""

AcceptClass = Callable[[str], bool]
"""SOP class UID -> whether storage of it is accepted (beyond the supported contexts)."""


@dataclass(frozen=True)
class ServerLimits:
    """What one peer may cost the server before and during an association."""

    request_timeout_s: float = 5.0
    max_connections_per_host: int = 16
    max_pdu_read: int = 1 << 30
    spool: SpoolLimits = field(default_factory=lambda: SpoolLimits(1 << 30, 16 << 20))


_IDLE_WAIT_S = 0.05  # upper bound of one idle wait: timers and kill flags are seen this fast


def _ui(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b"\x00" if len(b) % 2 else b


def encode_c_store_rsp(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """The command set of a C-STORE-RSP (implicit VR little endian, PS3.7 9.3.1.2)."""
    elements = [
        (0x0002, _ui(sop_class)),
        (0x0100, struct.pack("<H", 0x8001)),
        (0x0120, struct.pack("<H", message_id)),
        (0x0800, struct.pack("<H", 0x0101)),
        (0x0900, struct.pack("<H", status)),
        (0x1000, _ui(sop_instance)),
    ]
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class FastSocket(AssociationSocket):
    """Reads whole PDUs into one buffer, acknowledging at once.

    Linux delays ACKs (up to 40 ms); a sender that writes a PDU in several small pieces
    with Nagle's algorithm on (dcmtk without TCP_NODELAY, many PACS) then waits for that
    ACK on every instance. TCP_QUICKACK after each read removes the wait (it is not
    sticky, hence per read).
    """

    max_read: int = 1 << 30
    """The longest read (PDU) accepted; a longer one closes the connection unread."""

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.max_read:
            raise OSError(f"a PDU of {nr_bytes} bytes exceeds the limit of {self.max_read}")
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if n == 0:
                    break
                got += n
                if _QUICKACK is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        if got < nr_bytes:
            del buf[got:]
        return buf


class FastDUL(DULServiceProvider):
    """DUL whose reactor sleeps in ``select`` on the socket and a wake-up pipe."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _wake(self) -> None:
        # OSError: pipe full (already awake) or closed (reactor ended)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _idle_wait(self) -> None:
        assoc_sock = self.socket
        sock = assoc_sock.socket if assoc_sock is not None else None
        if sock is None or sock.fileno() < 0:
            time.sleep(self._run_loop_delay)
            return
        if self.to_provider_queue.qsize() or not self.event_queue.empty():
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], _IDLE_WAIT_S)
        except (OSError, ValueError):
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with ``time.sleep`` replaced by :meth:`_idle_wait`."""
        self._idle_timer.start()
        sleep = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._idle_wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    LOGGER.error("exception in the DUL reactor, aborting the association: %s", exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    if self.socket is not None:
                        self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                sleep = False
        finally:
            self._wake_r.close()
            self._wake_w.close()


class NodeACSE(ACSE):
    """ACSE that applies the node's checks (called AE title, allow-list, association
    limit: each refusal logged with its reason) and storage-class policy before
    pynetdicom's own negotiation."""

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(rq.calling_ae_title if rq is not None else "").strip()
        called = str(rq.called_ae_title if rq is not None else "").strip()
        server = getattr(self.assoc, "_server", None)
        refusal = self._refusal(calling, called, server)
        if refusal is not None:
            reason, rsd = refusal
            self.requestor.ae_title = calling
            cast(NodeAssociation, self.assoc).reject_reason = reason
            LOGGER.warning(
                "association from %s@%s refused: %s", calling, self.assoc.requestor.address, reason
            )
            self.send_reject(*rsd)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        accept_class: AcceptClass | None = getattr(server, "accept_class", None)
        if accept_class is not None and rq is not None:
            self._support_proposed(rq.presentation_context_definition_list, accept_class)
        super()._negotiate_as_acceptor()

    def _refusal(
        self, calling: str, called: str, server: Any
    ) -> tuple[str, tuple[int, int, int]] | None:
        """(reason, A-ASSOCIATE-RJ result/source/diagnostic) when the request is refused."""
        ours = str(self.acceptor.ae_title or "").strip()
        if self.assoc.ae.require_called_aet and called != ours:
            return f"called AE title {called!r} is not this node's ({ours})", (1, 1, 7)
        admit: Admit | None = getattr(server, "admit", None)
        reason = admit(calling, self.assoc.requestor.address) if admit is not None else None
        if reason is not None:
            return reason, (1, 1, 3)  # permanent, service user, calling AE not recognised
        limit = self.assoc.ae.maximum_associations
        if sum(1 for a in self.assoc.ae.active_associations if a.is_acceptor) > limit:
            return f"association limit reached (network.max_associations = {limit})", (2, 3, 2)
        return None

    def _support_proposed(self, proposed: list[Any], accept_class: AcceptClass) -> None:
        """Add a supported context (the supported transfer syntaxes) for each proposed
        abstract syntax that is not supported yet and that ``accept_class`` accepts."""
        supported = self.acceptor.supported_contexts
        known = {str(cx.abstract_syntax) for cx in supported}
        syntaxes = list(getattr(self.assoc._server, "transfer_syntaxes", []))
        extra: list[PresentationContext] = []
        for rq_cx in proposed:
            uid = str(rq_cx.abstract_syntax)
            if uid in known or not syntaxes or not accept_class(uid):
                continue
            known.add(uid)
            cx = PresentationContext()
            cx.abstract_syntax = uid
            cx.transfer_syntax = syntaxes
            extra.append(cx)
        if extra:
            self.acceptor.supported_contexts = supported + extra


class SpoolingDIMSE(DIMSEServiceProvider):
    """DIMSE provider that receives each data set into a :class:`SpoolBuffer`."""

    def __init__(self, assoc: Association, limits: SpoolLimits) -> None:
        super().__init__(assoc)
        self.limits = limits

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
            self.message.data_set = SpoolBuffer(self.limits)
        super().receive_primitive(primitive)


class NodeAssociation(Association):
    """pynetdicom's acceptor association with the node's checks, storage-class policy
    and bounded data set buffers."""

    reject_reason: str | None = None

    def __init__(self, ae: Any, mode: str, limits: SpoolLimits) -> None:
        super().__init__(ae, mode)
        self.acse = NodeACSE(self)
        self.dimse = SpoolingDIMSE(self, limits)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """C-STORE of a class pynetdicom has no service for (private, vendor) through its
        storage service all the same; everything else as pynetdicom does."""
        context = self._accepted_cx.get(context_id)
        if (
            isinstance(msg, C_STORE)
            and context is not None
            and not self._sent_release
            and msg.is_valid_request
            and uid_to_service_class(str(msg.AffectedSOPClassUID)) is ServiceClass
        ):
            self.dimse.cancel_req = {}
            self._is_paused = True
            StorageServiceClass(self).SCP(msg, context)
            self._is_paused = False
            return
        super()._serve_request(msg, context_id)


class FastAssociation(NodeAssociation):
    """Acceptor association with the event-driven DUL and a blocking reactor."""

    def __init__(self, ae: Any, mode: str, limits: SpoolLimits) -> None:
        super().__init__(ae, mode, limits)
        self.dul = FastDUL(self)
        # pynetdicom pushes the timeouts into the DUL when they are set: set them again.
        self.acse_timeout = self.ae.acse_timeout
        self.connection_timeout = self.ae.connection_timeout
        self.dimse_timeout = self.ae.dimse_timeout
        self.network_timeout = self.ae.network_timeout

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """C-STORE straight to the server's store handler with a directly encoded response;
        everything else through pynetdicom's service classes."""
        handler: StoreHandler | None = getattr(self._server, "store_handler", None)
        context = self._accepted_cx.get(context_id)
        if (
            handler is None
            or context is None
            or not isinstance(msg, C_STORE)
            or self._sent_release
            or not msg.is_valid_request
        ):
            super()._serve_request(msg, context_id)
            return
        try:
            status = handler(
                self, msg, str(context.transfer_syntax[0]), str(context.abstract_syntax)
            )
        except Exception:
            LOGGER.exception("exception in the C-STORE handler")
            status = 0xC211
        if not self.is_established:
            return
        rsp = encode_c_store_rsp(
            int(msg.MessageID or 0),
            str(msg.AffectedSOPClassUID),
            str(msg.AffectedSOPInstanceUID),
            status,
        )
        pdata = P_DATA()
        # one PDV: message control header 0x03 = command, last fragment
        cast(Any, pdata).presentation_data_value_list = [[context_id, b"\x03" + rsp]]
        self.dul.send_pdu(pdata)

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, blocking on the DIMSE queue instead of sleeping."""
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=0.01)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self._end(evt.EVT_RELEASED)
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self._end(evt.EVT_ABORTED)
                return
            if not self.dul.is_alive():
                # the connection went away without release or abort: an abort for the audit
                self._end(evt.EVT_ABORTED)
                return
            if self.dul.idle_timer_expired():
                LOGGER.warning("network timeout: aborting the association")
                self.abort()
                self.kill()
                return

    def _end(self, event: evt.NotificationEvent) -> None:
        """Mark the association released (EVT_RELEASED) or aborted, notify, stop."""
        if event is evt.EVT_RELEASED:
            self.is_released = True
        else:
            self.is_aborted = True
        self.is_established = False
        evt.trigger(self, event, {})
        self.kill()


class NodeRequestHandler(RequestHandler):
    """Admits a connection (association request in time, TLS handshake), then creates a
    :class:`FastAssociation` acceptor, or a :class:`NodeAssociation` one with pynetdicom's
    socket when the server is not ``fast``, and waits for its end."""

    def handle(self) -> None:
        server = cast(NodeServer, self.server)
        sock = cast(socket.socket, self.request)
        peer = str(self.client_address[0])
        deadline = time.monotonic() + server.limits.request_timeout_s
        if server.ssl_context is not None:
            tls = tls_handshake(sock, server.ssl_context, deadline)
            if tls is None:
                return
            self.request = sock = tls
        if not wait_for_request(sock, deadline):
            LOGGER.info(
                "connection from %s closed: no association request within %g s",
                peer,
                server.limits.request_timeout_s,
            )
            close_quietly(sock)
            return
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()  # the connection counts against its host until the association ends

    def _create_association(self) -> Association:
        request = cast(socket.socket, self.request)
        server = cast(NodeServer, self.server)
        fast = server.fast
        if fast:
            with contextlib.suppress(OSError):
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cls = FastAssociation if fast else NodeAssociation
        assoc = cls(self.ae, MODE_ACCEPTOR, server.limits.spool)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        if fast:
            fast_sock = FastSocket(assoc, client_socket=request)
            fast_sock.max_read = server.limits.max_pdu_read
            assoc.set_socket(fast_sock)
        else:
            assoc.set_socket(AssociationSocket(assoc, client_socket=request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Callable[..., Any], Any]], handlers):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class NodeServer(ThreadedAssociationServer):
    """Threaded association server using :class:`NodeRequestHandler`, an allow-list, a
    storage-class policy (``accept_class``, with ``transfer_syntaxes`` for the contexts it
    adds) and :class:`ServerLimits`.

    ``fast=False``: pynetdicom's own association reactor, DUL, socket reads and C-STORE
    path (``store_handler`` is then not used: bind EVT_C_STORE), for comparison.
    """

    daemon_threads = True

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        admit: Admit | None = None,
        store_handler: StoreHandler | None = None,
        fast: bool = True,
        limits: ServerLimits | None = None,
        accept_class: AcceptClass | None = None,
        transfer_syntaxes: list[str] | None = None,
    ) -> None:
        self.admit = admit
        self.store_handler = store_handler
        self.fast = fast
        self.limits = limits or ServerLimits()
        self.accept_class = accept_class
        self.transfer_syntaxes = transfer_syntaxes or []
        self.slots = HostSlots(self.limits.max_connections_per_host)
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context=ssl_context,
            evt_handlers=evt_handlers,
            request_handler=NodeRequestHandler,
        )

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the TLS handshake runs in the connection's thread
        (:meth:`NodeRequestHandler.handle`), so a silent client cannot block accepting."""
        listener = cast(socket.socket, self.socket)
        client, address = listener.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread unless its host is at its connection limit."""
        host = str(client_address[0])
        if not self.slots.take(host):
            LOGGER.warning(
                "connection from %s closed: %d connections open from that host "
                "(network.max_connections_per_host)",
                host,
                self.slots.per_host,
            )
            close_quietly(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.give(host)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.give(str(client_address[0]))

    def attach(self) -> None:
        """Register with the AE, so that ``ae.shutdown()`` also stops this server."""
        self.ae._servers.append(self)

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        if self in self.ae._servers:
            self.ae._servers.remove(self)
