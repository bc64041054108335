"""The delivery rounds: claiming due deliveries, sending them destination by destination,
and the bookkeeping of their rows and attempts.

One :class:`~dicomnode.db.models.Delivery` row per (destination, object); one
:class:`~dicomnode.db.models.DeliveryAttempt` row per send attempt. Each round
(:meth:`DeliveryService.run_once`) opens one association per destination carrying all of
that destination's due objects, proposing only the SOP classes and transfer syntaxes
those objects need. Destinations are served in parallel threads, and a destination whose
breaker is open is skipped, so one failing peer never holds up another. What is retried,
when, and what opens a breaker is :mod:`dicomnode.deliver.policy`.

Every attempt is a row: when the association itself fails (refused, rejected, aborted),
each object it was to carry gets an attempt row with that error. Objects an aborted
association never reached get no row and are due again at once. Retries of one round
share one jitter draw and are counted from the round's start, so a destination's
objects stay together on one association.

Dead deliveries go back to pending with ``dicomnode deliveries requeue``. Logs name
destinations and SOP instance UIDs, never patient names or IDs.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from pynetdicom.association import Association
from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.config import Destination, NodeConfig
from dicomnode.db.models import Delivery, DeliveryAttempt, utcnow
from dicomnode.db.session import session_factory, session_scope
from dicomnode.deliver import scu
from dicomnode.deliver.policy import Breaker, Outcome, status_text, verdict
from dicomnode.deliver.scu import AssocFailure, Outgoing
from dicomnode.deliver.states import DeliveryState
from dicomnode.operate import metrics

log = logging.getLogger(__name__)

MAX_PER_ROUND = 256
"""Objects sent to one destination in one round (one association); the rest wait."""


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


@dataclass
class _Run:
    """One destination's part of a round. Retries of one round share the jitter and are
    counted from the round's start, so they come due together (one association again)."""

    dest: Destination
    counts: DestinationCounts
    started: datetime
    seed: int


