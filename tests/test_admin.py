"""Operator queries and actions (dicomnode.operate.admin) on real rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from dicomnode.config import SHIPPED_BUNDLE, NodeConfig
from dicomnode.db.models import (
    AssociationAudit,
    Delivery,
    Event,
    Instance,
    Job,
    Patient,
    Result,
    Series,
    Study,
)
from dicomnode.db.session import session_factory, session_scope
from dicomnode.operate import admin
from dicomnode.operate.admin import AdminError
from dicomnode.process.jobs import LeaseLostError, claim_job, renew
from glipcore.bundle import read_manifest

UID = "1.2.826.0.1.3680043.8.498."


def local_noon() -> datetime:
    """Today's local noon, timezone-aware: 'now' for the seeded rows ('today' is local)."""
    return datetime.now().astimezone().replace(hour=12, minute=0, second=0, microsecond=0)


@dataclass
class Seeded:
    """Ids of the seeded rows."""

    now: datetime
    studies: dict[str, int]
    series: dict[str, int]
    jobs: dict[str, int]
    results: dict[str, int]
    deliveries: dict[str, int]


def seed(engine: Engine, now: datetime) -> Seeded:
    """Two studies, four series, six jobs in every interesting state, three results (two
    for study A), deliveries sent/dead/pending, audits and instances partly from today."""

    def ago(seconds: float) -> datetime:
        return now - timedelta(seconds=seconds)

    with session_scope(session_factory(engine)) as s:
        p = Patient(patient_id="P1", issuer="")
        s.add(p)
        s.flush()
        st = {
            "A": Study(
                study_instance_uid=UID + "1",
                patient_fk=p.id,
                accession_number="ACC-A",
                study_date="20260101",
            ),
            "B": Study(study_instance_uid=UID + "2", patient_fk=p.id, accession_number="ACC-B"),
        }
        s.add_all(st.values())
        s.flush()

        def series(
            key: str, study: str, state: str, decision: str | None, reason: str | None = None
        ) -> Series:
            return Series(
                series_instance_uid=UID + "1." + key,
                study_fk=st[study].id,
                modality="CT",
                series_description=f"series {key}",
                state=state,
                decision=decision,
                decision_reason=reason,
                instance_count=3,
                first_received_at=ago(3600),
                last_received_at=ago(3000),
                burst_started_at=ago(3600),
                completed_at=ago(2900) if state == "complete" else None,
                completion="quiet" if state == "complete" else None,
            )

        se = {
            "s1": series("1", "A", "complete", "selected"),
            "s2": series("2", "A", "receiving", None),
            "s3": series("3", "B", "complete", "not_selected", "only 3 slices"),
            "s4": series("4", "B", "complete", "selected"),
        }
        s.add_all(se.values())
        s.flush()

        def job(series_key: str, state: str, **kw: Any) -> Job:
            x = se[series_key]
            return Job(
                series_fk=x.id,
                study_fk=x.study_fk,
                state=state,
                instance_count=3,
                created_at=kw.pop("created_at", ago(2800)),
                **kw,
            )

        jobs = {
            "done": job("s1", "done", attempts=1, finished_at=ago(2000), worker_id="w0"),
            "failed": job(
                "s4",
                "failed",
                attempts=3,
                reason="series geometry: slice gap of 5 mm",
                finished_at=ago(1000),
            ),
            "running": job(
                "s1",
                "running",
                attempts=1,
                worker_id="host-a:1",
                started_at=ago(120),
                heartbeat_at=ago(10),
                lease_expires_at=now + timedelta(seconds=600),
                lease_token="tok-run",
            ),
            "stale": job(
                "s4",
                "running",
                attempts=2,
                worker_id="host-b:1",
                started_at=ago(4000),
                heartbeat_at=ago(3700),
                lease_expires_at=ago(100),
                lease_token="tok-stale",
            ),
            "queued": job("s4", "queued", created_at=ago(300)),
            "cancelled": job("s4", "cancelled", reason="series no longer qualifies"),
        }
        s.add_all(jobs.values())
        s.flush()
        res = {
            "A_old": Result(
                job_fk=jobs["done"].id,
                status="ok",
                model_version="phantom-glip-000000000000",
                landmarks_lps={"RCC": [1.0, 2.0, 3.0], "LCC": [4.0, 5.0, 6.0], "NCC": [7, 8, 9]},
                created_at=ago(2500),
            ),
            "A": Result(
                job_fk=jobs["done"].id,
                status="flagged",
                model_version="phantom-glip-111111111111",
                landmarks_lps={
                    "RCC": [10.5, -20.25, 30.125],
                    "LCC": [11.0, -21.0, 31.0],
                    "NCC": [12.0, -22.0, 32.0],
                },
                plane={"origin": [11.0, -21.0, 31.0], "normal": [0.6, 0.0, 0.8]},
                measurements={"tilt_deg": 36.87, "RCC-LCC_mm": 1.5, "coplanar_lao_deg": 12.0},
                confidence={"RCC": 0.9, "LCC": 0.8, "NCC": 0.7},
                flags=["hinge distance RCC-LCC 1.5 mm below 8 mm", "low confidence"],
                created_at=ago(2000),
            ),
            "B": Result(
                job_fk=jobs["failed"].id,
                status="withheld",
                model_version="phantom-glip-111111111111",
                measurements={"coplanar_cranial_deg": -5.0},
                created_at=ago(1500),
            ),
        }
        s.add_all(res.values())
        s.flush()

        def delivery(key: str, dest: str, state: str, **kw: Any) -> Delivery:
            return Delivery(
                result_fk=res["A"].id,
                destination=dest,
                kind=kw.pop("kind", "sr"),
                sop_instance_uid=UID + "9." + key,
                path=f"out/{key}.dcm",
                state=state,
                created_at=ago(1900),
                updated_at=ago(100),
                **kw,
            )

        dl = {
            "sent": delivery("1", "PACS", "sent", attempts=1, sent_at=ago(1800)),
            "dead": delivery("2", "PACS", "dead", attempts=10, last_error="0xA700 out of memory"),
            "pending": delivery("3", "PACS", "pending", attempts=2, next_attempt_at=now),
            "dead2": delivery("4", "VNA", "dead", kind="seg", attempts=1, last_error="refused"),
        }
        s.add_all(dl.values())
        for started in (ago(60), ago(30), now - timedelta(days=2)):
            s.add(
                AssociationAudit(
                    calling_ae="STORESCU",
                    called_ae="GLIPNODE",
                    peer_host="127.0.0.1",
                    peer_port=1234,
                    started_at=started,
                    outcome="released",
                    requests=3,
                    stored=3,
                )
            )
        for i, received in enumerate((ago(50), ago(40), ago(30), now - timedelta(days=2))):
            s.add(
                Instance(
                    sop_instance_uid=UID + f"5.{i}",
                    series_fk=se["s1"].id,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=f"x/{i}.dcm",
                    size_bytes=1000,
                    received_at=received,
                    slice_thickness=1.0,
                    rows=24,
                    columns=24,
                )
            )
        s.flush()
        return Seeded(
            now=now,
            studies={k: v.id for k, v in st.items()},
            series={k: v.id for k, v in se.items()},
            jobs={k: v.id for k, v in jobs.items()},
            results={k: v.id for k, v in res.items()},
            deliveries={k: v.id for k, v in dl.items()},
        )


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine, local_noon())


