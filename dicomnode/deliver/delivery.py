"""Sending results to the configured destinations: C-STORE SCU, retry with backoff and
jitter, a circuit breaker per destination, and a dead letter.

One :class:`~dicomnode.db.models.Delivery` row per (destination, object); one
:class:`~dicomnode.db.models.DeliveryAttempt` row per send attempt. Each round
(:meth:`DeliveryService.run_once`) opens one association per destination carrying all of
that destination's due objects, proposing only the SOP classes and transfer syntaxes
those objects need. Destinations are served in parallel threads, and a destination whose
breaker is open is skipped, so one failing peer never holds up another.

What counts as what:

* **success**: C-STORE status 0x0000; a Warning status (0x0001, 0x0107, 0x0116,
  0xBxxx: coercion 0xB000, element discarded 0xB006, SOP class mismatch 0xB007) only
  when the destination sets ``accept_warning``. Otherwise a Warning is **permanent**: the
  peer has already stored an altered object and re-sending the same bytes gives the same
  answer, so retrying only hides the problem; the delivery is dead-lettered with the
  status in ``last_error`` for an operator to decide (set ``accept_warning`` and requeue).
* **transient** (retried with backoff until ``delivery.max_attempts``): connection
  refused, unreachable or timed out; A-ASSOCIATE-RJ "rejected transient"; an abort or
  no answer within the timeouts; status 0xA7xx (out of resources), 0x0213 (resource
  limitation) and 0x0110 (processing failure: the generic answer of many PACS to a full
  disk or a busy database; bounded by ``max_attempts``).
* **permanent** (dead at once, ``last_error`` says why): A-ASSOCIATE-RJ "rejected
  permanent" (e.g. our AE title unknown there), no presentation context accepted for the
  object's SOP class / transfer syntax, any other failure status (0x0122 SOP class not
  supported, 0xA9xx, 0xCxxx, ...), a missing or unreadable file, a destination no longer
  in the configuration.

Every attempt is a row: when the association itself fails (refused, rejected, aborted),
each object it was to carry gets an attempt row with that error. Objects an aborted
association never reached get no row and are due again at once. Retries of one round
share one jitter draw and are counted from the round's start, so a destination's
objects stay together on one association. The breaker counts failed rounds (no object
delivered, at least one transient failure); after ``breaker_failures`` in a row the
destination is skipped for ``breaker_open_s``, then half-open: the next round is the one
trial association, which closes it on any success or opens it again.

TLS: ``tls_ca_file`` verifies the peer (system CAs when unset); the node's own
certificate (``network.tls`` cert_file/key_file) is offered when set.

Dead deliveries go back to pending with ``dicomnode deliveries requeue``. Logs name
destinations and SOP instance UIDs, never patient names or IDs.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from apscheduler.schedulers.base import BaseScheduler
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
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.config import DeliveryConfig, Destination, NodeConfig
from dicomnode.db.models import Delivery, DeliveryAttempt, utcnow
from dicomnode.db.session import session_factory, session_scope
from dicomnode.operate import metrics

log = logging.getLogger(__name__)

Outcome = Literal["success", "transient", "permanent"]
BreakerState = Literal["closed", "open", "half-open"]

KINDS = ("sr", "seg", "keyimage")
MAX_PER_ROUND = 256
"""Objects sent to one destination in one round (one association); the rest wait."""
MAX_CONTEXTS = 128  # presentation contexts one association may propose (odd IDs 1-255)

_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
_TRANSIENT_STATUSES = frozenset({0x0110, 0x0213})
_WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})


# --------------------------------------------------------------------------- policy


def classify_status(status: int, accept_warning: bool) -> Outcome:
    """What a C-STORE response status means for the delivery (see the module docstring)."""
    if status == 0x0000:
        return "success"
    if status in _WARNING_STATUSES or 0xB000 <= status <= 0xBFFF:
        return "success" if accept_warning else "permanent"
    if 0xA700 <= status <= 0xA7FF or status in _TRANSIENT_STATUSES:
        return "transient"
    return "permanent"


def backoff_s(attempt: int, cfg: DeliveryConfig, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based):
    ``backoff_initial_s * 2**(attempt-1)`` times a uniform factor in
    ``[1 - jitter, 1 + jitter]``, never more than ``backoff_max_s``."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    base = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2.0 ** min(attempt - 1, 64))
    factor = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
    return min(cfg.backoff_max_s, base * factor)


def status_text(status: int) -> str:
    """``0xA700 (Refused: Out of Resources)``."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"0x{status:04X}" + (f" ({meaning})" if meaning else "")


