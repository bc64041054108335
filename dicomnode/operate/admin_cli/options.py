"""Series choices and options shared by the admin commands (job and delivery choices are
the lifecycle's own enums, :mod:`dicomnode.process.jobs` and :mod:`dicomnode.deliver.states`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class SeriesState(StrEnum):
    """Series states."""

    receiving = "receiving"
    complete = "complete"


class SeriesDecision(StrEnum):
    """Decisions on complete series."""

    selected = "selected"
    not_selected = "not_selected"
    superseded = "superseded"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead.")]
LimitOpt = Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")]