def _job(engine: Engine, job_id: int) -> Job:
    with session_factory(engine)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _events(engine: Engine, kind: str) -> list[Event]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_status_snapshot_counts(engine: Engine, seeded: Seeded, tmp_path: Path) -> None:
    cfg = NodeConfig(var_dir=tmp_path / "var", archive={"min_free": "0"})
    snap = admin.status_snapshot(engine, cfg, now=seeded.now)
    json.dumps(snap)  # JSON-ready as it is
    assert snap["schema"]["ok"]
    assert snap["today"]["associations"] == 2
    assert snap["today"]["associations_by_outcome"] == {"released": 2}
    assert snap["today"]["instances"] == 3
    assert snap["today"]["bytes_received"] == 3000
    assert snap["series"] == {
        "receiving": 1,
        "complete": 3,
        "by_decision": {"selected": 2, "not_selected": 1, "superseded": 0, "undecided": 0},
    }
    assert snap["jobs"]["by_state"] == {
        "queued": 1,
        "held": 0,
        "running": 2,
        "done": 1,
        "failed": 1,
        "superseded": 0,
        "cancelled": 1,
    }
    assert snap["jobs"]["queue_depth"] == 1
    assert snap["jobs"]["oldest_queued_age_s"] == pytest.approx(300)
    outcomes = {r["result_id"]: r["outcome"] for r in snap["recent_results"]}
    assert outcomes == {
        seeded.results["A"]: "delivery failed",  # one of its deliveries is dead
        seeded.results["A_old"]: "no destinations",
        seeded.results["B"]: "withheld",
    }
    running = {r["id"]: r for r in snap["running"]}
    fresh, stale = running[seeded.jobs["running"]], running[seeded.jobs["stale"]]
    assert fresh["worker_id"] == "host-a:1"
    assert fresh["age_s"] == pytest.approx(120)
    assert fresh["heartbeat_age_s"] == pytest.approx(10)
    assert fresh["lease_expires_in_s"] == pytest.approx(600)
    assert not fresh["lease_expired"] and stale["lease_expired"]
    assert snap["failures"]["total"] == 1
    assert snap["failures"]["recent"][0]["reason"] == "series geometry: slice gap of 5 mm"
    dl = snap["deliveries"]
    assert dl["by_state"] == {"pending": 1, "sent": 1, "dead": 2}  # deliver.states
    assert dl["due_now"] == 1
    assert dl["by_destination"] == {
        "PACS": {"sent": 1, "dead": 1, "pending": 1},
        "VNA": {"dead": 1},
    }
    assert {d["last_error"] for d in dl["dead_recent"]} == {"0xA700 out of memory", "refused"}
    assert snap["disk"]["free_bytes"] is not None and snap["disk"]["free_bytes"] > 0
    assert not snap["disk"]["below_watermark"]
    assert snap["model"]["source"] == "config"
    assert snap["model"]["version"] == read_manifest(SHIPPED_BUNDLE)[1]
    assert snap["model"]["trained_on_phantom"] is True
    problems = " | ".join(snap["problems"])
    assert "expired lease" in problems and "2 dead deliveries" in problems
    assert "1 failed job" in problems
    assert "ACC-A" not in json.dumps(snap)  # no patient data for monitoring


