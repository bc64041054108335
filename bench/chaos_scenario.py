"""The chaos scenario: senders push phantom series into a real node (``serve`` and a
``worker`` process) that delivers to a real Orthanc keeping the first copy of each SOP
Instance UID, while faults strike at seeded random moments: ``serve`` and the worker
SIGKILLed and restarted, the PACS stopped for a while. The same scenario without faults
gives the reference time. Figures come from the database, the archive and Orthanc."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from bench.chaos_content import KeepFirstOrthanc, SentObject, check_pacs, evidence_count
from bench.chaos_procs import Node, node_settings
from bench.chaos_senders import Ledger, Senders, SeriesFiles
from dicomnode.config import load_config
from dicomnode.db.models import (
    Delivery,
    DeliveryAttempt,
    Instance,
    Job,
    Result,
    Series,
    utcnow,
)
from dicomnode.db.session import make_engine, session_factory
from dicomnode.operate.localpacs import OrthancServer
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series

BUSY = ("queued", "held", "running")


def make_series(folder: Path, count: int, seed: int, preset: str = "fast") -> list[SeriesFiles]:
    """``count`` phantom series (seeded), written once and shared by every run."""
    out = []
    for i in range(count):
        vol, truth = phantom.generate(seed, i, preset)
        meta = SeriesMeta.synthetic(seed + i, f"chaos-{seed}-{i}")
        files = write_ct_series(vol, folder / f"s{i:02d}", meta)
        from pydicom import dcmread

        uids = tuple(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        lps = tuple(tuple(float(c) for c in p) for p in truth.landmarks_lps)
        out.append(
            SeriesFiles(
                series_uid=meta.series_instance_uid,
                study_uid=meta.study_instance_uid,
                files=tuple(files),
                sop_uids=uids,
                truth_lps=lps,  # type: ignore[arg-type]
            )
        )
    return out


@dataclass(frozen=True)
class Faults:
    """What strikes during a run: SIGKILLs of ``serve`` and of the worker, a PACS outage."""

    serve_kills: int = 2
    worker_kills: int = 1
    outage_s: float = 120.0
    seed: int = 0

    @staticmethod
    def none() -> Faults:
        return Faults(serve_kills=0, worker_kills=0, outage_s=0.0)

    @property
    def any(self) -> bool:
        return bool(self.serve_kills or self.worker_kills or self.outage_s)


@dataclass
class RunFigures:
    """What one run measured."""

    series: int
    instances_sent: int
    acked: int
    acked_lost: int
    final_complete: int
    superseded_partial: int
    results: int
    withheld: int
    deliveries: int
    not_delivered: int
    dead: int
    pacs_missing: int
    two_contents: int
    pacs_duplicates: int
    delivered_after_outage: int
    waited_for_outage: int
    serve_kills: int
    worker_kills: int
    outage_s: float  # how long the PACS was down
    wall_s: float
    series_per_hour: float
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class FaultDriver(threading.Thread):
    """Strikes the faults at seeded random moments of a run: ``serve`` kills at random
    shares of the instances acknowledged, a worker kill while a job runs, the PACS outage
    from the moment the first job runs (so that its result meets it)."""

    def __init__(
        self,
        faults: Faults,
        node: Node,
        pacs: OrthancServer,
        ledger: Ledger,
        total: int,
        engine: Engine,
        quiet_s: float,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.faults, self.node, self.pacs, self.ledger = faults, node, pacs, ledger
        self.total, self.engine, self.quiet_s = total, engine, quiet_s
        rng = random.Random(faults.seed)
        n = faults.serve_kills
        self.kill_at = sorted(rng.uniform(0.1, 0.9) for _ in range(n))
        # down for a random time, sometimes longer than the quiet time (a fresh quiet
        # period after the start must keep the resumed series from being cut off)
        self.down_s = [rng.uniform(0.5, 2.0 * quiet_s) for _ in range(n)]
        self.worker_after = rng.uniform(0.3, 0.7)
        self.events: list[str] = []
        self.outage_window: tuple[float, float] | None = None
        self.outage_utc: list[datetime] = []  # when the PACS stopped, when it was back
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def _log(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:6.1f} s  {what}")

    def _share(self) -> float:
        return self.ledger.count() / max(1, self.total)

    def _job_running(self) -> bool:
        with session_factory(self.engine)() as s:
            return s.scalars(select(Job.id).where(Job.state == "running")).first() is not None

    def _delivery_failed(self) -> bool:
        with session_factory(self.engine)() as s:
            failed = select(DeliveryAttempt.id).where(
                (DeliveryAttempt.error.is_not(None)) | (DeliveryAttempt.status != 0)
            )
            return s.scalars(failed).first() is not None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the table's problems
            self.errors.append(f"fault driver: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        kills = list(zip(self.kill_at, self.down_s, strict=True))
        worker_left = self.faults.worker_kills
        outage_left = self.faults.outage_s > 0
        outage_end: float | None = None
        while not self.stop.wait(0.05):
            now = time.monotonic()
            if kills and self._share() >= kills[0][0]:
                share, down = kills.pop(0)
                self.node.kill_serve()
                self._log(f"serve SIGKILL at {share:.0%} acked; down {down:.1f} s")
                time.sleep(down)
                self.node.start_serve()
                self._log("serve restarted")
            if worker_left and self._share() >= self.worker_after and self._job_running():
                assert self.node.worker is not None
                self.node.worker.kill()
                worker_left -= 1
                self._log("worker SIGKILL while a job runs")
                time.sleep(1.0)
                self.node.worker.start()
                self._log("worker restarted (the job waits for its lease to expire)")
            if outage_left and self._job_running():  # its result meets the outage
                self.pacs.stop()
                self.outage_utc = [utcnow()]
                outage_left = False
                outage_end = now + self.faults.outage_s
                self._log(f"PACS stopped for {self.faults.outage_s:.0f} s")
            # down for outage_s at least, and until a delivery has met the outage
            if (
                outage_end is not None
                and now >= outage_end
                and (self._delivery_failed() or now >= outage_end + 600)
            ):
                self.pacs.start()
                self.outage_utc.append(utcnow())
                self.outage_window = (outage_end - self.faults.outage_s, time.monotonic())
                outage_end = None
                down = self.outage_window[1] - self.outage_window[0]
                self._log(f"PACS back after {down:.0f} s")
            if not kills and not worker_left and not outage_left and outage_end is None:
                return
        if outage_end is not None:  # stopped early: the PACS must be up for the checks
            self.pacs.start()


def _aware(t: datetime) -> datetime:
    """A database time as an aware UTC datetime (SQLite returns naive ones)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _settled(engine: Engine, series: list[SeriesFiles]) -> bool:
    """Every series has a result from its complete input, nothing waits or runs, every
    delivery is sent or dead."""
    with session_factory(engine)() as s:
        if s.scalars(select(Job.id).where(Job.state.in_(BUSY))).first() is not None:
            return False
        if s.scalars(select(Delivery.id).where(Delivery.state == "pending")).first():
            return False
        rows = s.execute(
            select(Series.series_instance_uid, Job.instance_count)
            .join(Job, Job.series_fk == Series.id)
            .join(Result, Result.job_fk == Job.id)
        ).all()
        if s.scalars(select(Series.id).where(Series.state == "receiving")).first():
            return False
    best = {u: 0 for u in (x.series_uid for x in series)}
    for uid, n in rows:
        if uid in best:
            best[uid] = max(best[uid], n)
    return all(best[x.series_uid] >= len(x.files) for x in series)


