"""The short version of the reliability suite (issue 11): ``python -m bench.chaos --quick``
run in the suite. One phantom series sent by a pynetdicom SCU to a real ``dicomnode
serve`` + ``dicomnode worker``, ``serve`` SIGKILLed once at a seeded moment, the PACS (a
real Orthanc keeping the first copy) stopped while the job runs; then the whole bad-input
corpus against a fresh ``serve`` at its default limits. Every goal of the table must be
met. Also the truncation check the corpus found missing (a truncated data set used to be
answered Success)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from ingest_fixtures import dataset_bytes, write_series
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from rich.console import Console

from bench.chaos import Plan, run_suite
from bench.chaos_table import render
from dicomnode.receive.headers import HeaderError, read_header
from dicomnode.receive.spool import SpoolLimits

LIMITS = SpoolLimits(max_bytes=1 << 30, spool_above=16 << 20)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_truncated_data_set_is_not_read_as_a_header(tmp_path: Path, ts: str) -> None:
    (src,) = write_series(tmp_path, seed=7, case_id="cut", transfer_syntax=ts)[:1]
    raw = dataset_bytes(src)
    assert read_header(io.BytesIO(raw), ts, LIMITS).sop_instance_uid
    for keep in (len(raw) - 1, len(raw) - 500, len(raw) - 2 * 24 * 24):  # in the pixels
        with pytest.raises(HeaderError, match="truncated data set"):
            read_header(io.BytesIO(raw[:keep]), ts, LIMITS)


@pytest.mark.slow
def test_quick_chaos_meets_every_goal(tmp_path: Path) -> None:
    report = run_suite(tmp_path, Plan.quick(seed=0, outage_s=15.0))
    console = Console(width=170, record=True, file=io.StringIO())
    console.print(render(report.rows, "bench.chaos --quick"))
    table = console.export_text()
    print(table)
    run, corpus = report.run, report.corpus
    assert not run.problems, run.problems
    assert [r.figure for r in report.rows if r.met is False] == [], table
    # The faults really struck, and what the goals rest on is not vacuous.
    assert run.serve_kills == 1 and run.outage_s >= 15.0, run.events
    assert run.acked == run.instances_sent == 80 and run.acked_lost == 0
    assert run.final_complete == 1 and run.two_contents == 0
    assert run.waited_for_outage > 0 and run.delivered_after_outage == run.waited_for_outage
    assert run.deliveries >= 3 and run.pacs_duplicates == 0
    assert len(corpus.outcomes) == 16 and all(o.met for o in corpus.outcomes)
    assert corpus.echo_after and not corpus.outside_archive
    assert 0 < corpus.peak_rss_bytes < 1 << 30
