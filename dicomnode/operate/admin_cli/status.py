"""``dicomnode status``: the node on one screen."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from dicomnode.operate import admin
from dicomnode.operate.admin.status_types import RetrainStatus
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.format import (
    STATE_STYLES,
    console,
    fmt_ago,
    fmt_duration,
    fmt_size,
    fmt_when,
    kv_table,
    make_table,
    print_json,
    short_uid,
)
from dicomnode.operate.admin_cli.options import JsonOpt
from dicomnode.operate.node_cli import ConfigOpt


def status(ctx: typer.Context, as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """The node on one screen (--json for scripts and monitoring).

    Today's associations and instances (since local midnight), series by state, jobs by
    state and the queue depth, running jobs with their age, worker and lease, failed jobs
    with their reasons, deliveries pending and dead, free disk against the watermark, the
    model version in use, and a list of problems. The JSON carries no patient data."""
    with node_db(ctx, config) as (cfg, engine):
        snap = admin.status_snapshot(engine, cfg)
    if as_json:
        print_json(snap)
        return
    console.print(render_status(snap))


def _retrain_line(r: RetrainStatus, now: datetime) -> Text:
    """`retrain: running ... · last candidate ... passed (active)`."""
    bits = []
    if r["running"]:
        since = datetime.fromisoformat(r["started_at"]) if r["started_at"] else None
        bits.append(f"running for {fmt_ago(since, now)} ({r['stage'] or '?'})")
    if r["last_decision"]:
        active = " (active)" if r["last_active"] else ""
        bits.append(f"last candidate {r['last_candidate']}: {r['last_decision']}{active}")
    return Text("retrain: " + " · ".join(bits))


def render_status(snap: admin.StatusSnapshot) -> RenderableType:
    """The status screen."""
    now = datetime.fromisoformat(snap["generated_at"])
    model = snap["model"]
    src = "active version" if model["source"] == "database" else "configuration default"
    phantom = " · [yellow]trained on phantoms[/]" if model["trained_on_phantom"] else ""
    head = Text.from_markup(
        f"[bold]{escape(snap['node']['ae_title'])}[/] · {fmt_when(now)} · model "
        f"[bold]{escape(model['version'] or '?')}[/] ({src}){phantom} · research use only"
    )
    today = snap["today"]
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(today["associations_by_outcome"].items()))
    p_today = kv_table(
        [
            ("associations", f"{today['associations']}" + (f" ({outcomes})" if outcomes else "")),
            ("instances", str(today["instances"])),
            ("received", fmt_size(today["bytes_received"])),
        ]
    )
    ser = snap["series"]
    p_series = kv_table(
        [("receiving", str(ser["receiving"])), ("complete", str(ser["complete"]))]
        + [(f"  {k}", str(v)) for k, v in ser["by_decision"].items() if v]
    )
    jobs = snap["jobs"]
    p_jobs = kv_table(
        [(k, _state_count(k, v)) for k, v in jobs["by_state"].items() if v or k in ("queued",)]
        + [("oldest queued", fmt_duration(jobs["oldest_queued_age_s"]))]
    )
    dl = snap["deliveries"]
    p_dl = kv_table(
        [(k, _state_count(k, v)) for k, v in dl["by_state"].items()]
        + [
            ("due now", str(dl["due_now"])),
            ("oldest pending", fmt_duration(dl["oldest_pending_age_s"])),
        ]
    )
    disk = snap["disk"]
    free_style = "bold red" if disk["below_watermark"] else "green"
    p_disk = kv_table(
        [
            ("free", Text(fmt_size(disk["free_bytes"]), style=free_style)),
            ("of", fmt_size(disk["total_bytes"])),
            ("watermark", fmt_size(disk["min_free_bytes"])),
        ]
    )
    panels = Columns(
        [
            Panel(p_today, title="today", expand=False),
            Panel(p_series, title="series", expand=False),
            Panel(p_jobs, title=f"jobs · queue {jobs['queue_depth']}", expand=False),
            Panel(p_dl, title="deliveries", expand=False),
            Panel(p_disk, title="archive disk", expand=False),
        ]
    )
    parts: list[RenderableType] = [head, panels]
    retrain = snap.get("retrain")
    if retrain and (retrain["running"] or retrain["last_decision"]):
        parts.insert(1, _retrain_line(retrain, now))
    if snap["running"]:
        t = make_table("running jobs", "job", "series", "worker", "age", "heartbeat", "lease")
        for r in snap["running"]:
            lease = Text("expired", style="bold red") if r["lease_expired"] else Text("ok")
            t.add_row(
                str(r["id"]),
                short_uid(r["series_instance_uid"]),
                r["worker_id"] or "-",
                fmt_duration(r["age_s"]),
                fmt_duration(r["heartbeat_age_s"]) + " ago",
                lease,
            )
        parts.append(t)
    if snap["recent_results"]:
        t = make_table("latest results", "result", "when", "study", "status", "sent", "outcome")
        for rr in snap["recent_results"]:
            t.add_row(
                str(rr["result_id"]),
                fmt_ago(datetime.fromisoformat(rr["at"]), now) + " ago",
                short_uid(rr["study_instance_uid"]),
                rr["status"],
                f"{rr['sent']}/{rr['deliveries']}",
                Text(rr["outcome"], style="green" if rr["outcome"] == "delivered" else ""),
            )
        parts.append(t)
    fails = snap["failures"]
    if fails["recent"]:
        t = make_table(
            f"failed jobs ({fails['total']}, {fails['today']} today)", "job", "when", "reason"
        )
        for f in fails["recent"]:
            finished = datetime.fromisoformat(f["finished_at"]) if f["finished_at"] else None
            t.add_row(str(f["id"]), fmt_ago(finished, now) + " ago", f["reason"] or "-")
        parts.append(t)
    if dl["dead_recent"]:
        t = make_table(f"dead deliveries ({dl['dead']})", "id", "to", "kind", "tries", "last error")
        for d in dl["dead_recent"]:
            t.add_row(
                str(d["id"]),
                d["destination"],
                d["kind"],
                str(d["attempts"]),
                d["last_error"] or "-",
            )
        parts.append(t)
    if snap["problems"]:
        body = "\n".join(f"• {escape(p)}" for p in snap["problems"])
        parts.append(Panel(body, title="problems", border_style="red", expand=False))
    else:
        parts.append(Text("no problems", style="green"))
    return Group(*parts)


def _state_count(state: str, n: int) -> Text:
    style = STATE_STYLES.get(state, "") if n and state in ("failed", "dead") else ""
    return Text(str(n), style=style)