def run_scenario(
    folder: Path,
    series: list[SeriesFiles],
    senders: int,
    faults: Faults,
    *,
    quiet_s: float = 3.0,
    db_url: str | None = None,
    timeout_s: float = 1800.0,
) -> RunFigures:
    """Run the scenario once (``faults.none()`` for the reference run)."""
    folder.mkdir(parents=True, exist_ok=True)
    pacs = KeepFirstOrthanc(folder / "pacs").start()
    url = db_url or f"sqlite:///{folder / 'node.db'}"
    settings = node_settings(
        folder / "var", url, Node.new_port(), quiet_s=quiet_s, pacs=(pacs.ae_title, pacs.port)
    )
    node = Node(folder / "node", settings)
    plan = [series[i::senders] for i in range(senders)]
    problems: list[str] = []
    driver: FaultDriver | None = None
    engine: Engine | None = None
    try:
        node.start()
        engine = make_engine(url)
        t0 = time.monotonic()
        sending = Senders(node.port, plan, timeout_s).start()
        total = sum(len(s.files) for s in series)
        driver = FaultDriver(faults, node, pacs, sending.ledger, total, engine, quiet_s)
        driver.t0 = t0
        if faults.any:
            driver.start()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline and not (
            sending.done() and not driver.is_alive() and pacs.alive() and _settled(engine, series)
        ):
            if not node.serve.alive() and not driver.is_alive():
                problems.append(f"serve died:\n{node.tail('serve')}")
                break
            time.sleep(0.5)
        else:
            if time.monotonic() >= deadline:
                problems.append(f"not settled within {timeout_s:.0f} s")
        driver.stop.set()
        if driver.is_alive():
            driver.join(timeout=300)
        wall = time.monotonic() - t0
        problems += sending.problems + driver.errors
        figures = _measure(
            engine, node, pacs, series, sending.ledger, driver, wall, faults, problems
        )
    finally:
        if driver is not None:
            driver.stop.set()
        node.stop()
        if engine is not None:
            engine.dispose()
        pacs.stop()
    return figures


