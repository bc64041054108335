"""Output of the admin commands: consoles, JSON, times, sizes, states, tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from dicomnode.operate.admin import jsonable

# Piped into a file or a log, rich would cut tables at 80 columns ("..."): print them whole.
PIPED_WIDTH = 160
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(
    stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPED_WIDTH
)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(jsonable(value), indent=2))


def fmt_when(t: datetime | str | None) -> str:
    """A time in local time to the second (``-`` for none)."""
    if t is None:
        return "-"
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """A duration in its two largest units: ``45s``, ``3m 05s``, ``2h 10m``, ``1d 04h``."""
    if seconds is None:
        return "-"
    sign, s = ("-" if seconds < 0 else ""), int(abs(seconds))
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_ago(t: datetime | None, now: datetime) -> str:
    """How long before ``now`` ``t`` was."""
    return "-" if t is None else fmt_duration((now - t).total_seconds())


def fmt_size(n: int | None) -> str:
    """A byte count in binary units (``1.5 GiB``)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def short_uid(uid: str, width: int = 18) -> str:
    """The end of a long UID, at most ``width`` characters."""
    return uid if len(uid) <= width else "…" + uid[-(width - 1) :]


STATE_STYLES = {
    "queued": "cyan",
    "held": "magenta",
    "running": "bold blue",
    "done": "green",
    "sent": "green",
    "ok": "green",
    "selected": "green",
    "failed": "bold red",
    "dead": "bold red",
    "withheld": "red",
    "flagged": "yellow",
    "pending": "yellow",
    "superseded": "dim",
    "not_selected": "dim",
    "cancelled": "dim",
    "receiving": "cyan",
    "complete": "",
}


def state_text(s: str | None) -> Text:
    """A state in its colour (:data:`STATE_STYLES`)."""
    return Text(s or "-", style=STATE_STYLES.get(s or "", ""))


def kv_table(rows: Sequence[tuple[str, RenderableType | str]]) -> Table:
    """Label / value rows without borders."""
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    return t


# Columns of free text wrap; the others (ids, states, UIDs, times) stay on one line.
_WRAPPING = frozenset({"path", "description", "why"})


_FILLING = frozenset({"reason", "last error", "detail"})


def make_table(title: str | None, *columns: str) -> Table:
    """A list table: free-text columns wrap, the others stay on one line."""
    t = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        title_style="bold",
        pad_edge=False,
        collapse_padding=True,
    )
    for c in columns:
        if c in _WRAPPING:
            t.add_column(c, overflow="fold")
        elif c in _FILLING:  # the column that takes the remaining width
            t.add_column(c, overflow="fold", ratio=1)
        else:
            t.add_column(c, no_wrap=True, overflow="ellipsis")
    return t