def test_status_disk_watermark(engine: Engine, seeded: Seeded, tmp_path: Path) -> None:
    cfg = NodeConfig(var_dir=tmp_path / "var", archive={"min_free": "99.99%"})
    snap = admin.status_snapshot(engine, cfg, now=seeded.now)
    assert snap["disk"]["below_watermark"]
    assert any("below the watermark" in p for p in snap["problems"])


def test_list_jobs_and_detail(engine: Engine, seeded: Seeded) -> None:
    rows = admin.list_jobs(engine, state="failed")
    assert [r.id for r in rows] == [seeded.jobs["failed"]]
    assert rows[0].accession_number == "ACC-B"
    assert rows[0].series_instance_uid == UID + "1.4"
    everything = admin.list_jobs(engine, limit=3)
    assert [r.id for r in everything] == sorted(seeded.jobs.values(), reverse=True)[:3]
    with pytest.raises(AdminError, match="unknown job state 'bogus'"):
        admin.list_jobs(engine, state="bogus")
    d = admin.job_detail(engine, seeded.jobs["done"])
    assert [r.id for r in d.results] == [seeded.results["A_old"], seeded.results["A"]]
    assert {x.id for x in d.deliveries} == set(seeded.deliveries.values())
    json.dumps(admin.jsonable(d))
    with pytest.raises(AdminError, match="no job 9999"):
        admin.job_detail(engine, 9999)


