"""Prometheus metrics: a real HTTP endpoint scraped over loopback; database counts from
rows written through the migrated schema (SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from dicomnode.config import MetricsConfig
from dicomnode.db.models import Delivery, Job, Patient, Result, Series, Study, utcnow
from dicomnode.db.session import make_engine, session_factory
from dicomnode.operate import metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def serve() -> Iterator[list[int]]:
    """Ports started by a test, stopped after it."""
    ports: list[int] = []
    yield ports
    for p in ports:
        metrics.stop_metrics_server(p)


def test_counters_and_histogram_over_http(serve: list[int]) -> None:
    port = metrics.start_metrics_server(MetricsConfig(enabled=True, port=0))
    assert port is not None and port > 0
    serve.append(port)
    before = scrape(port)

    metrics.instances_received_total.inc(3)
    metrics.bytes_received_total.inc(3 * 524_288)
    metrics.associations_total.labels(outcome="released").inc()
    metrics.associations_total.labels(outcome="rejected").inc(2)
    metrics.delivery_attempts_total.labels(destination="pacs", outcome="sent").inc()
    metrics.delivery_attempts_total.labels(destination="pacs", outcome="failed").inc(4)
    metrics.inference_seconds.observe(3.5)
    metrics.inference_seconds.observe(0.2)

    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dicomnode_instances_received_total") == 3
    assert delta("dicomnode_bytes_received_total") == 3 * 524_288
    assert delta("dicomnode_associations_total", outcome="released") == 1
    assert delta("dicomnode_associations_total", outcome="rejected") == 2
    assert delta("dicomnode_delivery_attempts_total", destination="pacs", outcome="sent") == 1
    assert delta("dicomnode_delivery_attempts_total", destination="pacs", outcome="failed") == 4
    assert delta("dicomnode_inference_seconds_count") == 2
    assert delta("dicomnode_inference_seconds_sum") == pytest.approx(3.7)
    assert delta("dicomnode_inference_seconds_bucket", le="0.5") == 1
    assert delta("dicomnode_inference_seconds_bucket", le="5.0") == 2
    # Process metrics come along (memory, CPU, open files).
    assert value(after, "process_resident_memory_bytes") > 0


def _rows(engine: Engine) -> None:
    """Series: 2 receiving, 1 complete; jobs: 3 queued, 1 running, 2 done;
    deliveries: pacs 1 sent + 2 dead, viewer 1 pending."""
    now = utcnow()
    with session_factory(engine)() as s, s.begin():
        patient = Patient(patient_id="X")
        s.add(patient)
        s.flush()
        study = Study(study_instance_uid="1.2.9", patient_fk=patient.id)
        s.add(study)
        s.flush()
        series = [
            Series(
                series_instance_uid=f"1.2.9.{i}",
                study_fk=study.id,
                state=state,
                first_received_at=now,
                last_received_at=now,
                burst_started_at=now,
            )
            for i, state in enumerate(["receiving", "receiving", "complete"])
        ]
        s.add_all(series)
        s.flush()
        jobs = [
            Job(series_fk=series[2].id, study_fk=study.id, state=st)
            for st in ["queued", "queued", "queued", "running", "done", "done"]
        ]
        s.add_all(jobs)
        s.flush()
        result = Result(job_fk=jobs[-1].id, status="ok")
        s.add(result)
        s.flush()
        for i, (dest, state) in enumerate(
            [("pacs", "sent"), ("pacs", "dead"), ("pacs", "dead"), ("viewer", "pending")]
        ):
            s.add(
                Delivery(
                    result_fk=result.id,
                    destination=dest,
                    kind="sr",
                    sop_instance_uid=f"1.2.9.9.{i}",
                    path=f"out/{i}.dcm",
                    state=state,
                    sent_at=now - timedelta(minutes=1) if state == "sent" else None,
                )
            )


def test_database_counts_at_scrape_time(migrated_url: str, serve: list[int]) -> None:
    engine = make_engine(migrated_url)
    registry = CollectorRegistry()
    try:
        port = metrics.start_metrics_server(
            MetricsConfig(enabled=True, port=0), engine=engine, registry=registry
        )
        assert port is not None
        serve.append(port)
        empty = scrape(port)
        assert value(empty, "dicomnode_database_up") == 1
        assert value(empty, "dicomnode_queue_depth") == 0
        assert value(empty, "dicomnode_jobs_by_state", state="failed") == 0  # known states
        _rows(engine)
        got = scrape(port)  # no restart: counted when scraped
    finally:
        engine.dispose()
    assert value(got, "dicomnode_series_by_state", state="receiving") == 2
    assert value(got, "dicomnode_series_by_state", state="complete") == 1
    assert value(got, "dicomnode_jobs_by_state", state="queued") == 3
    assert value(got, "dicomnode_jobs_by_state", state="running") == 1
    assert value(got, "dicomnode_jobs_by_state", state="done") == 2
    assert ("dicomnode_jobs_by_state", (("state", "held"),)) in got
    assert value(got, "dicomnode_queue_depth") == 3
    assert value(got, "dicomnode_deliveries_by_state", destination="pacs", state="dead") == 2
    assert value(got, "dicomnode_deliveries_by_state", destination="pacs", state="sent") == 1
    assert value(got, "dicomnode_deliveries_by_state", destination="viewer", state="pending") == 1
    assert value(got, "dicomnode_deliveries_by_state", destination="viewer", state="sent") == 0


def test_unreadable_database_reports_down_but_scrapes(tmp_path: Path, serve: list[int]) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no tables
    registry = CollectorRegistry()
    try:
        metrics.register_database(engine, registry)
        again = metrics.register_database(engine, registry)  # replaces, no duplicate error
        assert isinstance(again, metrics.DatabaseCollector)
        port = metrics.start_metrics_server(MetricsConfig(enabled=True, port=0), registry=registry)
        assert port is not None
        serve.append(port)
        got = scrape(port)
    finally:
        engine.dispose()
    assert value(got, "dicomnode_database_up") == 0
    assert not any(name == "dicomnode_jobs_by_state" for name, _ in got)


def test_ports_offsets_and_errors(serve: list[int]) -> None:
    assert metrics.start_metrics_server(MetricsConfig(enabled=False)) is None
    cfg = MetricsConfig(enabled=True, port=9464)
    assert metrics.metrics_port(cfg) == 9464
    assert metrics.metrics_port(cfg, 1 + 2) == 9467  # worker index 2
    assert metrics.metrics_port(MetricsConfig(port=0), 5) == 0
    with pytest.raises(ValueError, match="offset"):
        metrics.metrics_port(cfg, -1)
    with pytest.raises(metrics.MetricsError, match="above 65535"):
        metrics.metrics_port(MetricsConfig(port=65535), 1)

    # The configured port plus the offset is what gets bound.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    port = metrics.start_metrics_server(MetricsConfig(enabled=True, port=base - 1), offset=1)
    assert port is not None and port == base
    serve.append(port)
    assert "dicomnode_instances_received_total" in {n for n, _ in scrape(port)}

    # A port in use is a clear error naming the setting.
    with pytest.raises(metrics.MetricsError, match=rf"127\.0\.0\.1:{port}.*metrics\.port"):
        metrics.start_metrics_server(MetricsConfig(enabled=True, port=port))
