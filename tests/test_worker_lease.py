"""Job claims, leases and fencing on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from dicomnode.db.models import Event, Job, Patient, Series, Study, utcnow
from dicomnode.db.session import session_factory
from dicomnode.process.jobs import LeaseLostError, claim_job, fail_exhausted, fence, renew


def _jobs(engine: Engine, n: int) -> list[int]:
    now = utcnow()
    ids = []
    with session_factory(engine)() as s, s.begin():
        p = Patient(patient_id="x", issuer="")
        s.add(p)
        s.flush()
        st = Study(study_instance_uid="1.2.3", patient_fk=p.id)
        s.add(st)
        s.flush()
        for i in range(n):
            x = Series(
                series_instance_uid=f"1.2.3.{i}",
                study_fk=st.id,
                first_received_at=now,
                last_received_at=now,
                burst_started_at=now,
                state="complete",
            )
            s.add(x)
            s.flush()
            job = Job(series_fk=x.id, study_fk=st.id, created_at=now + timedelta(seconds=i))
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def test_claims_oldest_first_then_none(engine: Engine) -> None:
    ids = _jobs(engine, 2)
    a = claim_job(engine, "w1", lease_s=60, max_attempts=3)
    b = claim_job(engine, "w2", lease_s=60, max_attempts=3)
    assert a is not None and b is not None
    assert [a.job_id, b.job_id] == ids
    assert a.token != b.token and a.attempt == 1
    assert claim_job(engine, "w3", lease_s=60, max_attempts=3) is None
    with session_factory(engine)() as s:
        job = s.get(Job, ids[0])
        assert job is not None and job.state == "running" and job.worker_id == "w1"
        assert "job_claimed" in s.scalars(select(Event.kind)).all()


def test_concurrent_claims_never_share_a_job(engine: Engine) -> None:
    ids = _jobs(engine, 12)
    got: list[int] = []
    lock = threading.Lock()

    def grab(name: str) -> None:
        while (c := claim_job(engine, name, lease_s=60, max_attempts=3)) is not None:
            with lock:
                got.append(c.job_id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ids  # each job exactly once


def test_expired_lease_is_reclaimed_and_old_holder_is_fenced(engine: Engine) -> None:
    (job_id,) = _jobs(engine, 1)
    first = claim_job(engine, "w1", lease_s=5, max_attempts=3)
    assert first is not None
    # Not yet expired: nobody else can take it.
    assert claim_job(engine, "w2", lease_s=5, max_attempts=3) is None
    later = utcnow() + timedelta(seconds=10)
    second = claim_job(engine, "w2", lease_s=5, max_attempts=3, now=later)
    assert second is not None and second.job_id == job_id and second.attempt == 2
    with pytest.raises(LeaseLostError):
        renew(engine, first, 5)
    with pytest.raises(LeaseLostError), session_factory(engine)() as s, s.begin():
        fence(s, first, state="done")
    with session_factory(engine)() as s, s.begin():
        fence(s, second, state="done")
    with session_factory(engine)() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "done" and job.lease_token is None


def test_exhausted_attempts_fail_the_job(engine: Engine) -> None:
    (job_id,) = _jobs(engine, 1)
    now = utcnow()
    for i in range(2):
        assert claim_job(engine, "w", lease_s=1, max_attempts=2, now=now + timedelta(seconds=5 * i))
    assert (
        claim_job(engine, "w", lease_s=1, max_attempts=2, now=now + timedelta(seconds=20)) is None
    )
    assert fail_exhausted(engine, 2, now + timedelta(seconds=20)) == 1
    with session_factory(engine)() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "failed" and "lease expired" in (job.reason or "")