def test_retry_failed_job(engine: Engine, seeded: Seeded) -> None:
    jid = seeded.jobs["failed"]
    row = admin.retry_job(engine, jid)
    assert row.state == "queued" and row.attempts == 0 and row.reason is None
    job = _job(engine, jid)
    assert job.finished_at is None and job.lease_token is None
    events = _events(engine, "job_retried")
    assert len(events) == 1 and events[0].job_fk == jid
    assert events[0].detail is not None and "slice gap" in events[0].detail
    # a worker can claim it again (attempts were reset below max_attempts)
    claim = claim_job(engine, "w9", lease_s=60, max_attempts=1)
    assert claim is not None and claim.job_id == jid


def test_retry_refusals(engine: Engine, seeded: Seeded) -> None:
    with pytest.raises(AdminError, match="is running on worker host-a:1") as info:
        admin.retry_job(engine, seeded.jobs["running"])
    assert info.value.hint is not None and "jobs cancel" in info.value.hint
    with pytest.raises(AdminError, match="already queued"):
        admin.retry_job(engine, seeded.jobs["queued"])
    with pytest.raises(AdminError, match="no job 4242"):
        admin.retry_job(engine, 4242)
    assert _job(engine, seeded.jobs["running"]).state == "running"
    assert _events(engine, "job_retried") == []
    # cancelled and done jobs can be retried
    assert admin.retry_job(engine, seeded.jobs["cancelled"]).state == "queued"
    assert admin.retry_job(engine, seeded.jobs["done"]).state == "queued"


def test_retry_refused_after_purge(engine: Engine, seeded: Seeded) -> None:
    with session_scope(session_factory(engine)) as s:
        study = s.get(Study, seeded.studies["B"])
        assert study is not None
        study.purged_at = seeded.now
    with pytest.raises(AdminError, match="purged by retention"):
        admin.retry_job(engine, seeded.jobs["failed"])


def test_cancel_jobs(engine: Engine, seeded: Seeded) -> None:
    row = admin.cancel_job(engine, seeded.jobs["queued"], reason="wrong patient")
    assert row.state == "cancelled" and row.reason == "wrong patient"
    with pytest.raises(AdminError, match="is done: only queued, held or running"):
        admin.cancel_job(engine, seeded.jobs["done"])
    assert [e.job_fk for e in _events(engine, "job_cancelled")] == [seeded.jobs["queued"]]


def test_cancel_running_job_fences_its_worker(engine: Engine, seeded: Seeded) -> None:
    # max_attempts 2: the stale running job (2 attempts used) is not reclaimed
    claim = claim_job(engine, "w1", lease_s=60, max_attempts=2, now=seeded.now)
    assert claim is not None and claim.job_id == seeded.jobs["queued"]
    admin.cancel_job(engine, claim.job_id)
    job = _job(engine, claim.job_id)
    assert job.state == "cancelled" and job.lease_token is None
    with pytest.raises(LeaseLostError):
        renew(engine, claim, 60)


def test_series_list_and_detail(engine: Engine, seeded: Seeded) -> None:
    rows = admin.list_series(engine, state="complete")
    assert {r.id for r in rows} == {seeded.series[k] for k in ("s1", "s3", "s4")}
    selected = admin.list_series(engine, decision="selected")
    s4 = next(r for r in selected if r.id == seeded.series["s4"])
    assert s4.latest_job_id == max(
        seeded.jobs[k] for k in ("failed", "stale", "queued", "cancelled")
    )
    d = admin.series_detail(engine, str(seeded.series["s1"]))
    assert d.instances.count == 4 and d.instances.bytes == 4000
    assert d.instances.matrix == ["24x24"] and d.instances.slice_thickness_mm == [1.0]
    assert {j.id for j in d.jobs} == {seeded.jobs["done"], seeded.jobs["running"]}
    by_uid = admin.series_detail(engine, UID + "1.3")
    assert by_uid.series.decision_reason == "only 3 slices"
    with pytest.raises(AdminError, match=re.escape("no series 1.2.3")):
        admin.series_detail(engine, "1.2.3")
    with pytest.raises(AdminError, match="unknown series decision"):
        admin.list_series(engine, decision="maybe")


def test_list_deliveries(engine: Engine, seeded: Seeded) -> None:
    dead = admin.list_deliveries(engine, state="dead")
    assert {d.id for d in dead} == {seeded.deliveries["dead"], seeded.deliveries["dead2"]}
    assert all(d.study_instance_uid == UID + "1" for d in dead)
    vna = admin.list_deliveries(engine, destination="VNA")
    assert [d.id for d in vna] == [seeded.deliveries["dead2"]]


