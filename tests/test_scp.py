"""The SCP against real dcmtk tools (echoscu, storescu), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from ingest_fixtures import Node, dataset_bytes, self_signed, wait_for, write_series

from dicomnode.db.models import Event, Instance, Job, Series
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.phantom import generate

NodeFactory = Callable[..., Node]


@pytest.fixture(scope="session")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A fast-preset phantom case (80 slices of 128 x 128) as a CT series."""
    vol, _truth = generate(11, 0, "fast")
    out = tmp_path_factory.mktemp("phantom")
    return write_ct_series(vol, out, SeriesMeta.synthetic(11, "scp-phantom"))


def test_echo_from_an_allowed_ae(node_factory: NodeFactory) -> None:
    node = node_factory()
    res = node.echoscu()
    assert res.returncode == 0, res.stderr
    assert "Received Echo Response (Success)" in res.stdout + res.stderr


def test_unknown_calling_ae_is_rejected_at_association(node_factory: NodeFactory) -> None:
    node = node_factory()
    res = node.echoscu("INTRUDER")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Association Rejected" in out
    assert "Calling AE Title Not Recognized" in out
    audit = node.audits(1)
    assert [(a.calling_ae, a.outcome) for a in audit] == [("INTRUDER", "rejected")]
    assert "INTRUDER" in (audit[0].reason or "")


def test_empty_allow_list_refuses_everyone(node_factory: NodeFactory) -> None:
    node = node_factory(access={"allowed": []})
    assert "Association Rejected" in "".join(node.echoscu().stdout + node.echoscu().stderr)


def test_allowed_ae_from_the_wrong_host_is_rejected(node_factory: NodeFactory) -> None:
    node = node_factory(
        access={"allowed": [{"ae_title": "ECHOSCU", "host": "192.0.2.7"}]}  # TEST-NET-1
    )
    res = node.echoscu()
    assert res.returncode != 0 and "Association Rejected" in res.stdout + res.stderr
    assert "not allowed from 127.0.0.1" in (node.audits(1)[0].reason or "")


def test_accept_any_must_be_explicit(node_factory: NodeFactory) -> None:
    node = node_factory(access={"allowed": [], "accept_any": True})
    assert node.echoscu("ANYBODY").returncode == 0


def test_series_becomes_exactly_one_job_after_the_quiet_time(
    node_factory: NodeFactory, phantom_series: list[Path]
) -> None:
    node = node_factory()
    res = node.storescu(phantom_series)
    assert res.returncode == 0, res.stderr
    # the quiet time (1 s) has not passed yet: no job
    assert node.rows(Job) == []
    jobs = node.wait_jobs(1)
    wait_for(lambda: False, timeout=1.0)  # several more sweeps
    jobs = node.rows(Job)
    assert len(jobs) == 1
    assert jobs[0].state == "queued"
    assert jobs[0].instance_count == len(phantom_series)
    (series,) = node.rows(Series)
    assert series.decision == "selected" and series.completion == "quiet"
    assert series.instance_count == len(phantom_series)
    # raw bytes archived exactly as sent
    inst = node.rows(Instance)
    assert len(inst) == len(phantom_series)
    archive = node.cfg.archive_dir
    sent = {dataset_bytes(f) for f in phantom_series}
    assert {dataset_bytes(archive / i.path) for i in inst} == sent
    assert list((archive / ".incoming").iterdir()) == []
    # one audit row with the association's numbers
    (audit,) = node.audits(1)
    assert audit.outcome == "released" and audit.calling_ae == "STORESCU"
    assert audit.peer_host == "127.0.0.1"
    assert (audit.requests, audit.stored, audit.duplicates) == (len(phantom_series),) * 2 + (0,)
    assert audit.bytes_received == sum(len(b) for b in sent)
    assert audit.duration_s is not None and audit.duration_s > 0
    kinds = [e.kind for e in node.rows(Event)]
    assert kinds == ["series_complete", "series_selected", "job_queued"]