def _measure(
    engine: Engine,
    node: Node,
    pacs: OrthancServer,
    series: list[SeriesFiles],
    ledger: Ledger,
    driver: FaultDriver,
    wall_s: float,
    faults: Faults,
    problems: list[str],
) -> RunFigures:
    archive = load_config(node.config).archive_dir
    with session_factory(engine)() as s:
        stored = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
        lost = [u for u in ledger.acked if u not in stored or not (archive / stored[u]).is_file()]
        per_series = s.execute(
            select(Series.series_instance_uid, Job.instance_count, Result.id, Result.status)
            .join(Job, Job.series_fk == Series.id)
            .join(Result, Result.job_fk == Job.id)
            .order_by(Result.id)
        ).all()
        deliveries = list(s.scalars(select(Delivery)))
        attempts = s.execute(
            select(DeliveryAttempt.delivery_fk, DeliveryAttempt.status, DeliveryAttempt.error)
        ).all()
    size = {x.series_uid: len(x.files) for x in series}
    final: dict[str, tuple[int, int, str]] = {}
    partial = 0
    for uid, n, rid, status in per_series:
        final[uid] = (n, rid, status)
        partial += n < size.get(uid, 0)
    sent = [d for d in deliveries if d.state == "sent"]
    check = check_pacs(pacs, [SentObject(d.sop_instance_uid, d.kind, Path(d.path)) for d in sent])
    # the final SR of each series in the PACS names every instance of the series
    complete = 0
    for x in series:
        n, rid, status = final.get(x.series_uid, (0, -1, ""))
        srs = [d for d in sent if d.result_fk == rid and d.kind == "sr"]
        if n == len(x.files) and (status == "withheld" or srs):
            copy = check.stored.get(srs[0].sop_instance_uid) if srs else None
            if copy is None or evidence_count(copy) == len(x.files):
                complete += 1
    # deliveries made before the PACS was back and not sent before it stopped: they met
    # the outage (tried and failed, or held back by the circuit breaker)
    failed = {fk for fk, status, error in attempts if error or (status not in (None, 0))}
    waited = [d for d in deliveries if d.id in failed]
    if len(driver.outage_utc) == 2:
        down, back = (_aware(t) for t in driver.outage_utc)
        waited = [
            d
            for d in deliveries
            if d.id in failed
            or (_aware(d.created_at) < back and (d.sent_at is None or _aware(d.sent_at) > down))
        ]
    after = [d for d in waited if d.state == "sent"]
    distinct = {d.sop_instance_uid for d in sent}
    return RunFigures(
        series=len(series),
        instances_sent=sum(len(x.files) for x in series),
        acked=len(ledger.acked),
        acked_lost=len(lost),
        final_complete=complete,
        superseded_partial=partial,
        results=len(per_series),
        withheld=sum(1 for *_, st in per_series if st == "withheld"),
        deliveries=len(deliveries),
        not_delivered=sum(1 for d in deliveries if d.state != "sent"),
        dead=sum(1 for d in deliveries if d.state == "dead"),
        pacs_missing=len(check.missing),
        two_contents=len(check.two_contents),
        pacs_duplicates=len(pacs.instances()) - len(distinct),
        delivered_after_outage=len(after),
        waited_for_outage=len(waited),
        serve_kills=node.serve.kills,
        worker_kills=node.worker.kills if node.worker else 0,
        outage_s=(driver.outage_window[1] - driver.outage_window[0])
        if driver.outage_window
        else 0.0,
        wall_s=wall_s,
        series_per_hour=len(series) / wall_s * 3600.0 if complete == len(series) else 0.0,
        events=driver.events,
        problems=problems,
    )
