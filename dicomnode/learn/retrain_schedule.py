"""``retrain.schedule``: retraining started by the node's own scheduler (an alternative to
``dicomnode-retrain.timer``, which stays the default).

The schedule is a crontab line (``"0 2 * * 0"``: Sunday 02:00 UTC) or an interval
(``"every 6h"``, ``"every 30m"``, ``"every 45s"``). Each tick runs ``dicomnode retrain`` in
a subprocess of its own: its threads limited to ``retrain.threads`` (torch, OpenMP, BLAS)
and its priority lowered, so that the SCP, the assembler and a worker in the scheduling
process keep running. A tick while another retrain holds the lease (from this scheduler,
the timer or a person) is skipped with the reason logged; the subprocess itself takes the
lease, so two retrains that start together still cannot both run.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from dicomnode.config import NodeConfig

log = logging.getLogger("dicomnode.retrain")

JOB_ID = "retrain"
NICE = 10
"""Niceness added to the retrain subprocess (the receiver keeps its priority)."""
BUSY_EXIT = 3
"""Exit status of ``dicomnode retrain`` while another retrain holds the lease."""
LOG_ROTATE_BYTES = 5_000_000
"""scheduled-retrain.log is moved to scheduled-retrain.log.1 past this size."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ScheduleError(ValueError):
    """A ``retrain.schedule`` that is neither a crontab line nor ``every N<s|m|h|d>``."""


def interval_s(schedule: str) -> float | None:
    """Seconds of an ``every N<unit>`` schedule; None for a crontab line."""
    m = _EVERY.match(schedule.strip().lower())
    return float(m.group(1)) * _UNIT_S[m.group(2)] if m else None


def trigger_of(schedule: str) -> Any:
    """The APScheduler trigger of a ``retrain.schedule`` value (raises
    :class:`ScheduleError` naming the accepted forms)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    every = interval_s(schedule)
    if every is not None:
        if every <= 0:
            raise ScheduleError(f"retrain.schedule {schedule!r}: the interval must be positive")
        return IntervalTrigger(seconds=every, timezone="UTC")
    try:
        return CronTrigger.from_crontab(schedule, timezone="UTC")
    except ValueError as exc:
        raise ScheduleError(
            f"retrain.schedule {schedule!r} is neither a crontab line (minute hour day month "
            f"weekday, e.g. '0 2 * * 0') nor 'every N' with s, m, h or d ({exc})"
        ) from None


@dataclass(frozen=True)
class ScheduledRun:
    """What one scheduled tick did: ``skipped`` with the reason, or the retrain's exit
    status and its output's last lines."""

    skipped: bool
    reason: str
    returncode: int | None = None
    output_tail: str = ""


def retrain_command(config_file: Path) -> list[str]:
    """``dicomnode retrain`` on ``config_file``, by this interpreter's environment."""
    script = Path(sys.executable).with_name("dicomnode")
    head = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "from dicomnode.cli import main; main()"]
    )
    return [*head, "retrain", "--config", str(config_file)]


def child_environment(threads: int) -> dict[str, str]:
    """This process's environment with the thread pools of the retrain limited."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in THREAD_VARIABLES})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_effective_config(cfg: NodeConfig, folder: Path) -> Path:
    """The scheduling process's effective configuration as the child's YAML (mode 0600):
    the child sees exactly this node's settings, whatever file or environment gave them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scheduled-node.yaml"
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _lower_priority() -> None:  # runs in the child before exec
    os.nice(NICE)


def run_scheduled_retrain(cfg: NodeConfig, engine: Engine) -> ScheduledRun:
    """One scheduled tick: skip while a retrain holds the lease, else run ``dicomnode
    retrain`` in a subprocess (limited threads, lowered priority) and log its outcome."""
    from dicomnode.learn.retrain_lease import current_lease

    held = current_lease(engine)
    if held is not None and not held.expired():
        reason = (
            f"another retrain is running (held by {held.holder} since "
            f"{held.acquired_at:%Y-%m-%d %H:%M:%S} UTC, stage: {held.stage or '?'})"
        )
        log.warning("scheduled retrain skipped: %s", reason)
        return ScheduledRun(True, reason)
    # retrain.retrain_root without importing the training code into the scheduling process
    root = cfg.retrain.dir if cfg.retrain.dir is not None else cfg.var_dir / "retrain"
    config_file = write_effective_config(cfg, root)
    log_file = root / "scheduled-retrain.log"
    log.info(
        "scheduled retrain starting (subprocess, %d threads, nice +%d; output in %s)",
        cfg.retrain.threads,
        NICE,
        log_file,
    )
    if log_file.exists() and log_file.stat().st_size > LOG_ROTATE_BYTES:
        log_file.replace(log_file.with_name(log_file.name + ".1"))
    # appended, one header per run: a later run (even one that finds the lease taken)
    # never wipes the output of the retrain before it
    with open(log_file, "ab") as sink:
        header = f"=== scheduled retrain {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC ===\n"
        sink.write(header.encode())
        sink.flush()
        start = sink.tell()
        proc = subprocess.run(
            retrain_command(config_file),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_environment(cfg.retrain.threads),
            preexec_fn=_lower_priority,
            check=False,
        )
    with open(log_file, "rb") as f:
        f.seek(start)
        this_run = f.read().decode(errors="replace")
    tail = "\n".join(this_run.strip().splitlines()[-8:])
    if proc.returncode == BUSY_EXIT:
        log.warning("scheduled retrain skipped: %s", tail.splitlines()[-1] if tail else "busy")
        return ScheduledRun(True, tail, proc.returncode, tail)
    if proc.returncode == 0:
        log.info("scheduled retrain finished: %s", tail.splitlines()[-1] if tail else "")
    else:
        log.error("scheduled retrain failed (exit %d): %s", proc.returncode, tail)
    return ScheduledRun(False, "ran", proc.returncode, tail)


def _tick_logged(cfg: NodeConfig, engine: Engine) -> None:
    try:
        run_scheduled_retrain(cfg, engine)
    except Exception:  # a tick must never stop the scheduler
        log.exception("scheduled retrain could not start")


def schedule_retrain(
    scheduler: Any, engine: Engine, cfg: NodeConfig, *, first_run: datetime | None = None
) -> Any:
    """Add the retrain to an APScheduler 3 ``scheduler`` per ``retrain.schedule`` (never
    two ticks at once); returns the job, or None when no schedule is configured (the
    systemd timer's case). ``first_run`` overrides the trigger's first time (tests)."""
    schedule = cfg.retrain.schedule
    if not schedule:
        return None
    trigger = trigger_of(schedule)
    extra: dict[str, Any] = {}
    if first_run is not None:
        extra["next_run_time"] = first_run
    job = scheduler.add_job(
        _tick_logged,
        trigger,
        args=(cfg, engine),
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        **extra,
    )
    log.info("retrain scheduled by the node: %s (UTC)", schedule)
    return job


def soon(seconds: float = 0.5) -> datetime:
    """A first-run time ``seconds`` from now (for :func:`schedule_retrain`)."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


__all__ = [
    "BUSY_EXIT",
    "JOB_ID",
    "ScheduleError",
    "ScheduledRun",
    "child_environment",
    "interval_s",
    "retrain_command",
    "run_scheduled_retrain",
    "schedule_retrain",
    "soon",
    "trigger_of",
    "write_effective_config",
]
