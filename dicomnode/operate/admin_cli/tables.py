"""Tables and panels shared by the jobs, series and deliveries commands."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dicomnode.deliver.states import DeliveryState
from dicomnode.operate import admin
from dicomnode.operate.admin_cli.format import (
    fmt_ago,
    fmt_when,
    kv_table,
    make_table,
    short_uid,
    state_text,
)


def detail_panel(title: str, rows: Sequence[tuple[str, RenderableType | str]]) -> Panel:
    """One object's label / value rows in a titled panel (``jobs show``, ``series show``)."""
    return Panel(kv_table(rows), title=title, expand=False)


def jobs_table(rows: Sequence[admin.JobRow], now: datetime) -> Table:
    t = make_table(None, "job", "state", "try", "accession", "series", "worker", "since", "reason")
    for j in rows:
        last = j.finished_at or j.heartbeat_at or j.started_at or j.created_at
        t.add_row(
            str(j.id),
            state_text(j.state),
            str(j.attempts),
            j.accession_number or "-",
            j.series_description or short_uid(j.series_instance_uid),
            j.worker_id or "-",
            fmt_ago(last, now),
            j.reason or "",
        )
    return t


def result_panel(r: admin.ResultRow) -> Panel:
    lms = r.landmarks_lps or {}
    conf = r.confidence or {}
    t = make_table(None, "landmark", "x (mm)", "y (mm)", "z (mm)", "confidence")
    for name, xyz in lms.items():
        cells = [f"{float(c):.2f}" for c in xyz] if isinstance(xyz, list) else ["?"] * 3
        c = conf.get(name)
        t.add_row(name, *cells, f"{c:.3g}" if isinstance(c, int | float) else str(c or "-"))
    meas = ", ".join(
        f"{k} {v:.2f}" if isinstance(v, int | float) else f"{k} {v}"
        for k, v in sorted((r.measurements or {}).items())
    )
    rows: list[tuple[str, RenderableType | str]] = [
        ("status", state_text(r.status)),
        ("model", r.model_version or "-"),
        ("created", fmt_when(r.created_at)),
        ("measurements", meas or "-"),
        ("flags", "; ".join(map(str, r.flags or [])) or "-"),
    ]
    if r.summary:
        rows.append(("summary", r.summary))
    return Panel(Group(kv_table(rows), t), title=f"result {r.id}", expand=False)


def events_table(events: Sequence[admin.EventRow]) -> RenderableType:
    if not events:
        return Text("history: no events recorded", style="dim")
    t = make_table("history", "when", "event", "detail")
    for e in events:
        t.add_row(fmt_when(e.at), e.kind, e.detail or "")
    return t


def deliveries_table(rows: Sequence[admin.DeliveryRow], title: str | None = None) -> Table:
    t = make_table(title, "id", "job", "to", "kind", "state", "tries", "next try", "last error")
    for d in rows:
        nxt = fmt_when(d.next_attempt_at) if d.state == DeliveryState.PENDING else "-"
        t.add_row(
            str(d.id),
            str(d.job_id),
            d.destination,
            d.kind,
            state_text(d.state),
            str(d.attempts),
            nxt,
            d.last_error or "",
        )
    return t
