"""State choices and options shared by the admin commands."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class JobState(StrEnum):
    """Job states (see ``dicomnode jobs --help``)."""

    queued = "queued"
    held = "held"
    running = "running"
    done = "done"
    failed = "failed"
    superseded = "superseded"
    cancelled = "cancelled"


class SeriesState(StrEnum):
    """Series states."""

    receiving = "receiving"
    complete = "complete"


class SeriesDecision(StrEnum):
    """Decisions on complete series."""

    selected = "selected"
    not_selected = "not_selected"
    superseded = "superseded"


class DeliveryState(StrEnum):
    """Delivery states."""

    pending = "pending"
    sent = "sent"
    failed = "failed"
    dead = "dead"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead.")]
LimitOpt = Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")]
