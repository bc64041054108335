"""The states of a delivery row (one result object to one destination).

``pending`` waits for its next attempt (``next_attempt_at``); ``sent`` is final (the
destination answered Success, or Warning when ``accept_warning``); ``dead`` is the dead
letter: a permanent failure or retries exhausted, kept until an operator requeues it
(``dicomnode deliveries requeue``). There is no separate ``failed`` state: a transient
failure stays ``pending`` with its error and attempt count, a final one is ``dead``.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    """A delivery row's ``state`` column."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


DELIVERY_STATES: tuple[str, ...] = tuple(s.value for s in DeliveryState)
"""The state names, in lifecycle order (for CLI choices and metrics labels)."""