def _due(now: datetime) -> Any:
    return and_(
        Delivery.state == DeliveryState.PENDING,
        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
    )


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
        self._breakers: dict[str, Breaker] = {d.name: Breaker() for d in cfg.destinations}
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

    def _claim(self, rnd: DeliveryRound) -> list[tuple[Destination, list[Outgoing]]]:
        """Dead-letter due rows of unknown destinations, count those behind an open
        breaker, and claim the others (their next_attempt_at moves past the round)."""
        now = self.clock()
        batches: list[tuple[Destination, list[Outgoing]]] = []
        with session_scope(self.sessions) as s:
            self._dead_letter_orphans(s, rnd, now)
            states = self.breaker_state()
            for dest in self.cfg.destinations:
                if states[dest.name] == "open":
                    n = s.scalar(
                        select(func.count(Delivery.id)).where(
                            _due(now), Delivery.destination == dest.name
                        )
                    )
                    if n:
                        rnd.of(dest.name).skipped += int(n)
                    continue
                items = self._claim_due(s, dest, now)
                if items:
                    batches.append((dest, items))
        return batches

    def _dead_letter_orphans(self, s: Session, rnd: DeliveryRound, now: datetime) -> None:
        """Due rows of destinations no longer in the configuration: dead."""
        names = [d.name for d in self.cfg.destinations]
        orphans = s.scalars(
            select(Delivery)
            .where(_due(now), Delivery.destination.not_in(names))
            .limit(MAX_PER_ROUND)
            .with_for_update(skip_locked=True)
        ).all()
        for row in orphans:
            reason = f"destination {row.destination!r} is not in the configuration"
            row.state, row.last_error, row.next_attempt_at = DeliveryState.DEAD, reason, None
            row.updated_at = now
            rnd.of(row.destination).dead += 1
            log.warning("delivery %d of %s dead: %s", row.id, row.sop_instance_uid, reason)

    def _claim_due(self, s: Session, dest: Destination, now: datetime) -> list[Outgoing]:
        dcfg = self.cfg.delivery
        rows = s.scalars(
            select(Delivery)
            .where(_due(now), Delivery.destination == dest.name)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(MAX_PER_ROUND)
            .with_for_update(skip_locked=True)
        ).all()
        # A lease against a second node process, and the retry time should this
        # process die mid-round.
        lease = dcfg.connect_timeout_s * 2 + dcfg.dimse_timeout_s * (len(rows) + 1)
        for row in rows:
            row.next_attempt_at = now + timedelta(seconds=lease)
        return [Outgoing(r.id, r.sop_instance_uid, r.kind, r.path, r.attempts) for r in rows]

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

    def _send_guarded(self, dest: Destination, items: list[Outgoing]) -> DestinationCounts:
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

    def _send(self, run: _Run, items: list[Outgoing]) -> None:
        dest = run.dest
        ready: list[Outgoing] = []
        for item in items:
            reason = scu.load_object(item)
            if reason is None:
                ready.append(item)
            else:
                self._record(run, [item], "permanent", None, reason)
        if not ready:
            return
        fitted, contexts = scu.fit_contexts(ready)
        if len(fitted) < len(ready):
            kept = {i.id for i in fitted}
            self._release(run, [i for i in ready if i.id not in kept])  # next round
        ready = fitted
        started = self.clock()
        assoc = scu.associate(scu.make_ae(self.cfg), dest, contexts, self.cfg)
        if isinstance(assoc, AssocFailure):
            if assoc.no_context:
                for item in ready:
                    self._record(run, [item], "permanent", None, scu.no_context_reason(item, dest))
            else:
                self._record(run, ready, assoc.outcome, None, assoc.error, started)
            self._update_breaker(dest, [assoc.outcome] * len(ready))
            return
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

    def _store_one(self, run: _Run, assoc: Association, item: Outgoing, msg_id: int) -> Outcome:
        if not scu.accepted(assoc, item):
            self._record(run, [item], "permanent", None, scu.no_context_reason(item, run.dest))
            return "permanent"
        started = self.clock()
        answer = scu.store(assoc, item, msg_id, run.dest, self.cfg.delivery.dimse_timeout_s)
        self._record(run, [item], answer.outcome, answer.status, answer.error, started)
        return answer.outcome

    # --- bookkeeping ------------------------------------------------------------

    def _record(
        self,
        run: _Run,
        items: list[Outgoing],
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
                if row is None:
                    raise LookupError(f"delivery {item.id} was deleted while being sent")
                row.attempts = item.attempts + 1
                row.updated_at = finished
                v = verdict(outcome, row.attempts, error, dcfg, run.seed)
                row.state, row.last_error = v.state, v.error
                if v.state == DeliveryState.SENT:
                    row.sent_at, row.next_attempt_at = finished, None
                    counts.sent += 1
                    what = status_text(status or 0)
                    log.info("sent %s %s to %s (%s)", item.kind, item.sop_uid, dest.name, what)
                elif v.retry_in_s is not None:
                    row.next_attempt_at = run.started + timedelta(seconds=v.retry_in_s)
                    counts.retried += 1
                    log.warning(
                        "delivery of %s to %s failed (attempt %d of %d), retry in %.1f s: %s",
                        item.sop_uid,
                        dest.name,
                        row.attempts,
                        dcfg.max_attempts,
                        v.retry_in_s,
                        error,
                    )
                else:
                    row.next_attempt_at = None
                    counts.dead += 1
                    log.error("delivery of %s to %s dead: %s", item.sop_uid, dest.name, v.error)

    def _release(self, run: _Run, items: list[Outgoing]) -> None:
        """Items not attempted this round: due again at once (no attempt counted)."""
        now = self.clock()
        with session_scope(self.sessions) as s:
            s.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_([i.id for i in items]),
                    Delivery.state == DeliveryState.PENDING,
                )
                .values(next_attempt_at=now)
            )
        run.counts.skipped += len(items)

    def _update_breaker(self, dest: Destination, outcomes: list[Outcome]) -> None:
        now = self.clock()
        dcfg = self.cfg.delivery
        with self._lock:
            breaker = self._breakers.setdefault(dest.name, Breaker())
            change = breaker.record_round(outcomes, now, dcfg.breaker_failures)
            failures = breaker.failures
        if change == "closed":
            log.info("destination %s is reachable again; breaker closed", dest.name)
        elif change == "opened":
            log.warning(
                "destination %s: %d consecutive failed rounds; breaker open for %g s",
                dest.name,
                failures,
                dcfg.breaker_open_s,
            )
