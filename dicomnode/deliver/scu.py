"""The C-STORE / C-ECHO SCU side of delivery: reading an object to send, fitting
presentation contexts, the AE and its TLS, associating (or saying why not), sending one
object and echoing a destination.

TLS: ``tls_ca_file`` verifies the peer (system CAs when unset); the node's own
certificate (``network.tls`` cert_file/key_file) is offered when set.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import Destination, NodeConfig
from dicomnode.deliver.policy import Outcome, classify_status, status_text

MAX_CONTEXTS = 128  # presentation contexts one association may propose (odd IDs 1-255)

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
"""Uncompressed transfer syntaxes: an object in one of them can be sent in any other."""


@dataclass
class Outgoing:
    """One claimed delivery on its way out (``ds`` is set by :func:`load_object`)."""

    id: int
    sop_uid: str
    kind: str
    path: str
    attempts: int
    ds: Dataset | None = None
    sop_class: str = ""
    transfer_syntax: str = ""


@dataclass(frozen=True)
class AssocFailure:
    """Why there is no association."""

    outcome: Outcome
    error: str
    no_context: bool = False  # the peer accepted none of the proposed contexts


@dataclass(frozen=True)
class StoreAnswer:
    """What one C-STORE came to: its outcome, the DIMSE status (None without an answer)
    and the error to record (None on success)."""

    outcome: Outcome
    status: int | None
    error: str | None


# --------------------------------------------------------------------------- objects


def load_object(item: Outgoing) -> str | None:
    """Read the object to send into ``item``; the reason when it cannot be sent."""
    path = Path(item.path)
    if not path.is_file():
        return f"file not found: {path}"
    try:
        ds = dcmread(path)
        ts = str(ds.file_meta.TransferSyntaxUID)
        sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except (InvalidDicomError, OSError, AttributeError, ValueError, KeyError) as exc:
        return f"not a readable DICOM file: {path} ({exc})"
    if sop_uid != item.sop_uid:
        return f"{path} holds SOP instance {sop_uid}, not {item.sop_uid}"
    item.ds, item.sop_class, item.transfer_syntax = ds, sop_class, ts
    return None


def _syntaxes(ts: str) -> list[str]:
    """Transfer syntaxes to propose for a file in ``ts``: native ones can be re-encoded."""
    if ts in NATIVE:
        return [ts] + [t for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if t != ts]
    return [ts]


def _context_key(item: Outgoing) -> tuple[str, str]:
    return item.sop_class, "native" if item.transfer_syntax in NATIVE else item.transfer_syntax


def fit_contexts(items: list[Outgoing]) -> tuple[list[Outgoing], list[PresentationContext]]:
    """One presentation context per (SOP class, transfer syntax) needed; items needing a
    context beyond the limit wait for the next round."""
    keys: dict[tuple[str, str], str] = {}
    fitted: list[Outgoing] = []
    for item in items:
        key = _context_key(item)
        if key not in keys:
            if len(keys) >= MAX_CONTEXTS:
                continue
            keys[key] = item.transfer_syntax
        fitted.append(item)
    contexts = [build_context(cls, _syntaxes(ts)) for (cls, _), ts in keys.items()]
    return fitted, contexts


def accepted(assoc: Association, item: Outgoing) -> bool:
    """Whether the association has an accepted context that can carry ``item``."""
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != item.sop_class:
            continue
        ts = str(cx.transfer_syntax[0])
        if ts == item.transfer_syntax or (ts in NATIVE and item.transfer_syntax in NATIVE):
            return True
    return False


def no_context_reason(item: Outgoing, dest: Destination) -> str:
    """The error of an object the destination accepted no presentation context for."""
    return (
        f"{dest.name} accepted no presentation context for SOP class "
        f"{UID(item.sop_class).name} ({item.sop_class}) in "
        f"{UID(item.transfer_syntax).name}: it does not take this kind of object"
    )


# --------------------------------------------------------------------------- association


def make_ae(cfg: NodeConfig) -> AE:
    """Our AE (the node's title) with the delivery timeouts."""
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message logging: off
    dcfg = cfg.delivery
    ae = AE(ae_title=cfg.ae_title)
    ae.connection_timeout = dcfg.connect_timeout_s
    ae.acse_timeout = dcfg.connect_timeout_s
    ae.dimse_timeout = dcfg.dimse_timeout_s
    ae.network_timeout = max(dcfg.dimse_timeout_s, dcfg.connect_timeout_s)
    return ae


def tls_args(dest: Destination, cfg: NodeConfig) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for ``dest`` (None without TLS)."""
    if not dest.tls:
        return None
    cafile = str(dest.tls_ca_file) if dest.tls_ca_file is not None else None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    own = cfg.network.tls
    if own.cert_file is not None and own.key_file is not None:
        ctx.load_cert_chain(str(own.cert_file), str(own.key_file))
    return ctx, dest.host


def _connect_error(
    dest: Destination, timeout: float, tls: tuple[ssl.SSLContext, str] | None
) -> str:
    """Why connecting failed (pynetdicom only logs it): connect once more to find out."""
    try:
        with socket.create_connection((dest.host, dest.port), timeout=timeout) as sock:
            if tls is not None:
                with tls[0].wrap_socket(sock, server_hostname=tls[1]):
                    pass
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc}"
    except TimeoutError:
        return f"no connection within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "the connection failed (a second try connected: a passing fault)"


def associate(
    ae: AE, dest: Destination, contexts: list[PresentationContext], cfg: NodeConfig
) -> Association | AssocFailure:
    """An established association, or why there is none."""
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    try:
        tls = tls_args(dest, cfg)
    except (OSError, ssl.SSLError) as exc:
        return AssocFailure("transient", f"TLS set-up for {dest.name} failed: {exc}")
    connected = threading.Event()
    t0 = time.monotonic()
    assoc = ae.associate(
        dest.host,
        dest.port,
        contexts,
        ae_title=dest.ae_title,
        tls_args=tls,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: connected.set())],
    )
    if assoc.is_established:
        return assoc
    elapsed = time.monotonic() - t0
    timeout = cfg.delivery.connect_timeout_s
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result = getattr(rsp, "result", None)
        how: Outcome = "permanent" if result == 0x01 else "transient"
        detail = (
            f"{rsp.result_str}; source: {rsp.source_str}; reason: {rsp.reason_str}"
            if rsp is not None
            else "no details"
        )
        return AssocFailure(how, f"association rejected by {where} ({detail})")
    if not connected.is_set():
        why = (
            f"no connection within {timeout:g} s"
            if elapsed >= timeout * 0.95
            else _connect_error(dest, timeout, tls)
        )
        return AssocFailure("transient", f"cannot connect to {where}: {why}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return AssocFailure(
            "permanent", f"{where} accepted none of the proposed presentation contexts", True
        )
    why = (
        f"no association answer within {timeout:g} s"
        if elapsed >= timeout * 0.95
        else "association aborted"
    )
    return AssocFailure("transient", f"{why} ({where})")


# --------------------------------------------------------------------------- services


def store(
    assoc: Association, item: Outgoing, msg_id: int, dest: Destination, dimse_timeout_s: float
) -> StoreAnswer:
    """C-STORE one loaded object on ``assoc`` and classify the answer."""
    if item.ds is None:
        raise ValueError(f"delivery {item.id}: the object was not loaded before sending")
    t0 = time.monotonic()
    try:
        rsp = assoc.send_c_store(item.ds, msg_id=msg_id % 65536 or 1)
    except (ValueError, AttributeError) as exc:
        return StoreAnswer("permanent", None, f"cannot send: {exc}")
    status = rsp.get("Status") if rsp else None
    if status is None:
        waited = time.monotonic() - t0
        why = (
            f"no C-STORE response within {dimse_timeout_s:g} s"
            if waited >= dimse_timeout_s * 0.95
            else "association aborted before the C-STORE response"
        )
        return StoreAnswer("transient", None, why)
    status = int(status)
    outcome = classify_status(status, dest.accept_warning)
    error = None if outcome == "success" else f"C-STORE status {status_text(status)}"
    if outcome == "permanent" and classify_status(status, True) == "success":
        error = f"{error}: a warning, and accept_warning is off for {dest.name}"
    return StoreAnswer(outcome, status, error)


def echo(dest: Destination, cfg: NodeConfig) -> tuple[bool, str]:
    """C-ECHO ``dest`` from our AE title: (ok, a sentence saying what happened)."""
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    t0 = time.monotonic()
    assoc = associate(make_ae(cfg), dest, [build_context(Verification)], cfg)
    if isinstance(assoc, AssocFailure):
        return False, f"C-ECHO to {where} failed: {assoc.error}"
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = rsp.get("Status") if rsp else None
    if status is None:
        return False, f"C-ECHO to {where} failed: no response (aborted or timed out)"
    if int(status) != 0x0000:
        return False, f"C-ECHO to {where} answered status 0x{int(status):04X}"
    ms = (time.monotonic() - t0) * 1000.0
    return True, f"C-ECHO to {where} succeeded in {ms:.0f} ms"
