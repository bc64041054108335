"""The retry policy: what a C-STORE answer means, how long to wait before the next
attempt, when to give up, and the circuit breaker of a destination. Its numbers come from
one place, :class:`~dicomnode.config.DeliveryConfig`.

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

The breaker counts failed rounds (no object delivered, at least one transient failure);
after ``breaker_failures`` in a row the destination is skipped for ``breaker_open_s``,
then half-open: the next round is the one trial association, which closes it on any
success or opens it again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicomnode.config import DeliveryConfig
from dicomnode.deliver.states import DeliveryState

Outcome = Literal["success", "transient", "permanent"]
BreakerState = Literal["closed", "open", "half-open"]
BreakerChange = Literal["closed", "opened"]

TRANSIENT_STATUSES = frozenset({0x0110, 0x0213})
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})


def classify_status(status: int, accept_warning: bool) -> Outcome:
    """What a C-STORE response status means for the delivery (see the module docstring)."""
    if status == 0x0000:
        return "success"
    if status in WARNING_STATUSES or 0xB000 <= status <= 0xBFFF:
        return "success" if accept_warning else "permanent"
    if 0xA700 <= status <= 0xA7FF or status in TRANSIENT_STATUSES:
        return "transient"
    return "permanent"


def status_text(status: int) -> str:
    """``0xA700 (Refused: Out of Resources)``."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"0x{status:04X}" + (f" ({meaning})" if meaning else "")


def backoff_s(attempt: int, cfg: DeliveryConfig, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based):
    ``backoff_initial_s * 2**(attempt-1)`` times a uniform factor in
    ``[1 - jitter, 1 + jitter]``, never more than ``backoff_max_s``."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    base = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2.0 ** min(attempt - 1, 64))
    factor = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
    return min(cfg.backoff_max_s, base * factor)


@dataclass(frozen=True)
class Verdict:
    """A delivery's next state after an attempt: ``error`` is its new ``last_error``;
    ``retry_in_s`` is set when it stays pending for another attempt."""

    state: DeliveryState
    error: str | None
    retry_in_s: float | None = None


def verdict(
    outcome: Outcome, attempts: int, error: str | None, cfg: DeliveryConfig, seed: int
) -> Verdict:
    """The state after attempt number ``attempts`` ended in ``outcome``: sent, pending
    with a backoff (a transient failure below ``max_attempts``) or dead. Retries drawn
    with the same ``seed`` share their jitter, so one round's retries come due together."""
    if outcome == "success":
        return Verdict(DeliveryState.SENT, None)
    if outcome == "transient" and attempts < cfg.max_attempts:
        wait = backoff_s(attempts, cfg, random.Random(seed))
        return Verdict(DeliveryState.PENDING, error, wait)
    if outcome == "transient":
        error = f"gave up after {attempts} attempts: {error}"
    return Verdict(DeliveryState.DEAD, error)


class Breaker:
    """Consecutive failed rounds of one destination; open for a while past a limit."""

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: datetime | None = None

    def state(self, now: datetime, open_s: float) -> BreakerState:
        """closed, open (skip the destination) or half-open (one trial round)."""
        if self.opened_at is None:
            return "closed"
        return "open" if now < self.opened_at + timedelta(seconds=open_s) else "half-open"

    def record_round(
        self, outcomes: Sequence[Outcome], now: datetime, threshold: int
    ) -> BreakerChange | None:
        """Count one round's outcomes: any success closes the breaker, else a transient
        failure counts against it. Says "closed" when a failing or open breaker closed,
        "opened" when it (re)opened."""
        if "success" in outcomes:
            was_failing = bool(self.failures) or self.opened_at is not None
            self.failures, self.opened_at = 0, None
            return "closed" if was_failing else None
        if "transient" not in outcomes:
            return None
        self.failures += 1
        if self.opened_at is not None or self.failures >= threshold:
            self.opened_at = now
            return "opened"
        return None
