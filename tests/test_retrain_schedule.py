"""``retrain.schedule``: the node's own scheduler starts retrains (a subprocess each), and a
tick while another retrain holds the lease is skipped with the reason logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from retrain_fixtures import make_site
from sqlalchemy import select

from dicomnode.config import ConfigError, NodeConfig, load_config
from dicomnode.db.models import ModelVersion
from dicomnode.db.session import session_factory
from dicomnode.learn.retrain import retrain_root
from dicomnode.learn.retrain_lease import acquire
from dicomnode.learn.retrain_schedule import JOB_ID, child_environment, trigger_of
from dicomnode.services import start_background_services

TIMEOUT_S = 600.0
"""A bound, not the expected time (about 40 s on two idle cores)."""


def _wait(what: str, done: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if done():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_schedule_forms_and_refusals(tmp_path: Path) -> None:
    assert isinstance(trigger_of("0 2 * * 0"), CronTrigger)
    every = trigger_of("every 12h")
    assert isinstance(every, IntervalTrigger) and every.interval.total_seconds() == 43_200
    assert NodeConfig().retrain.schedule is None  # the systemd timer is the default
    bad = tmp_path / "node.yaml"
    bad.write_text("retrain:\n  schedule: every fortnight\n")
    with pytest.raises(ConfigError, match=r"retrain\.schedule 'every fortnight'.*crontab"):
        load_config(bad)
    env = child_environment(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


def test_scheduled_retrain_runs_in_a_subprocess_and_skips_while_the_lease_is_held(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_site(sqlite_url, tmp_path, studies=4, schedule="every 3s")
    caplog.set_level(logging.INFO, logger="dicomnode.retrain")
    try:
        site.import_points()
        held = acquire(site.engine, 600)  # e.g. `dicomnode retrain` started by hand
        scheduler = start_background_services(site.cfg, site.engine, retention=False)
        try:
            assert scheduler.get_job(JOB_ID) is not None
            _wait(
                "a skipped tick",
                lambda: any("scheduled retrain skipped" in r.getMessage() for r in caplog.records),
                timeout_s=30.0,
            )
            skipped = next(r for r in caplog.records if "retrain skipped" in r.getMessage())
            assert "another retrain is running (held by" in skipped.getMessage()
            with session_factory(site.engine)() as s:
                assert s.scalar(select(ModelVersion.id)) is None  # nothing ran
            held.release()

            def finished() -> bool:
                return any("scheduled retrain finished" in r.getMessage() for r in caplog.records)

            _wait("the scheduled retrain", finished)
            again = acquire(site.engine, 600)  # later ticks skip: no second retrain here
        finally:
            scheduler.shutdown(wait=True)
        again.release()
        assert any("subprocess, 1 threads" in r.getMessage() for r in caplog.records)
        with session_factory(site.engine)() as s:
            mv = s.scalars(select(ModelVersion).where(ModelVersion.decision.is_not(None))).one()
            assert mv.parent_version is not None and mv.parent_version.startswith("toy-")
        # appended per run: a later tick that found the lease taken keeps this output
        output = (retrain_root(site.cfg) / "scheduled-retrain.log").read_text()
        assert f"candidate {mv.version}" in output
        assert output.startswith("=== scheduled retrain ")
    finally:
        site.close()