# --------------------------------------------------------------------------- planning


def plan_deliveries(
    session: Session,
    result_id: int,
    objects: Mapping[str, Sequence[tuple[str, Path]]],
    cfg: NodeConfig,
) -> list[Delivery]:
    """Queue ``objects`` (kind -> [(SOP instance UID, absolute path)]) of result
    ``result_id`` for every destination that takes the kind: one pending row each, due now.

    Idempotent: a row that already exists for (result, destination, SOP instance UID) is
    neither duplicated nor returned. Returns the rows created (flushed, not committed).
    """
    unknown = sorted(set(objects) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown object kind(s) {unknown}; expected one of {list(KINDS)}")
    for kind, items in objects.items():
        for uid, path in items:
            if not Path(path).is_absolute():
                raise ValueError(f"{kind} object {uid}: path must be absolute, got {path}")
    existing = {
        (d, u)
        for d, u in session.execute(
            select(Delivery.destination, Delivery.sop_instance_uid).where(
                Delivery.result_fk == result_id
            )
        )
    }
    now = utcnow()
    made: list[Delivery] = []
    for dest in cfg.destinations:
        for kind in dest.kinds:
            for uid, path in objects.get(kind, ()):
                if (dest.name, uid) in existing:
                    continue
                existing.add((dest.name, uid))
                row = Delivery(
                    result_fk=result_id,
                    destination=dest.name,
                    kind=kind,
                    sop_instance_uid=uid,
                    path=str(path),
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                made.append(row)
    session.flush()
    if made:
        log.info("result %d: %d deliveries queued", result_id, len(made))
    return made


# --------------------------------------------------------------------------- rounds


@dataclass
class DestinationCounts:
    """What one round did for one destination."""

    sent: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0  # due but not attempted (breaker open, or the association broke off)


@dataclass
class DeliveryRound:
    """Counts of one :meth:`DeliveryService.run_once`, per destination name."""

    destinations: dict[str, DestinationCounts] = field(default_factory=dict)

    def of(self, name: str) -> DestinationCounts:
        """The counts of destination ``name`` (zeros when it had nothing due)."""
        return self.destinations.setdefault(name, DestinationCounts())

    @property
    def total(self) -> DestinationCounts:
        """The counts summed over destinations."""
        out = DestinationCounts()
        for c in self.destinations.values():
            out.sent += c.sent
            out.retried += c.retried
            out.dead += c.dead
            out.skipped += c.skipped
        return out


class _Breaker:
    """Consecutive transient failures of one destination; open for a while past a limit."""

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: datetime | None = None

    def state(self, now: datetime, open_s: float) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "open" if now < self.opened_at + timedelta(seconds=open_s) else "half-open"

    def success(self) -> None:
        self.failures, self.opened_at = 0, None

    def failure(self, now: datetime, threshold: int) -> bool:
        """Count a failure; True when the breaker (re)opens."""
        self.failures += 1
        if self.opened_at is not None or self.failures >= threshold:
            self.opened_at = now
            return True
        return False


@dataclass
class _Item:
    """One claimed delivery on its way out."""

    id: int
    sop_uid: str
    kind: str
    path: str
    attempts: int
    ds: Dataset | None = None
    sop_class: str = ""
    transfer_syntax: str = ""


@dataclass
class _Run:
    """One destination's part of a round. Retries of one round share the jitter and are
    counted from the round's start, so they come due together (one association again)."""

    dest: Destination
    counts: DestinationCounts
    started: datetime
    seed: int


@dataclass
class _AssocFailure:
    outcome: Outcome
    error: str
    no_context: bool = False  # the peer accepted none of the proposed contexts


class DeliveryService:
    """Sends due deliveries. ``run_once()`` is one round; ``start(scheduler)`` polls."""

    def __init__(
        self, engine: Engine, cfg: NodeConfig, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.clock = clock
        self.sessions = session_factory(engine)
        self.rng = random.Random()
        self._breakers: dict[str, _Breaker] = {d.name: _Breaker() for d in cfg.destinations}
        self._lock = threading.Lock()  # breakers and rng
        self._round_lock = threading.Lock()

    # --- public -----------------------------------------------------------------

    def breaker_state(self) -> dict[str, str]:
        """Destination name -> closed, open or half-open."""
        now = self.clock()
        with self._lock:
            return {
                name: b.state(now, self.cfg.delivery.breaker_open_s)
                for name, b in self._breakers.items()
            }

    def start(self, scheduler: BaseScheduler) -> None:
        """Add the polling job (every ``delivery.poll_interval_s``, one at a time) to an
        APScheduler 3 scheduler."""
        scheduler.add_job(
            self._run_logged,
            "interval",
            seconds=self.cfg.delivery.poll_interval_s,
            id="delivery-round",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        log.info(
            "delivery polling every %g s for %d destination(s)",
            self.cfg.delivery.poll_interval_s,
            len(self.cfg.destinations),
        )

    def run_once(self) -> DeliveryRound:
        """Send every due pending delivery (one association per destination)."""
        with self._round_lock:
            rnd = DeliveryRound()
            batches = self._claim(rnd)
            if len(batches) == 1:
                dest, items = batches[0]
                rnd.destinations[dest.name] = self._send_guarded(dest, items)
            elif batches:
                with ThreadPoolExecutor(len(batches), thread_name_prefix="delivery") as pool:
                    futures = [(d.name, pool.submit(self._send_guarded, d, i)) for d, i in batches]
                    for name, fut in futures:
                        rnd.destinations[name] = fut.result()
            return rnd

    # --- claiming ---------------------------------------------------------------

    def _due(self, now: datetime) -> Any:
        return and_(
            Delivery.state == "pending",
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )

    def _claim(self, rnd: DeliveryRound) -> list[tuple[Destination, list[_Item]]]:
        """Dead-letter due rows of unknown destinations, count those behind an open
        breaker, and claim the others (their next_attempt_at moves past the round)."""
        now = self.clock()
        dcfg = self.cfg.delivery
        names = [d.name for d in self.cfg.destinations]
        batches: list[tuple[Destination, list[_Item]]] = []
        with session_scope(self.sessions) as s:
            orphans = s.scalars(
                select(Delivery)
                .where(self._due(now), Delivery.destination.not_in(names))
                .limit(MAX_PER_ROUND)
                .with_for_update(skip_locked=True)
            ).all()
            for row in orphans:
                reason = f"destination {row.destination!r} is not in the configuration"
                row.state, row.last_error, row.next_attempt_at = "dead", reason, None
                row.updated_at = now
                rnd.of(row.destination).dead += 1
                log.warning("delivery %d of %s dead: %s", row.id, row.sop_instance_uid, reason)
            states = self.breaker_state()
            for dest in self.cfg.destinations:
                if states[dest.name] == "open":
                    n = s.scalar(
                        select(func.count(Delivery.id)).where(
                            self._due(now), Delivery.destination == dest.name
                        )
                    )
                    if n:
                        rnd.of(dest.name).skipped += int(n)
                    continue
                rows = s.scalars(
                    select(Delivery)
                    .where(self._due(now), Delivery.destination == dest.name)
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(MAX_PER_ROUND)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    continue
                # A lease against a second node process, and the retry time should this
                # process die mid-round.
                lease = dcfg.connect_timeout_s * 2 + dcfg.dimse_timeout_s * (len(rows) + 1)
                for row in rows:
                    row.next_attempt_at = now + timedelta(seconds=lease)
                items = [_Item(r.id, r.sop_instance_uid, r.kind, r.path, r.attempts) for r in rows]
                batches.append((dest, items))
        return batches

    # --- sending ----------------------------------------------------------------

    def _run_logged(self) -> None:
        try:
            rnd = self.run_once()
        except Exception:
            log.exception("delivery round failed (it will run again)")
            return
        for name, c in rnd.destinations.items():
            if c.sent or c.retried or c.dead:
                log.info(
                    "delivery to %s: %d sent, %d to retry, %d dead, %d skipped",
                    name,
                    c.sent,
                    c.retried,
                    c.dead,
                    c.skipped,
                )

    def _send_guarded(self, dest: Destination, items: list[_Item]) -> DestinationCounts:
        with self._lock:
            seed = self.rng.getrandbits(64)
        run = _Run(dest, DestinationCounts(), self.clock(), seed)
        try:
            self._send(run, items)
        except Exception:
            # Unexpected (e.g. the database went away): the claimed rows come due again
            # when their lease ends.
            log.exception("delivery round for %s failed", dest.name)
        return run.counts

    def _send(self, run: _Run, items: list[_Item]) -> None:
        dest = run.dest
        ready: list[_Item] = []
        for item in items:
            reason = _load(item)
            if reason is None:
                ready.append(item)
            else:
                self._record(run, [item], "permanent", None, reason)
        if not ready:
            return
        fitted, contexts = _fit_contexts(ready)
        if len(fitted) < len(ready):
            kept = {i.id for i in fitted}
            self._release(run, [i for i in ready if i.id not in kept])  # next round
        ready = fitted
        started = self.clock()
        assoc, failure = _associate(_make_ae(self.cfg), dest, contexts, self.cfg)
        if failure is not None:
            if failure.no_context:
                for item in ready:
                    self._record(run, [item], "permanent", None, _no_context(item, dest))
            else:
                self._record(run, ready, failure.outcome, None, failure.error, started)
            self._update_breaker(dest, [failure.outcome] * len(ready))
            return
        assert assoc is not None
        outcomes: list[Outcome] = []
        try:
            for n, item in enumerate(ready):
                if not assoc.is_established:
                    self._release(run, ready[n:])
                    break
                outcomes.append(self._store_one(run, assoc, item, n + 1))
                item.ds = None  # sent or not, its bytes are no longer needed
        finally:
            if assoc.is_established:
                assoc.release()
        self._update_breaker(dest, outcomes)

    def _store_one(self, run: _Run, assoc: Association, item: _Item, msg_id: int) -> Outcome:
        dest = run.dest
        if not _accepted(assoc, item):
            self._record(run, [item], "permanent", None, _no_context(item, dest))
            return "permanent"
        assert item.ds is not None  # loaded by _load
        started = self.clock()
        t0 = time.monotonic()
        try:
            rsp = assoc.send_c_store(item.ds, msg_id=msg_id % 65536 or 1)
        except (ValueError, AttributeError) as exc:
            self._record(run, [item], "permanent", None, f"cannot send: {exc}", started)
            return "permanent"
        status = rsp.get("Status") if rsp else None
        if status is None:
            waited = time.monotonic() - t0
            why = (
                f"no C-STORE response within {self.cfg.delivery.dimse_timeout_s:g} s"
                if waited >= self.cfg.delivery.dimse_timeout_s * 0.95
                else "association aborted before the C-STORE response"
            )
            self._record(run, [item], "transient", None, why, started)
            return "transient"
        status = int(status)
        outcome = classify_status(status, dest.accept_warning)
        error = None if outcome == "success" else f"C-STORE status {status_text(status)}"
        if outcome == "permanent" and classify_status(status, True) == "success":
            error = f"{error}: a warning, and accept_warning is off for {dest.name}"
        self._record(run, [item], outcome, status, error, started)
        return outcome

    # --- bookkeeping ------------------------------------------------------------

    def _record(
        self,
        run: _Run,
        items: list[_Item],
        outcome: Outcome,
        status: int | None,
        error: str | None,
        started: datetime | None = None,
    ) -> None:
        """One attempt row per item and the delivery's new state."""
        dest, counts = run.dest, run.counts
        finished = self.clock()
        started = started or finished
        dcfg = self.cfg.delivery
        metrics.delivery_attempts_total.labels(destination=dest.name, outcome=outcome).inc(
            len(items)
        )
        with session_scope(self.sessions) as s:
            for item in items:
                s.add(
                    DeliveryAttempt(
                        delivery_fk=item.id,
                        started_at=started,
                        finished_at=finished,
                        status=status,
                        error=error,
                    )
                )
                row = s.get(Delivery, item.id)
                assert row is not None
                row.attempts = item.attempts + 1
                row.updated_at = finished
                if outcome == "success":
                    row.state, row.sent_at, row.next_attempt_at = "sent", finished, None
                    row.last_error = None
                    counts.sent += 1
                    log.info(
                        "sent %s %s to %s (%s)",
                        item.kind,
                        item.sop_uid,
                        dest.name,
                        status_text(status or 0),
                    )
                elif outcome == "transient" and row.attempts < dcfg.max_attempts:
                    wait = backoff_s(row.attempts, dcfg, random.Random(run.seed))
                    row.next_attempt_at = run.started + timedelta(seconds=wait)
                    row.last_error = error
                    counts.retried += 1
                    log.warning(
                        "delivery of %s to %s failed (attempt %d of %d), retry in %.1f s: %s",
                        item.sop_uid,
                        dest.name,
                        row.attempts,
                        dcfg.max_attempts,
                        wait,
                        error,
                    )
                else:
                    why = error
                    if outcome == "transient":
                        why = f"gave up after {row.attempts} attempts: {error}"
                    row.state, row.next_attempt_at, row.last_error = "dead", None, why
                    counts.dead += 1
                    log.error("delivery of %s to %s dead: %s", item.sop_uid, dest.name, why)

    def _release(self, run: _Run, items: list[_Item]) -> None:
        """Items not attempted this round: due again at once (no attempt counted)."""
        now = self.clock()
        with session_scope(self.sessions) as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id.in_([i.id for i in items]), Delivery.state == "pending")
                .values(next_attempt_at=now)
            )
        run.counts.skipped += len(items)

    def _update_breaker(self, dest: Destination, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        now = self.clock()
        with self._lock:
            breaker = self._breakers.setdefault(dest.name, _Breaker())
            if "success" in outcomes:
                if breaker.failures or breaker.opened_at is not None:
                    log.info("destination %s is reachable again; breaker closed", dest.name)
                breaker.success()
            elif "transient" in outcomes and breaker.failure(
                now, self.cfg.delivery.breaker_failures
            ):
                log.warning(
                    "destination %s: %d consecutive failed rounds; breaker open for %g s",
                    dest.name,
                    breaker.failures,
                    self.cfg.delivery.breaker_open_s,
                )


# --------------------------------------------------------------------------- DICOM


def _load(item: _Item) -> str | None:
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
    if ts in _NATIVE:
        return [ts] + [t for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if t != ts]
    return [ts]


def _context_key(item: _Item) -> tuple[str, str]:
    return item.sop_class, "native" if item.transfer_syntax in _NATIVE else item.transfer_syntax


def _fit_contexts(items: list[_Item]) -> tuple[list[_Item], list[PresentationContext]]:
    """One presentation context per (SOP class, transfer syntax) needed; items needing a
    context beyond the limit wait for the next round."""
    keys: dict[tuple[str, str], str] = {}
    fitted: list[_Item] = []
    for item in items:
        key = _context_key(item)
        if key not in keys:
            if len(keys) >= MAX_CONTEXTS:
                continue
            keys[key] = item.transfer_syntax
        fitted.append(item)
    contexts = [build_context(cls, _syntaxes(ts)) for (cls, _), ts in keys.items()]
    return fitted, contexts


def _accepted(assoc: Association, item: _Item) -> bool:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != item.sop_class:
            continue
        ts = str(cx.transfer_syntax[0])
        if ts == item.transfer_syntax or (ts in _NATIVE and item.transfer_syntax in _NATIVE):
            return True
    return False


def _no_context(item: _Item, dest: Destination) -> str:
    return (
        f"{dest.name} accepted no presentation context for SOP class "
        f"{UID(item.sop_class).name} ({item.sop_class}) in "
        f"{UID(item.transfer_syntax).name}: it does not take this kind of object"
    )


def _make_ae(cfg: NodeConfig) -> AE:
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message logging: off
    dcfg = cfg.delivery
    ae = AE(ae_title=cfg.ae_title)
    ae.connection_timeout = dcfg.connect_timeout_s
    ae.acse_timeout = dcfg.connect_timeout_s
    ae.dimse_timeout = dcfg.dimse_timeout_s
    ae.network_timeout = max(dcfg.dimse_timeout_s, dcfg.connect_timeout_s)
    return ae


def _tls_args(dest: Destination, cfg: NodeConfig) -> tuple[ssl.SSLContext, str] | None:
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


def _associate(
    ae: AE, dest: Destination, contexts: list[PresentationContext], cfg: NodeConfig
) -> tuple[Association | None, _AssocFailure | None]:
    """An established association, or why there is none."""
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    try:
        tls = _tls_args(dest, cfg)
    except (OSError, ssl.SSLError) as exc:
        return None, _AssocFailure("transient", f"TLS set-up for {dest.name} failed: {exc}")
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
        return assoc, None
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
        return None, _AssocFailure(how, f"association rejected by {where} ({detail})")
    if not connected.is_set():
        why = (
            f"no connection within {timeout:g} s"
            if elapsed >= timeout * 0.95
            else _connect_error(dest, timeout, tls)
        )
        return None, _AssocFailure("transient", f"cannot connect to {where}: {why}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return None, _AssocFailure(
            "permanent", f"{where} accepted none of the proposed presentation contexts", True
        )
    why = (
        f"no association answer within {timeout:g} s"
        if elapsed >= timeout * 0.95
        else "association aborted"
    )
    return None, _AssocFailure("transient", f"{why} ({where})")


def echo(dest: Destination, cfg: NodeConfig) -> tuple[bool, str]:
    """C-ECHO ``dest`` from our AE title: (ok, a sentence saying what happened)."""
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    t0 = time.monotonic()
    assoc, failure = _associate(_make_ae(cfg), dest, [build_context(Verification)], cfg)
    if failure is not None:
        return False, f"C-ECHO to {where} failed: {failure.error}"
    assert assoc is not None
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
