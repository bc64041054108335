"""Prometheus metrics of the node, served at ``http://<bind_address>:<port>/metrics``.

Counters and the inference histogram live in this process and are incremented where the
event happens (SCP, worker, delivery). The state of the queue (series, jobs, deliveries
by state) is read from the database at scrape time by :class:`DatabaseCollector`, so every
process reports the same shared truth and nothing drifts.

Each process serves its own endpoint: ``dicomnode serve`` on ``metrics.port``,
``dicomnode worker --index N`` on ``metrics.port + 1 + N`` (``offset``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from dicomnode.config import MetricsConfig
from dicomnode.db.models import Delivery, Job, Series
from dicomnode.deliver.states import DELIVERY_STATES
from dicomnode.process.jobs import JOB_STATES, JobState

log = logging.getLogger(__name__)

NAMESPACE = "dicomnode"

REGISTRY = CollectorRegistry(auto_describe=True)
"""The node's registry: the metrics below, process/platform/GC metrics, and the database
collector once :func:`register_database` was called."""
for _c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_c)

instances_received_total = Counter(
    "instances_received",
    "SOP instances received and stored (duplicates included).",
    namespace=NAMESPACE,
    registry=REGISTRY,
)
bytes_received_total = Counter(
    "bytes_received",
    "Bytes of SOP instances received.",
    namespace=NAMESPACE,
    registry=REGISTRY,
)
associations_total = Counter(
    "associations",
    "Associations by outcome (released, aborted, rejected, error).",
    ["outcome"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)
inference_seconds = Histogram(
    "inference_seconds",
    "Seconds of one job's inference (series loaded to landmarks).",
    namespace=NAMESPACE,
    registry=REGISTRY,
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
)
delivery_attempts_total = Counter(
    "delivery_attempts",
    "C-STORE attempts of result objects by destination and outcome "
    "(success; transient: retried later unless attempts are used up; permanent: dead).",
    ["destination", "outcome"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)

SERIES_STATES = ("receiving", "complete")


class MetricsError(RuntimeError):
    """The metrics endpoint could not be started."""


def _counts(rows: Iterable[Any], known: Iterable[str]) -> dict[str, int]:
    """State -> count, with every known state present (0 when no row has it)."""
    out = dict.fromkeys(known, 0)
    for state, n in rows:
        out[str(state)] = out.get(str(state), 0) + int(n)
    return out


class DatabaseCollector(Collector):
    """Series, jobs and deliveries by state, and the job queue depth, counted in the
    database at scrape time. A database that cannot be read gives ``database_up 0`` and
    no counts (the scrape itself still succeeds)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        # Names only, so registering does not query the database.
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        p = f"{NAMESPACE}_"
        yield GaugeMetricFamily(p + "database_up", "1 when the database answered the scrape.")
        yield GaugeMetricFamily(p + "series_by_state", "Series by state.", labels=["state"])
        yield GaugeMetricFamily(p + "jobs_by_state", "Jobs by state.", labels=["state"])
        yield GaugeMetricFamily(p + "queue_depth", "Jobs queued and not yet claimed.")
        yield GaugeMetricFamily(
            p + "deliveries_by_state",
            f"Result deliveries by destination and state ({', '.join(DELIVERY_STATES)}).",
            labels=["destination", "state"],
        )

    def collect(self) -> Iterator[Metric]:
        up, series, jobs, depth, deliveries = self._families()
        try:
            with self.engine.connect() as conn:
                series_rows = conn.execute(
                    select(Series.state, func.count()).group_by(Series.state)
                ).all()
                job_rows = conn.execute(select(Job.state, func.count()).group_by(Job.state)).all()
                delivery_rows = conn.execute(
                    select(Delivery.destination, Delivery.state, func.count()).group_by(
                        Delivery.destination, Delivery.state
                    )
                ).all()
        except Exception as exc:  # a scrape must not fail because the database is away
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for state, n in _counts(series_rows, SERIES_STATES).items():
            series.add_metric([state], n)
        yield series
        job_counts = _counts(job_rows, JOB_STATES)
        for state, n in job_counts.items():
            jobs.add_metric([state], n)
        yield jobs
        depth.add_metric([], job_counts[JobState.QUEUED])
        yield depth
        by_dest: dict[str, list[tuple[str, int]]] = {}
        for dest, state, n in delivery_rows:
            by_dest.setdefault(str(dest), []).append((state, n))
        for dest, rows in sorted(by_dest.items()):
            for state, n in _counts(rows, DELIVERY_STATES).items():
                deliveries.add_metric([dest, state], n)
        yield deliveries


_db_lock = threading.Lock()
_db_collectors: dict[int, DatabaseCollector] = {}


def register_database(engine: Engine, registry: CollectorRegistry = REGISTRY) -> DatabaseCollector:
    """Report the database's counts in ``registry`` (replacing an earlier engine's)."""
    with _db_lock:
        old = _db_collectors.pop(id(registry), None)
        if old is not None:
            registry.unregister(old)
        collector = DatabaseCollector(engine)
        registry.register(collector)
        _db_collectors[id(registry)] = collector
        return collector


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics request: " + format, *args)


@dataclass
class _Running:
    server: WSGIServer
    thread: threading.Thread


_servers: dict[int, _Running] = {}


def metrics_port(cfg: MetricsConfig, offset: int = 0) -> int:
    """The configured port of a process: ``cfg.port + offset`` (0 stays 0: any free port)."""
    if offset < 0:
        raise ValueError(f"metrics port offset must be >= 0, got {offset}")
    if cfg.port == 0:
        return 0
    port = cfg.port + offset
    if port > 65535:
        raise MetricsError(f"metrics.port {cfg.port} + offset {offset} is above 65535")
    return port


def start_metrics_server(
    cfg: MetricsConfig,
    offset: int = 0,
    *,
    engine: Engine | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> int | None:
    """Serve ``registry`` at ``/metrics`` on ``cfg.bind_address``, port ``cfg.port +
    offset`` (a worker passes ``1 + index``), in a daemon thread. With ``engine`` the
    database counts are included. Returns the bound port, or None when metrics are
    disabled. Raises :class:`MetricsError` when the address cannot be bound."""
    if not cfg.enabled:
        return None
    if engine is not None:
        register_database(engine, registry)
    port = metrics_port(cfg, offset)
    family = socket.AF_INET6 if ":" in cfg.bind_address else socket.AF_INET

    class Server(_ThreadingWSGIServer):
        address_family = family

    try:
        server = make_server(
            cfg.bind_address, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise MetricsError(
            f"cannot serve metrics on {cfg.bind_address}:{port} ({exc.strerror or exc}); "
            "set metrics.port (a worker uses port + 1 + its index) or metrics.enabled: false"
        ) from None
    bound = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name=f"metrics-{bound}", daemon=True)
    thread.start()
    _servers[bound] = _Running(server, thread)
    log.info("metrics at http://%s:%d/metrics", cfg.bind_address, bound)
    return bound


def stop_metrics_server(port: int) -> None:
    """Stop the endpoint started on ``port`` (no-op when none)."""
    running = _servers.pop(port, None)
    if running is None:
        return
    running.server.shutdown()
    running.server.server_close()
    running.thread.join(timeout=5)
