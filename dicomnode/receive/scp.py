"""The node's DICOM front door: C-ECHO and C-STORE (pynetdicom), allow-list, TLS,
disk watermark, and one audit row per association.

The C-STORE handler never decodes pixels: it reads the few header attributes the
database needs from the raw encoded data set, writes preamble + file meta + the data set
bytes exactly as received to the archive (fsync, atomic rename), records the instance,
and only then answers Success.

What a peer can cost is bounded by the network section: a data set is held in memory up
to ``spool_above`` and then in a temporary file, one larger than ``max_instance_size``
(as received or once inflated: deflate bombs are inflated as a stream and stopped) is
refused with 0xA700, a broken deflate stream is an undecodable data set (0xC000), and a
data set whose SOP class is not its presentation context's gets 0xA900; the association
goes on in each case. Which storage classes are accepted is ``storage_classes``
(:mod:`dicomnode.receive.storage_policy`); silent connections and per-host limits are
:mod:`dicomnode.receive.connections`. At start, audit rows left open by a node that was
killed are closed as ``interrupted`` with the counts of their instance rows.

Associations run on :mod:`dicomnode.receive.netfast`'s event-driven acceptor. With the
environment variable ``DICOMNODE_ACCEPTOR=stock`` (read at ``start()``) they run on
pynetdicom's own acceptor instead, allow-list kept: slower, for comparison (bench.ingest)
or to rule netfast out when diagnosing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import Engine, Insert, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.config import NodeConfig
from dicomnode.db.models import AssociationAudit, Instance, utcnow
from dicomnode.operate import metrics
from dicomnode.receive.archive import Archive
from dicomnode.receive.filemeta import file_header
from dicomnode.receive.headers import HeaderError, read_header
from dicomnode.receive.ingest import IngestStore
from dicomnode.receive.netfast import NodeServer, ServerLimits
from dicomnode.receive.series_facts import (
    ARCHIVE_ONLY_CLASSES,
    PROCESSED_CLASSES,
    TRANSFER_SYNTAXES,
)
from dicomnode.receive.spool import OversizeError, SpoolBuffer, SpoolLimits, as_spool
from dicomnode.receive.storage_policy import accepts_storage_class

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

ACCEPTOR_ENV = "DICOMNODE_ACCEPTOR"
"""Environment variable choosing the acceptor: ``netfast`` (default) or ``stock``."""

_COUNTS = ("requests", "stored", "duplicates", "failures", "bytes_received")


@dataclass
class AssocStats:
    """What one association did (the audit row's numbers)."""

    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int
    tls: bool
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=utcnow)
    audit_id: int | None = None
    requests: int = 0
    stored: int = 0
    duplicates: int = 0
    failures: int = 0
    bytes_received: int = 0
    refused_disk: int = 0

    def insert_audit(self, **values: Any) -> Insert:
        """An INSERT of this association's audit row with ``values`` for the other columns."""
        return insert(AssociationAudit).values(
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            peer_host=self.peer_host,
            peer_port=self.peer_port,
            tls=self.tls,
            started_at=self.started_at,
            **values,
        )

    def counts(self) -> dict[str, int]:
        """The audit row's counters."""
        return {name: getattr(self, name) for name in _COUNTS}


