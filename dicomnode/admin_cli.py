"""``dicomnode`` operator commands: status, jobs, series, deliveries, results, models,
echo and purge (registered in :mod:`dicomnode.cli`).

Errors are one line and a hint on stderr (exit status 1), never a traceback, unless the
global ``--debug`` option is given.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich import box
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dicomnode import admin, node_cli
from dicomnode.admin import AdminError, jsonable
from dicomnode.config import Destination, NodeConfig
from dicomnode.db.models import utcnow

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


# --------------------------------------------------------------------------- help texts

JOBS_HELP = """Jobs: one per selected series (and cardiac phase).

States:
  queued      waiting for a worker (the queue depth in `dicomnode status`)
  held        its series is receiving late instances; it queues again when the series completes
  running     a worker holds its lease (renewed by heartbeats); an expired lease is taken over
  done        results stored; their deliveries to PACS are listed by `dicomnode deliveries list`
  failed      given up: bad input, or worker.max_attempts attempts used; the reason says why
  superseded  a better series of the same study is processed instead
  cancelled   the series no longer qualifies, or an operator cancelled it

`jobs retry` queues a failed, cancelled or done job again; `jobs cancel` stops a queued,
held or running one (a running job's results are then discarded)."""

SERIES_HELP = """Series received by the node and what was decided about them.

States:
  receiving   instances are arriving; the series completes after assembler.quiet_time_s of quiet
  complete    no instance for the quiet time (or the forced deadline passed), then a decision:
    selected      it is the study's best series and has a job
    not_selected  it does not qualify (modality, slices, thickness, coverage, ...; see reason)
    superseded    another series of the study is better (the reason names it)"""

DELIVERIES_HELP = """Result objects (SR, SEG, key images) sent to the configured destinations.

States:
  pending     to be sent (again) at next_attempt_at; retried with exponential backoff
  sent        the destination answered Success
  failed      the last attempt failed; it is retried
  dead        refused for good, or delivery.max_attempts used: nothing retries it until an
              operator runs `dicomnode deliveries requeue`"""

RESULTS_HELP = """Results for researchers (hinge points in patient LPS mm, plane, angles)."""

MODELS_HELP = """Model versions: which model bundle the workers use.

The active version lives in the database (exactly one, or none); without one, the
configuration's model.bundle (default: the shipped phantom model) is used. A version is
the bundle's name plus the first 12 hex digits of the sha256 of its bundle.json, which
holds every weight file's checksum: a bundle that was modified is refused."""

jobs_app = typer.Typer(help=JOBS_HELP, no_args_is_help=True)
series_app = typer.Typer(help=SERIES_HELP, no_args_is_help=True)
deliveries_app = typer.Typer(help=DELIVERIES_HELP, no_args_is_help=True)
results_app = typer.Typer(help=RESULTS_HELP, no_args_is_help=True)
models_app = typer.Typer(help=MODELS_HELP, no_args_is_help=True)


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


# ------------------------------------------------------------------ global options, errors


def _debug(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj or {}
    return bool(obj.get("debug"))


class CliError(Exception):
    """An error for the operator: one line and an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """The one-line message and hint for an exception."""
    from dicomnode.db.session import DatabaseError
    from dicomnode.registry import RegistryError

    # only a loaded glipcore.bundle can have raised a BundleError (it imports torch)
    bundle_mod = sys.modules.get("glipcore.bundle")
    bundle_error: type[Exception] = getattr(bundle_mod, "BundleError", CliError)

    if isinstance(exc, CliError):
        return exc.message, exc.hint
    if isinstance(exc, AdminError):
        return str(exc), exc.hint
    if isinstance(exc, RegistryError):
        return str(exc), "`dicomnode models list` shows the registered versions"
    if isinstance(exc, bundle_error):
        return str(exc), "a bundle folder holds bundle.json and the fold*.pt files it lists"
    if isinstance(exc, DatabaseError):
        msg, _, hint = str(exc).partition(": run ")
        return msg, f"run {hint}" if hint else None
    if isinstance(exc, OperationalError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return (
            f"cannot use the database: {first}",
            "is the database server running, and is database.url in the configuration right?",
        )
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {exc}", "rerun with --debug for details"
    if isinstance(exc, OSError):
        return str(exc), None
    return (
        f"unexpected error ({type(exc).__name__}): {exc}",
        "rerun with --debug for the traceback, and please report it",
    )


def print_error(message: str, hint: str | None = None) -> None:
    """``error: ...`` and ``hint: ...`` on stderr, one line each."""
    lines = message.strip().splitlines() or ["(no message)"]
    first = lines[0] + (" (--debug shows more)" if len(lines) > 1 else "")
    err_console.print(f"[bold red]error:[/] {escape(first)}", soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", soft_wrap=True)


@contextmanager
def cli_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn exceptions into one line and a hint (exit status 1), unless --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _debug(ctx):
            raise
        print_error(*describe_error(exc))
        raise typer.Exit(code=1) from None


def open_database(cfg: NodeConfig) -> Engine:
    """An engine on the node's database, refusing a missing or outdated one readably."""
    from dicomnode.db import migrate
    from dicomnode.db.session import engine_from_config

    url = make_url(cfg.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        if not path.is_file():
            raise CliError(
                f"no database at {path}",
                "run `dicomnode db upgrade` first (or check var_dir / database.url)",
            )
    engine = engine_from_config(cfg)
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
    except BaseException:
        engine.dispose()
        raise
    if current != head:
        engine.dispose()
        where = admin.safe_url(cfg.database_url)
        if current is None:
            raise CliError(f"the database {where} has no schema", "run `dicomnode db upgrade`")
        raise CliError(
            f"the database schema is at revision {current}; this dicomnode needs {head}",
            "run `dicomnode db upgrade` (or use the dicomnode that upgraded it)",
        )
    return engine


@contextmanager
def node_db(ctx: typer.Context) -> Iterator[tuple[NodeConfig, Engine]]:
    """The configuration and an engine on its database, with readable errors."""
    cfg = node_cli.node_config(ctx)
    with cli_errors(ctx):
        engine = open_database(cfg)
        try:
            yield cfg, engine
        finally:
            engine.dispose()


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2))


# ------------------------------------------------------------------------- formatting


def _when(t: datetime | str | None) -> str:
    if t is None:
        return "-"
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _dur(seconds: float | None) -> str:
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


def _ago(t: datetime | None, now: datetime) -> str:
    return "-" if t is None else _dur((now - t).total_seconds())


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _short_uid(uid: str, width: int = 18) -> str:
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


def _state(s: str | None) -> Text:
    return Text(s or "-", style=STATE_STYLES.get(s or "", ""))


def _kv(rows: Sequence[tuple[str, RenderableType | str]]) -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    return t


# Columns of free text wrap; the others (ids, states, UIDs, times) stay on one line.
_WRAPPING = frozenset({"path", "description", "why"})
_FILLING = frozenset({"reason", "last error", "detail"})


def _table(title: str | None, *columns: str) -> Table:
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


# ------------------------------------------------------------------------------- status


def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The node on one screen (--json for scripts and monitoring).

    Today's associations and instances (since local midnight), series by state, jobs by
    state and the queue depth, running jobs with their age, worker and lease, failed jobs
    with their reasons, deliveries pending and dead, free disk against the watermark, the
    model version in use, and a list of problems. The JSON carries no patient data."""
    with node_db(ctx) as (cfg, engine):
        snap = admin.status_snapshot(engine, cfg)
    if as_json:
        _print_json(snap)
        return
    console.print(render_status(snap))


def render_status(snap: admin.StatusSnapshot) -> RenderableType:
    """The status screen."""
    now = datetime.fromisoformat(snap["generated_at"])
    model = snap["model"]
    src = "active version" if model["source"] == "database" else "configuration default"
    phantom = " · [yellow]trained on phantoms[/]" if model["trained_on_phantom"] else ""
    head = Text.from_markup(
        f"[bold]{escape(snap['node']['ae_title'])}[/] · {_when(now)} · model "
        f"[bold]{escape(model['version'] or '?')}[/] ({src}){phantom} · research use only"
    )
    today = snap["today"]
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(today["associations_by_outcome"].items()))
    p_today = _kv(
        [
            ("associations", f"{today['associations']}" + (f" ({outcomes})" if outcomes else "")),
            ("instances", str(today["instances"])),
            ("received", _size(today["bytes_received"])),
        ]
    )
    ser = snap["series"]
    p_series = _kv(
        [("receiving", str(ser["receiving"])), ("complete", str(ser["complete"]))]
        + [(f"  {k}", str(v)) for k, v in ser["by_decision"].items() if v]
    )
    jobs = snap["jobs"]
    p_jobs = _kv(
        [(k, _state_count(k, v)) for k, v in jobs["by_state"].items() if v or k in ("queued",)]
        + [("oldest queued", _dur(jobs["oldest_queued_age_s"]))]
    )
    dl = snap["deliveries"]
    p_dl = _kv(
        [(k, _state_count(k, v)) for k, v in dl["by_state"].items()]
        + [("due now", str(dl["due_now"])), ("oldest pending", _dur(dl["oldest_pending_age_s"]))]
    )
    disk = snap["disk"]
    free_style = "bold red" if disk["below_watermark"] else "green"
    p_disk = _kv(
        [
            ("free", Text(_size(disk["free_bytes"]), style=free_style)),
            ("of", _size(disk["total_bytes"])),
            ("watermark", _size(disk["min_free_bytes"])),
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
    if snap["running"]:
        t = _table("running jobs", "job", "series", "worker", "age", "heartbeat", "lease")
        for r in snap["running"]:
            lease = Text("expired", style="bold red") if r["lease_expired"] else Text("ok")
            t.add_row(
                str(r["id"]),
                _short_uid(r["series_instance_uid"]),
                r["worker_id"] or "-",
                _dur(r["age_s"]),
                _dur(r["heartbeat_age_s"]) + " ago",
                lease,
            )
        parts.append(t)
    if snap["recent_results"]:
        t = _table("latest results", "result", "when", "study", "status", "sent", "outcome")
        for rr in snap["recent_results"]:
            t.add_row(
                str(rr["result_id"]),
                _ago(datetime.fromisoformat(rr["at"]), now) + " ago",
                _short_uid(rr["study_instance_uid"]),
                rr["status"],
                f"{rr['sent']}/{rr['deliveries']}",
                Text(rr["outcome"], style="green" if rr["outcome"] == "delivered" else ""),
            )
        parts.append(t)
    fails = snap["failures"]
    if fails["recent"]:
        t = _table(
            f"failed jobs ({fails['total']}, {fails['today']} today)", "job", "when", "reason"
        )
        for f in fails["recent"]:
            finished = datetime.fromisoformat(f["finished_at"]) if f["finished_at"] else None
            t.add_row(str(f["id"]), _ago(finished, now) + " ago", f["reason"] or "-")
        parts.append(t)
    if dl["dead_recent"]:
        t = _table(f"dead deliveries ({dl['dead']})", "id", "to", "kind", "tries", "last error")
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


# --------------------------------------------------------------------------------- jobs


def _jobs_table(rows: Sequence[admin.JobRow], now: datetime) -> Table:
    t = _table(None, "job", "state", "try", "accession", "series", "worker", "since", "reason")
    for j in rows:
        last = j.finished_at or j.heartbeat_at or j.started_at or j.created_at
        t.add_row(
            str(j.id),
            _state(j.state),
            str(j.attempts),
            j.accession_number or "-",
            j.series_description or _short_uid(j.series_instance_uid),
            j.worker_id or "-",
            _ago(last, now),
            j.reason or "",
        )
    return t


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with node_db(ctx) as (_cfg, engine):
        rows = admin.list_jobs(engine, state.value if state else None, limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("no jobs" + (f" in state {state.value}" if state else ""))
        return
    console.print(_jobs_table(rows, utcnow()))


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id (`dicomnode jobs list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: its series, lease, results, deliveries and history."""
    with node_db(ctx) as (_cfg, engine):
        d = admin.job_detail(engine, job_id)
    if as_json:
        _print_json(d)
        return
    j = d.job
    phase = f"{d.phase_key}={d.phase_value}" if d.phase_key else "-"
    console.print(
        Panel(
            _kv(
                [
                    ("state", _state(j.state)),
                    ("reason", j.reason or "-"),
                    ("attempts", str(j.attempts)),
                    ("study", j.study_instance_uid),
                    ("accession", j.accession_number or "-"),
                    ("series", f"{j.series_instance_uid} (id {j.series_id})"),
                    ("description", j.series_description or "-"),
                    ("phase", phase),
                    ("instances", str(d.instance_count)),
                    ("worker", j.worker_id or "-"),
                    ("model", j.model_version or "-"),
                    ("created", _when(j.created_at)),
                    ("started", _when(j.started_at)),
                    ("heartbeat", _when(j.heartbeat_at)),
                    ("lease until", _when(j.lease_expires_at)),
                    ("finished", _when(j.finished_at)),
                ]
            ),
            title=f"job {j.id}",
            expand=False,
        )
    )
    for r in d.results:
        console.print(_result_panel(r))
    if d.deliveries:
        console.print(_deliveries_table(d.deliveries, "deliveries"))
    console.print(_events_table(d.events))


def _result_panel(r: admin.ResultRow) -> Panel:
    lms = r.landmarks_lps or {}
    conf = r.confidence or {}
    t = _table(None, "landmark", "x (mm)", "y (mm)", "z (mm)", "confidence")
    for name, xyz in lms.items():
        cells = [f"{float(c):.2f}" for c in xyz] if isinstance(xyz, list) else ["?"] * 3
        c = conf.get(name)
        t.add_row(name, *cells, f"{c:.3g}" if isinstance(c, int | float) else str(c or "-"))
    meas = ", ".join(
        f"{k} {v:.2f}" if isinstance(v, int | float) else f"{k} {v}"
        for k, v in sorted((r.measurements or {}).items())
    )
    rows: list[tuple[str, RenderableType | str]] = [
        ("status", _state(r.status)),
        ("model", r.model_version or "-"),
        ("created", _when(r.created_at)),
        ("measurements", meas or "-"),
        ("flags", "; ".join(map(str, r.flags or [])) or "-"),
    ]
    if r.summary:
        rows.append(("summary", r.summary))
    return Panel(Group(_kv(rows), t), title=f"result {r.id}", expand=False)


def _events_table(events: Sequence[admin.EventRow]) -> RenderableType:
    if not events:
        return Text("history: no events recorded", style="dim")
    t = _table("history", "when", "event", "detail")
    for e in events:
        t.add_row(_when(e.at), e.kind, e.detail or "")
    return t


@jobs_app.command("retry")
def jobs_retry(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(help="Job ids.")],
) -> None:
    """Queue failed, cancelled or done jobs again (attempts reset, reason cleared).

    A running job is refused: cancel it first or let it finish."""
    with node_db(ctx) as (_cfg, engine):
        _each(job_ids, lambda i: admin.retry_job(engine, i), "queued again")