def test_requeue_all_dead(engine: Engine, seeded: Seeded) -> None:
    n = admin.requeue_deliveries(engine, None, None, now=seeded.now)
    assert n == 2
    with session_factory(engine)() as s:
        rows = {d.id: d for d in s.scalars(select(Delivery))}
    for key in ("dead", "dead2"):
        d = rows[seeded.deliveries[key]]
        assert d.state == "pending" and d.attempts == 0 and d.next_attempt_at == seeded.now
    assert rows[seeded.deliveries["sent"]].state == "sent"
    events = _events(engine, "delivery_requeued")
    assert len(events) == 2
    assert all(e.job_fk == seeded.jobs["done"] for e in events)
    assert any("0xA700 out of memory" in (e.detail or "") for e in events)
    assert admin.requeue_deliveries(engine, None, None) == 0


def test_requeue_by_destination_and_ids(engine: Engine, seeded: Seeded) -> None:
    assert admin.requeue_deliveries(engine, None, "VNA") == 1
    assert [d.state for d in admin.list_deliveries(engine, destination="PACS", state="dead")] == [
        "dead"
    ]
    pending = seeded.deliveries["pending"]
    assert admin.requeue_deliveries(engine, [pending], None) == 1
    with session_factory(engine)() as s:
        d = s.get(Delivery, pending)
        assert d is not None and d.attempts == 0
    with pytest.raises(AdminError, match="already sent"):
        admin.requeue_deliveries(
            engine, [seeded.deliveries["dead"], seeded.deliveries["sent"]], None
        )
    with pytest.raises(AdminError, match="no deliveries with id 777"):
        admin.requeue_deliveries(engine, [777], None)
    # a refused batch changes nothing
    assert admin.list_deliveries(engine, destination="PACS", state="dead")[0].attempts == 10


def test_export_results_csv(engine: Engine, seeded: Seeded) -> None:
    buf = io.StringIO()
    assert admin.export_results_csv(engine, buf) == 2
    buf.seek(0)
    reader = csv.DictReader(buf)
    header = reader.fieldnames
    assert header is not None
    assert header[:9] == [
        "study_instance_uid",
        "accession_number",
        "study_date",
        "series_instance_uid",
        "result_id",
        "result_created_at",
        "status",
        "model_version",
        "trained_on_phantom",
    ]
    lm_cols = [f"{lm}_{a}" for lm in ("RCC", "LCC", "NCC") for a in "xyz"]
    plane_cols = [f"plane_{p}_{a}" for p in ("origin", "normal") for a in "xyz"]
    meas_cols = sorted(["tilt_deg", "RCC-LCC_mm", "coplanar_lao_deg", "coplanar_cranial_deg"])
    conf_cols = ["confidence_RCC", "confidence_LCC", "confidence_NCC"]
    assert header[9:] == [*lm_cols, *plane_cols, *meas_cols, *conf_cols, "flags"]
    rows = {r["study_instance_uid"]: r for r in reader}
    a, b = rows[UID + "1"], rows[UID + "2"]
    assert a["result_id"] == str(seeded.results["A"])  # the latest result of study A
    assert a["accession_number"] == "ACC-A" and a["study_date"] == "20260101"
    assert a["series_instance_uid"] == UID + "1.1"
    assert a["status"] == "flagged" and a["model_version"] == "phantom-glip-111111111111"
    assert (a["RCC_x"], a["RCC_y"], a["RCC_z"]) == ("10.5", "-20.25", "30.125")
    assert a["plane_normal_z"] == "0.8" and a["tilt_deg"] == "36.87"
    assert a["coplanar_cranial_deg"] == "" and b["coplanar_cranial_deg"] == "-5.0"
    assert a["confidence_NCC"] == "0.7"
    assert a["flags"] == "hinge distance RCC-LCC 1.5 mm below 8 mm; low confidence"
    assert b["status"] == "withheld" and b["RCC_x"] == "" and b["flags"] == ""