def _norm_addr(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _resolve(host: str) -> set[str]:
    try:
        return {_norm_addr(str(ai[4][0])) for ai in socket.getaddrinfo(host, None)}
    except OSError:
        log.warning("allowed caller host %r does not resolve; it will match nobody", host)
        return set()


def build_ssl_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """The server TLS context from the config (None when TLS is off)."""
    tls = cfg.network.tls
    if not tls.enabled:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("network.tls.enabled needs network.tls.cert_file and key_file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def close_interrupted_audits(engine: Engine) -> int:
    """Close the audit rows left ``open`` by a node that stopped without ending its
    associations (SIGKILL, power loss) as ``interrupted``, with the counts of the instance
    rows they recorded; how many rows were closed. Run before the SCP listens (one SCP
    per database)."""
    closed = 0
    with engine.begin() as conn:
        rows = conn.execute(
            select(AssociationAudit.id, AssociationAudit.started_at).where(
                AssociationAudit.outcome == "open"
            )
        ).all()
        for audit_id, started_at in rows:
            stored, nbytes, last = conn.execute(
                select(
                    func.count(Instance.id),
                    func.coalesce(func.sum(Instance.size_bytes), 0),
                    func.max(Instance.received_at),
                ).where(Instance.association_fk == audit_id)
            ).one()
            ended = last or started_at
            reason = (
                f"interrupted: the node stopped during the association; {stored} instances "
                "had been stored (counts from the instance rows; failed or unanswered "
                "requests are unknown)"
            )
            conn.execute(
                update(AssociationAudit)
                .where(AssociationAudit.id == audit_id, AssociationAudit.outcome == "open")
                .values(
                    outcome="interrupted",
                    reason=reason,
                    ended_at=ended,
                    duration_s=max((ended - started_at).total_seconds(), 0.0),
                    requests=stored,
                    stored=stored,
                    bytes_received=int(nbytes),
                )
            )
            log.warning("association audit row %d closed: %s", audit_id, reason)
            closed += 1
    return closed


def fast_acceptor() -> bool:
    """Whether to use netfast's acceptor (``DICOMNODE_ACCEPTOR`` unset or ``netfast``)."""
    choice = os.environ.get(ACCEPTOR_ENV, "netfast").strip().lower() or "netfast"
    if choice not in ("netfast", "stock"):
        raise ValueError(f"{ACCEPTOR_ENV} must be 'netfast' or 'stock', not {choice!r}")
    return choice == "netfast"


class StorageSCP:
    """The node's SCP. ``start()`` listens in a background thread; ``stop()`` ends it."""

    def __init__(self, cfg: NodeConfig, engine: Engine, archive: Archive | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.archive = archive or Archive.from_config(cfg.archive_dir, cfg.archive)
        net = cfg.network
        self.spool_limits = SpoolLimits(
            max_bytes=int(net.max_instance_size),
            spool_above=int(net.spool_above),
            spool_dir=self.archive.incoming,
        )
        self.store = self._make_store()
        self._stats: dict[int, AssocStats] = {}
        self._stats_lock = threading.Lock()
        self._hosts: dict[str, set[str]] = {}
        self._server: NodeServer | None = None
        self._thread: threading.Thread | None = None
        self.ae = self._make_ae()

    # --- set-up ---------------------------------------------------------------

    def _make_store(self) -> IngestStore:
        return IngestStore(
            self.engine,
            self.archive,
            self.cfg.archive.duplicate_policy,
            writers=self.cfg.network.max_associations,
        )

    def _make_ae(self) -> AE:
        net = self.cfg.network
        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message logging: off
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = net.max_associations
        ae.maximum_pdu_size = net.max_pdu_bytes
        ae.acse_timeout = net.acse_timeout_s
        ae.dimse_timeout = net.dimse_timeout_s
        ae.network_timeout = net.network_timeout_s
        ae.require_called_aet = True
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification
        for uid in PROCESSED_CLASSES + ARCHIVE_ONLY_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        return ae

    def _server_limits(self) -> ServerLimits:
        net = self.cfg.network
        pdu = net.max_pdu_bytes
        slack = 1 << 16
        return ServerLimits(
            request_timeout_s=net.request_timeout_s,
            max_connections_per_host=net.max_connections_per_host,
            max_pdu_read=max(pdu, 1 << 20) + slack if pdu else int(net.max_instance_size) + slack,
            spool=self.spool_limits,
        )

    def _accepts_class(self, uid: str) -> bool:
        return accepts_storage_class(self.cfg.network.storage_classes, uid)

    @property
    def port(self) -> int:
        """The TCP port listened on (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the SCP is already started")
        self._hosts = {
            a.host: _resolve(a.host) for a in self.cfg.access.allowed if a.host is not None
        }
        fast = fast_acceptor()
        self.archive.clean_incoming()
        try:
            close_interrupted_audits(self.engine)
        except SQLAlchemyError as exc:
            log.error("cannot close the audit rows of interrupted associations: %s", exc)
        if self.store.closed:
            self.store = self._make_store()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_end, ["released"]),
            (evt.EVT_ABORTED, self._on_end, ["aborted"]),
        ]
        net = self.cfg.network
        try:
            self._server = NodeServer(
                self.ae,
                (net.bind_address, net.port),
                self.cfg.ae_title,
                self.ae.supported_contexts,
                ssl_context=build_ssl_context(self.cfg),
                evt_handlers=handlers,
                admit=self.admit,
                store_handler=self.handle_store,
                fast=fast,
                limits=self._server_limits(),
                accept_class=self._accepts_class,
                transfer_syntaxes=TRANSFER_SYNTAXES,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {net.bind_address}:{net.port}: {exc.strerror}"
            ) from exc
        self._server.attach()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.name = "dicomnode-scp"
        self._thread.start()
        log.info(
            "SCP %s listening on %s:%d%s%s",
            self.cfg.ae_title,
            net.bind_address,
            self.port,
            " (TLS)" if net.tls.enabled else "",
            "" if fast else " (stock pynetdicom acceptor)",
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let running associations finish for ``grace_s``, abort the rest."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        server.server_close()
        self.store.close()
        server.detach()
        self._server = None
        log.info("SCP stopped")

    # --- access -----------------------------------------------------------------

    def admit(self, calling_ae: str, peer: str) -> str | None:
        """None when ``calling_ae`` from ``peer`` may associate, else the reason it may not."""
        access = self.cfg.access
        if access.accept_any:
            return None
        if not access.allowed:
            return "no calling AE title is allowed (access.allowed is empty)"
        peer = _norm_addr(peer)
        known = False
        for a in access.allowed:
            if a.ae_title != calling_ae:
                continue
            known = True
            if a.host is None or peer in self._hosts.get(a.host, set()):
                return None
        if known:
            return f"calling AE title {calling_ae!r} is not allowed from {peer}"
        return f"calling AE title {calling_ae!r} is not in access.allowed"

    # --- audit --------------------------------------------------------------------

    def _new_stats(self, a: Association) -> AssocStats:
        return AssocStats(
            calling_ae=str(a.requestor.ae_title or "").strip()[:16],
            called_ae=str(a.acceptor.ae_title or "").strip()[:16],
            peer_host=str(a.requestor.address)[:255],
            peer_port=int(a.requestor.port),
            tls=self.cfg.network.tls.enabled,
        )

    def _stats_for(self, assoc: Association) -> AssocStats:
        key = id(assoc)
        with self._stats_lock:
            st = self._stats.get(key)
            if st is None:
                st = self._stats[key] = self._new_stats(assoc)
        return st

    def _on_accepted(self, event: Event) -> None:
        st = self._stats_for(event.assoc)
        try:
            with self.engine.begin() as conn:
                st.audit_id = conn.execute(
                    st.insert_audit(outcome="open", **dict.fromkeys(_COUNTS, 0)).returning(
                        AssociationAudit.id
                    )
                ).scalar_one()
        except SQLAlchemyError as exc:
            log.error("cannot write the association audit row: %s", exc)
        log.info("association from %s@%s accepted", st.calling_ae, st.peer_host)

    def _on_rejected(self, event: Event) -> None:
        reason = getattr(event.assoc, "reject_reason", None) or (
            "rejected during negotiation (called AE title, association limit or protocol)"
        )
        self._finish(event, "rejected", reason)

    def _on_end(self, event: Event, outcome: str) -> None:
        self._finish(event, outcome, None)

    def _finish(self, event: Event, outcome: str, reason: str | None) -> None:
        with self._stats_lock:  # one audit row per association: the first ending event wins
            st = self._stats.pop(id(event.assoc), None)
            if st is None:
                if outcome != "rejected":
                    return  # already finished
                st = self._new_stats(event.assoc)
        if st.refused_disk and reason is None:
            reason = f"{st.refused_disk} instances refused: free disk below archive.min_free"
        duration = time.monotonic() - st.started
        values = {
            "ended_at": utcnow(),
            "duration_s": round(duration, 6),
            "outcome": outcome,
            "reason": reason,
            **st.counts(),
        }
        try:
            with self.engine.begin() as conn:
                if st.audit_id is None:
                    conn.execute(st.insert_audit(**values))
                else:
                    conn.execute(
                        update(AssociationAudit)
                        .where(AssociationAudit.id == st.audit_id)
                        .values(**values)
                    )
        except SQLAlchemyError as exc:
            log.error("cannot write the association audit row: %s", exc)
        metrics.associations_total.labels(outcome=outcome).inc()
        if outcome == "rejected":
            return
        mb = st.bytes_received / 1e6
        log.info(
            "association from %s@%s %s: %d requests (%d stored, %d duplicates, %d failed), "
            "%.1f MB in %.2f s",
            st.calling_ae,
            st.peer_host,
            outcome,
            st.requests,
            st.stored,
            st.duplicates,
            st.failures,
            mb,
            duration,
        )

    # --- services -------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> int:
        """EVT_C_STORE binding (used when the fast path is not)."""
        req = event.request
        if not isinstance(req, C_STORE):
            raise TypeError(f"EVT_C_STORE carried a {type(req).__name__}, not a C-STORE")
        cx = event.context
        return self.handle_store(event.assoc, req, str(cx.transfer_syntax), str(cx.abstract_syntax))

    def handle_store(self, assoc: Association, req: C_STORE, ts: str, sop_class: str) -> int:
        """Store one instance received under a presentation context of ``sop_class`` in
        transfer syntax ``ts``; the DIMSE status to answer (failures are counted)."""
        st = self._stats_for(assoc)
        st.requests += 1
        raw = as_spool(req.DataSet, self.spool_limits)
        try:
            status = self._store(st, req, raw, ts, sop_class)
        except Exception:
            log.exception("cannot store an instance from %s (0x0110)", st.calling_ae)
            status = STATUS_PROCESSING_FAILURE
        finally:
            if raw is not None:
                raw.close()
        if status != STATUS_SUCCESS:
            st.failures += 1
        return status

    def _store(
        self, st: AssocStats, req: C_STORE, raw: SpoolBuffer | None, ts: str, sop_class: str
    ) -> int:
        if raw is None:
            return STATUS_CANNOT_UNDERSTAND
        nbytes = raw.size
        st.bytes_received += nbytes
        who = st.calling_ae
        if raw.oversized:
            log.warning(
                "refusing an instance from %s: %d bytes, above network.max_instance_size (0xA700)",
                who,
                nbytes,
            )
            return STATUS_OUT_OF_RESOURCES
        if not self.archive.space().allows(nbytes):
            st.refused_disk += 1
            log.warning("refusing an instance: free disk below archive.min_free (0xA700)")
            return STATUS_OUT_OF_RESOURCES
        try:
            facts = read_header(raw.reader(), ts, self.spool_limits)
        except HeaderError as exc:
            log.warning("refusing an instance from %s: %s", who, exc)
            return STATUS_CANNOT_UNDERSTAND
        except OversizeError as exc:
            log.warning("refusing an instance from %s: %s (0xA700)", who, exc)
            return STATUS_OUT_OF_RESOURCES
        if facts.sop_instance_uid != str(req.AffectedSOPInstanceUID):
            log.warning("refusing an instance: SOP Instance UID differs from the request's")
            return STATUS_MISMATCH
        if facts.sop_class_uid != sop_class:
            log.warning(
                "refusing an instance from %s: its SOP Class UID %s does not match the "
                "presentation context's %s (0xA900)",
                who,
                facts.sop_class_uid,
                sop_class,
            )
            return STATUS_MISMATCH
        meta = file_header(facts.sop_class_uid, facts.sop_instance_uid, ts, st.calling_ae)
        try:
            with raw.body() as body:
                outcome = self.store.store(facts, (meta, body), ts, st.audit_id)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("archive full while storing an instance (0xA700)")
                return STATUS_OUT_OF_RESOURCES
            log.error("cannot archive an instance: %s", exc)
            return STATUS_PROCESSING_FAILURE
        except SQLAlchemyError as exc:
            log.error("cannot record an instance in the database: %s", exc)
            return STATUS_PROCESSING_FAILURE
        if outcome == "duplicate":
            st.duplicates += 1
        else:
            st.stored += 1
        metrics.instances_received_total.inc()
        metrics.bytes_received_total.inc(nbytes)
        return STATUS_SUCCESS