@jobs_app.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(help="Job ids.")],
    reason: Annotated[
        str | None, typer.Option(help="Why (recorded on the job and in its history).")
    ] = None,
) -> None:
    """Cancel queued, held or running jobs. A running job's worker loses its lease, so its
    results are discarded rather than stored or sent."""
    with node_db(ctx) as (_cfg, engine):
        _each(job_ids, lambda i: admin.cancel_job(engine, i, reason), "cancelled")


def _each(ids: Sequence[int], action: Callable[[int], admin.JobRow], done: str) -> None:
    """Apply ``action`` to each job id; report each; exit 1 if any was refused."""
    refused = 0
    for i in ids:
        try:
            row = action(i)
        except AdminError as exc:
            print_error(str(exc), exc.hint)
            refused += 1
            continue
        console.print(f"job {row.id}: {done}")
    if refused:
        raise typer.Exit(code=1)


# ------------------------------------------------------------------------------- series


@series_app.command("list")
def series_list(
    ctx: typer.Context,
    state: Annotated[SeriesState | None, typer.Option(help="Only series in this state.")] = None,
    decision: Annotated[
        SeriesDecision | None, typer.Option(help="Only complete series with this decision.")
    ] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """List series, newest first."""
    with node_db(ctx) as (_cfg, engine):
        rows = admin.list_series(
            engine, state.value if state else None, decision.value if decision else None, limit
        )
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("no series")
        return
    now = utcnow()
    t = _table(None, "id", "series", "description", "n", "state", "decision", "last", "job")
    for x in rows:
        job = f"{x.latest_job_id} {x.latest_job_state}" if x.latest_job_id else "-"
        t.add_row(
            str(x.id),
            _short_uid(x.series_instance_uid),
            x.series_description or "-",
            str(x.instance_count),
            _state(x.state),
            _state(x.decision) if x.decision else Text("-"),
            _ago(x.last_received_at, now) + " ago",
            job,
        )
    console.print(t)


@series_app.command("show")
def series_show(
    ctx: typer.Context,
    series: Annotated[str, typer.Argument(help="Series id or SeriesInstanceUID.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one series: its instances, decision, jobs and history."""
    with node_db(ctx) as (_cfg, engine):
        d = admin.series_detail(engine, series)
    if as_json:
        _print_json(d)
        return
    x, inst = d.series, d.instances
    thick = ", ".join(f"{t:g}" for t in inst.slice_thickness_mm) or "-"
    console.print(
        Panel(
            _kv(
                [
                    ("uid", x.series_instance_uid),
                    ("study", x.study_instance_uid),
                    ("accession", x.accession_number or "-"),
                    ("modality", x.modality or "-"),
                    ("number", str(x.series_number) if x.series_number is not None else "-"),
                    ("description", x.series_description or "-"),
                    ("manufacturer", d.manufacturer or "-"),
                    ("state", _state(x.state)),
                    ("decision", _state(x.decision) if x.decision else Text("-")),
                    ("reason", x.decision_reason or "-"),
                    ("first received", _when(x.first_received_at)),
                    ("last received", _when(x.last_received_at)),
                    ("completed", f"{_when(x.completed_at)} ({x.completion or '-'})"),
                    ("instances", f"{inst.count} ({_size(inst.bytes)})"),
                    ("matrix", ", ".join(inst.matrix) or "-"),
                    ("slice thickness", thick + " mm"),
                    ("transfer syntax", ", ".join(inst.transfer_syntaxes) or "-"),
                    ("images purged", _when(d.study_purged_at) if d.study_purged_at else "no"),
                ]
            ),
            title=f"series {x.id}",
            expand=False,
        )
    )
    if d.jobs:
        console.print(_jobs_table(d.jobs, utcnow()))
    console.print(_events_table(d.events))


# --------------------------------------------------------------------------- deliveries


def _deliveries_table(rows: Sequence[admin.DeliveryRow], title: str | None = None) -> Table:
    t = _table(title, "id", "job", "to", "kind", "state", "tries", "next try", "last error")
    for d in rows:
        nxt = _when(d.next_attempt_at) if d.state in ("pending", "failed") else "-"
        t.add_row(
            str(d.id),
            str(d.job_id),
            d.destination,
            d.kind,
            _state(d.state),
            str(d.attempts),
            nxt,
            d.last_error or "",
        )
    return t


@deliveries_app.command("list")
def deliveries_list(
    ctx: typer.Context,
    state: Annotated[
        DeliveryState | None, typer.Option(help="Only deliveries in this state.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Only deliveries to this destination (its name).")
    ] = None,
    limit: LimitOpt = 100,
    as_json: JsonOpt = False,
) -> None:
    """List deliveries, newest first."""
    with node_db(ctx) as (_cfg, engine):
        rows = admin.list_deliveries(engine, state.value if state else None, destination, limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("no deliveries")
        return
    console.print(_deliveries_table(rows))


@deliveries_app.command("requeue")
def deliveries_requeue(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(help="Delivery ids (dead, failed or pending). None: every dead one."),
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Only deliveries to this destination (its name).")
    ] = None,
) -> None:
    """Send dead deliveries again: state pending, attempts 0, next attempt now.

    Fix the cause first (`dicomnode echo DEST` tests the connection)."""
    with node_db(ctx) as (cfg, engine):
        names = [d.name for d in cfg.destinations]
        if destination is not None and destination not in names:
            known = ", ".join(names) or "none configured"
            err_console.print(
                f"[yellow]warning:[/] destination {escape(destination)!s} is not in the "
                f"configuration (configured: {escape(known)})",
                soft_wrap=True,
            )
        n = admin.requeue_deliveries(engine, ids or None, destination)
    if n == 0:
        console.print("nothing to requeue: no dead deliveries" + _to(destination))
        return
    console.print(f"{n} deliver{'y' if n == 1 else 'ies'} requeued{_to(destination)}")


def _to(destination: str | None) -> str:
    return f" to {destination}" if destination else ""


# ------------------------------------------------------------------------------ results


@results_app.command("export")
def results_export(
    ctx: typer.Context,
    csv_format: Annotated[
        bool, typer.Option("--csv", help="CSV, one row per study (the only format).")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write to this file (default: standard output).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Export the latest result of every study as CSV, for researchers.

    Columns: study_instance_uid, accession_number, study_date, series_instance_uid,
    result_id, result_created_at, status (ok, flagged, withheld), model_version,
    trained_on_phantom; RCC_x..NCC_z (patient LPS mm); plane_origin_x.._z and
    plane_normal_x.._z; every measurement present (e.g. coplanar angles, in degrees);
    confidence_RCC..NCC; flags joined by "; "."""
    with node_db(ctx) as (_cfg, engine):
        if out is not None and not out.parent.is_dir():
            raise CliError(
                f"cannot write {out}: the folder {out.parent} does not exist",
                "create the folder, or give another --out",
            )
        if out is None:
            n = admin.export_results_csv(engine, sys.stdout)
        else:
            tmp = out.with_name(out.name + ".tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                n = admin.export_results_csv(engine, f)
            os.replace(tmp, out)
    where = f" to {out}" if out is not None else ""
    err_console.print(f"{n} stud{'y' if n == 1 else 'ies'} exported{where}", soft_wrap=True)


# ------------------------------------------------------------------------------- models


def _metric(mv_metrics: dict[str, Any] | None) -> str:
    test = (mv_metrics or {}).get("test")
    if isinstance(test, dict) and isinstance(test.get("median_mm"), int | float):
        return f"{test['median_mm']:.2f}"
    return "-"


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List registered model versions; mark the active one and the configuration default."""
    with node_db(ctx) as (cfg, engine):
        models = admin.list_models(engine, cfg)
    if as_json:
        _print_json(models)
        return
    if models.versions:
        t = _table(None, "version", "active", "phantom", "test median mm", "promoted", "path")
        for v in models.versions:
            t.add_row(
                Text(v.version, style="bold" if v.active else ""),
                Text("active", style="green") if v.active else Text(""),
                "yes" if v.trained_on_phantom else "no",
                _metric(v.metrics),
                _when(v.promoted_at),
                v.path,
            )
        console.print(t)
    else:
        console.print("no registered model versions")
    default = models.config_default
    if default.error:
        note = default.error
    else:
        note = (default.version or "?") + ("" if default.registered else ", not registered")
    console.print(f"configuration default: {escape(default.path)} ({escape(note)})", soft_wrap=True)
    console.print(f"in use: [bold]{escape(models.in_use or '?')}[/]")


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Bundle folder (holds bundle.json).")],
) -> None:
    """Verify a model bundle (schema and checksums) and record its version, without
    making it active."""
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.registry import register_bundle

    with node_db(ctx) as (_cfg, engine), session_scope(session_factory(engine)) as s:
        mv = register_bundle(s, path)
        version, phantom = mv.version, mv.trained_on_phantom
    console.print(f"registered {version}" + (" (trained on phantoms)" if phantom else ""))


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[
        str, typer.Argument(help="A registered version, or a bundle folder (registered first).")
    ],
) -> None:
    """Make a model version the active one (exactly one is active).

    The bundle is verified again first, so one changed since registration is refused.
    Workers switch to it before their next job (a job already running finishes with the
    model it started with)."""
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.registry import promote, register_bundle

    with node_db(ctx) as (_cfg, engine), session_scope(session_factory(engine)) as s:
        target = version
        if Path(version).is_dir():
            target = register_bundle(s, Path(version)).version
        mv = promote(s, target)
        name, phantom = mv.version, mv.trained_on_phantom
    console.print(
        f"active model: [bold]{escape(name)}[/]"
        + (" [yellow](trained on phantoms: research use only)[/]" if phantom else "")
    )
    console.print("workers switch to it before their next job")


# ------------------------------------------------------------------------- echo, purge


def _destination(cfg: NodeConfig, name: str) -> Destination:
    for d in cfg.destinations:
        if d.name == name:
            return d
    names = ", ".join(d.name for d in cfg.destinations)
    if not names:
        raise CliError(
            f"no destination {name!r}: none is configured",
            "add one under `destinations:` in the configuration file",
        )
    raise CliError(
        f"no destination {name!r}; configured: {names}",
        "names are case-sensitive; `dicomnode config check` shows the destinations",
    )


def _optional_module(name: str, feature: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise CliError(
            f"{feature} needs {name}, which this installation does not have",
            "update glip-node",
        ) from None


def echo(
    ctx: typer.Context,
    dest: Annotated[str, typer.Argument(help="Destination name from the configuration.")],
) -> None:
    """C-ECHO a configured destination (tests the path that deliveries use).

    Uses the destination's host, port, AE title and TLS settings and the node's AE title."""
    cfg = node_cli.node_config(ctx)
    if not _debug(ctx):
        # pynetdicom logs a failed association at ERROR; the one-line report says it all
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    with cli_errors(ctx):
        d = _destination(cfg, dest)
        delivery = _optional_module("dicomnode.delivery", "C-ECHO")
        ok, message = cast(Callable[[Destination, NodeConfig], tuple[bool, str]], delivery.echo)(
            d, cfg
        )
    if ok:
        console.print(f"[green]ok:[/] {escape(message)}", soft_wrap=True)
        return
    print_error(message, "check the destination's host, port, AE title and TLS settings")
    raise typer.Exit(code=1)


def purge(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be deleted.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete archived images of delivered studies (--dry-run: only report).

    A study qualifies when all its results were delivered more than
    retention.delivered_days ago; its database rows stay, and studies with annotations are
    never purged (retraining needs them)."""
    with node_db(ctx) as (cfg, engine):
        retention = _optional_module("dicomnode.retention", "purge")
        report = retention.purge(engine, cfg.archive_dir, cfg.retention, dry_run=dry_run)
    data = jsonable(report)
    if isinstance(data, dict):
        for name in ("files", "bytes"):  # properties are not dataclass fields
            if isinstance(getattr(report, name, None), int):
                data[name] = getattr(report, name)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    summary = report.summary() if callable(getattr(report, "summary", None)) else str(data)
    console.print(("dry run: " if dry_run else "") + escape(str(summary)), soft_wrap=True)
    failed = data.get("failed") if isinstance(data, dict) else None
    if isinstance(failed, dict) and failed:
        t = _table("not purged", "study id", "why")
        for study_id, why in failed.items():
            t.add_row(str(study_id), str(why))
        console.print(t)


def register(app: typer.Typer) -> None:
    """Add the operator commands to the ``dicomnode`` app."""
    app.command("status")(status)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(series_app, name="series")
    app.add_typer(deliveries_app, name="deliveries")
    app.add_typer(results_app, name="results")
    app.add_typer(models_app, name="models")
    app.command("echo")(echo)
    app.command("purge")(purge)
