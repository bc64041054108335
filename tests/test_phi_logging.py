"""No patient name, ID or birth date in any log line, at DEBUG, through the real SCP, a
successful job and a failing one (issue 7)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomnode.config import LoggingConfig
from dicomnode.db.models import Job
from dicomnode.operate.logs import clear_phi, setup_logging
from dicomnode.process.worker import Worker
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series

NAME = "Zebulonquartz^Xanthippe"
PID = "PIDQX7731"
BIRTH = "19230417"
SECRETS = ("Zebulonquartz", "Xanthippe", PID, BIRTH, "1923-04-17")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging(LoggingConfig(level="DEBUG", format="text"), stream=buf)
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    clear_phi()


def _series(out: Path, case: str, seed: int) -> list[Path]:
    vol, _ = phantom.generate(seed, 0, "fast")
    meta = SeriesMeta.synthetic(
        seed, case, patient_name=NAME, patient_id=PID, patient_birth_date=BIRTH
    )
    return write_ct_series(vol, out, meta)


def test_no_phi_in_logs_through_scp_and_jobs(
    captured: io.StringIO, node_factory: Any, tmp_path: Path
) -> None:
    ok = _series(tmp_path / "ok", "phi-ok", 770_001)
    bad = _series(tmp_path / "bad", "phi-bad", 770_002)
    node = node_factory()
    for files in (ok, bad):
        r = node.storescu(files)
        assert r.returncode == 0, r.stderr
    jobs = node.wait_jobs(2)
    assert len(jobs) == 2
    # The second job fails: one of its archived files disappears.
    with node.engine.connect() as c:
        from dicomnode.db.models import Instance

        path = c.execute(
            select(Instance.path).where(Instance.series_fk == jobs[1].series_fk).limit(1)
        ).scalar_one()
    (node.cfg.archive_dir / path).unlink()
    worker = Worker(node.cfg, node.engine)
    outcomes = [worker.process_one(), worker.process_one()]
    assert sorted(o.state for o in outcomes if o) == ["done", "failed"]
    # An error path that formats a data set into an exception message.
    from pydicom import dcmread

    log = logging.getLogger("dicomnode.test")
    try:
        raise ValueError(f"cannot use {dcmread(ok[0], stop_before_pixels=True)}")
    except ValueError:
        log.exception("data set rejected")
    log.debug("patient %s / %s born %s", NAME, PID, BIRTH)
    text = captured.getvalue()
    assert "job" in text and "redacted" in text  # the logs were captured at all
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), f"{secret} leaked into the logs"
    with node.engine.connect() as c:
        states = sorted(c.execute(select(Job.state)).scalars())
    assert states == ["done", "failed"]


def test_sender_controlled_bytes_reach_the_log_escaped_once(
    captured: io.StringIO, node_factory: Any, tmp_path: Path
) -> None:
    from ingest_fixtures import RawScu, variant, write_series
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    node = node_factory()
    ct = write_series(tmp_path / "s", seed=71, case_id="ctl")[0]
    forged = "1.2.840.10008.5.1.4.1.1.2\x00\x1b[2J\n2026-01-01 00:00:00 INFO forged line"
    bad = variant(ct, tmp_path / "bad.dcm", meta_class=CTImageStorage, SOPClassUID=forged)
    with RawScu(node.port, [(CTImageStorage, [ExplicitVRLittleEndian])]) as scu:
        assert scu.send(bad) == 0xA900
    node.stop()
    text = captured.getvalue()
    escaped = "1.2.840.10008.5.1.4.1.1.2\\x00\\x1b[2J\\n2026-01-01 00:00:00 INFO forged line"
    assert f"its SOP Class UID {escaped} does not match" in text
    assert not any(line.startswith("2026-01-01 00:00:00 INFO forged") for line in text.splitlines())
    assert "\x00" not in text and "\x1b" not in text