def test_resend_keep_first_leaves_one_instance(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    files = write_series(tmp_path / "a", seed=1, case_id="dup")
    # the same instances re-encoded in another transfer syntax
    implicit = write_series(
        tmp_path / "b", seed=1, case_id="dup", transfer_syntax="1.2.840.10008.1.2"
    )
    assert node.storescu(files).returncode == 0
    assert node.storescu(files).returncode == 0
    assert node.storescu(implicit).returncode == 0
    inst = node.rows(Instance)
    assert len(inst) == len(files)
    assert {i.transfer_syntax_uid for i in inst} == {"1.2.840.10008.1.2.1"}
    archive = node.cfg.archive_dir
    assert {dataset_bytes(archive / i.path) for i in inst} == {dataset_bytes(f) for f in files}
    audits = node.audits(3)
    assert [(a.stored, a.duplicates) for a in audits] == [
        (len(files), 0),
        (0, len(files)),
        (0, len(files)),
    ]
    assert node.rows(Series)[0].instance_count == len(files)


def test_resend_keep_newest_replaces(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory(archive={"duplicate_policy": "keep_newest"})
    files = write_series(tmp_path / "a", seed=2, case_id="dup")
    implicit = write_series(
        tmp_path / "b", seed=2, case_id="dup", transfer_syntax="1.2.840.10008.1.2"
    )
    assert node.storescu(files).returncode == 0
    assert node.storescu(implicit).returncode == 0
    inst = node.rows(Instance)
    assert len(inst) == len(files)
    assert {i.transfer_syntax_uid for i in inst} == {"1.2.840.10008.1.2"}
    archive = node.cfg.archive_dir
    assert {dataset_bytes(archive / i.path) for i in inst} == {dataset_bytes(f) for f in implicit}
    assert node.rows(Series)[0].instance_count == len(files)
    n_files = sum(1 for p in archive.rglob("*.dcm"))
    assert n_files == len(files)


def test_low_disk_watermark_answers_out_of_resources(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    node = node_factory(archive={"min_free": str(free + 10**12)})  # above the real free space
    files = write_series(tmp_path / "s", seed=3, case_id="disk")[:3]
    res = node.storescu(files, "STORESCU", "--no-halt")
    out = res.stdout + res.stderr
    assert out.count("Received Store Response (Refused: OutOfResources)") == 3
    assert node.rows(Instance) == []
    assert list(node.cfg.archive_dir.rglob("*.dcm")) == []
    (audit,) = node.audits(1)
    assert audit.failures == 3 and audit.stored == 0
    assert "min_free" in (audit.reason or "")


def test_restart_in_the_middle_of_the_quiet_time_still_queues(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(assembler={"quiet_time_s": 2.0})
    files = write_series(tmp_path / "s", seed=4, case_id="restart")
    assert node.storescu(files).returncode == 0
    node.stop()
    assert node.rows(Job) == []
    assert node.rows(Series)[0].state == "receiving"
    node.start()
    jobs = node.wait_jobs(1)
    assert len(jobs) == 1 and jobs[0].instance_count == len(files)


def test_second_series_of_a_study_is_superseded(node_factory: NodeFactory, tmp_path: Path) -> None:
    from ingest_fixtures import tiny_volume

    node = node_factory()
    thin = write_series(tmp_path / "thin", seed=5, case_id="thin")
    study = SeriesMeta.synthetic(5, "thin").study_instance_uid
    thick_vol = tiny_volume(6, spacing_ijk=(0.8, 0.8, 1.4))
    thick = write_series(
        tmp_path / "thick", seed=6, case_id="thick", vol=thick_vol, study_instance_uid=study
    )
    assert node.storescu(thick + thin).returncode == 0
    series = node.wait_decided(2)
    by_uid = {s.series_instance_uid: s for s in series}
    thin_uid = SeriesMeta.synthetic(5, "thin").series_instance_uid
    thick_uid = SeriesMeta.synthetic(6, "thick", study_instance_uid=study).series_instance_uid
    assert by_uid[thin_uid].decision == "selected"
    assert by_uid[thick_uid].decision == "superseded"
    reason = by_uid[thick_uid].decision_reason or ""
    assert reason.startswith(f"superseded by series {thin_uid}")
    assert "thinner slices (1 mm vs 1.4 mm)" in reason
    jobs = node.rows(Job)
    assert [(j.series_fk, j.state) for j in jobs] == [(by_uid[thin_uid].id, "queued")]


def test_tls_echo(node_factory: NodeFactory, tmp_path: Path) -> None:
    key, crt = self_signed(tmp_path)
    node = node_factory(
        network={"tls": {"enabled": True, "cert_file": str(crt), "key_file": str(key)}}
    )
    res = node.echoscu("ECHOSCU", "+tla", "+cf", str(crt))
    assert res.returncode == 0, res.stdout + res.stderr
    plain = node.echoscu()  # no TLS against the TLS port: no association
    assert plain.returncode != 0


def test_enhanced_ct_is_processed(node_factory: NodeFactory, tmp_path: Path) -> None:
    from ingest_fixtures import tiny_volume

    from dicomnode.process.series import job_files, volume_of_files
    from glipcore.dicomwrite import write_enhanced_ct

    vol = tiny_volume(30)
    path = write_enhanced_ct(vol, tmp_path / "enh.dcm", SeriesMeta.synthetic(30, "enhanced"))
    node = node_factory()
    assert node.storescu([path]).returncode == 0
    (job,) = node.wait_jobs(1)
    (inst,) = node.rows(Instance)
    assert inst.number_of_frames == vol.shape_zyx[0]
    assert inst.slice_positions is not None and len(inst.slice_positions) == vol.shape_zyx[0]
    (series,) = node.rows(Series)
    assert series.decision_reason == "selected: 24 slices, 1 mm, z-coverage 23.0 mm"
    loaded = volume_of_files(job_files(node.engine, node.cfg.archive_dir, job.id))
    import numpy as np

    np.testing.assert_array_equal(loaded.array, vol.array)


def test_logs_carry_no_patient_identity(
    node_factory: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="dicomnode")
    meta = SeriesMeta.synthetic(31, "privacy")
    node = node_factory()
    assert node.storescu(write_series(tmp_path / "s", seed=31, case_id="privacy")).returncode == 0
    node.wait_jobs(1)
    node.stop()
    text = caplog.text
    assert "association from STORESCU@127.0.0.1 released" in text
    for secret in (meta.patient_id, meta.patient_name, meta.patient_birth_date):
        assert secret not in text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_runs_until_sigterm(migrated_url: str, tmp_path: Path) -> None:
    import signal
    import sys
    import time

    import yaml
    from ingest_fixtures import free_port

    port = free_port()
    cfg = {
        "var_dir": str(tmp_path / "var"),
        "database": {"url": migrated_url},
        "network": {"port": port},
        "access": {"allowed": [{"ae_title": "ECHOSCU"}]},
    }
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "--config", str(tmp_path / "node.yaml"), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        echo = ["/usr/bin/echoscu", "-aet", "ECHOSCU", "-aec", "GLIPNODE", "127.0.0.1", str(port)]
        ok = wait_for(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 30)
        assert ok, "serve did not answer C-ECHO"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert time.monotonic() - t0 < 15
        assert "SIGTERM received: shutting down" in out and "dicomnode stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stock_acceptor_stores_and_keeps_the_allow_list(
    node_factory: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_ACCEPTOR", "stock")  # pynetdicom's own acceptor (bench.ingest)
    node = node_factory()
    files = write_series(tmp_path / "s", seed=4, case_id="stock")
    assert node.storescu(files).returncode == 0
    assert node.storescu(files[:2]).returncode == 0
    intruder = node.echoscu("INTRUDER")
    assert "Calling AE Title Not Recognized" in intruder.stdout + intruder.stderr
    archive = node.cfg.archive_dir
    inst = node.rows(Instance)
    assert {dataset_bytes(archive / i.path) for i in inst} == {dataset_bytes(f) for f in files}
    audits = node.audits(3)
    assert [(a.outcome, a.stored, a.duplicates) for a in audits] == [
        ("released", len(files), 0),
        ("released", 0, 2),
        ("rejected", 0, 0),
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_acceptor_choice_is_refused(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_ACCEPTOR", "fastest")
    node = node_factory(start=False)
    with pytest.raises(ValueError, match="DICOMNODE_ACCEPTOR must be 'netfast' or 'stock'"):
        node.start()
