"""Result UIDs never carry two contents (issue 11, item 1).

The SIGKILL scenario runs on SQLite and PostgreSQL (``migrated_url``): recovery after a
kill depends on each database's transactions; the late-instances scenario, whose steps
are the same on both, runs on SQLite only (to keep the suite within 20 minutes).

Unit tests: a result's UIDs derive from its input set, model version, kind and output
recipe. Integration test (b): an Orthanc that keeps the first copy of a SOP Instance UID
(``OverwriteInstances: false``) is the PACS; a series is sent, processed and delivered,
then its late instances arrive (``selection.late_instances: reprocess``), so two input sets
of one series are processed; every object the node sent must be in Orthanc with the
content the node made (SR content tree, SEG frames, key-image pixels), and the final SR
names the first one and lies within 3 mm of the truth.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from ingest_fixtures import RawScu, wait_for
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy import Engine, select
from test_end_to_end import e2e_config, sr_points, storescu, wait_delivered
from test_scp_restart import QUIET_S, Serve

from bench.chaos_content import KeepFirstOrthanc, clinical_content, evidence_count
from dicomnode.config import Identity, OutputsConfig, PlausibilityConfig, load_config
from dicomnode.db.models import Delivery, Job, Result
from dicomnode.db.session import make_engine, session_factory
from dicomnode.operate.embedded import EmbeddedNode
from dicomnode.operate.localpacs import OrthancServer
from dicomnode.process.jobs import JobState
from dicomnode.process.outputs import ResultKey, inputs_digest, output_recipe, report_uid
from dicomnode.process.outputs import recipe as recipe_module
from dicomnode.process.worker import Worker
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors

ROOT = Identity().uid_root
SEED = 660_011  # never used for training (1000) or evaluation (424242)


# --------------------------------------------------------------------------- unit


def test_inputs_digest_is_a_set_digest() -> None:
    a = inputs_digest(["1.2.3", "1.2.4", "1.2.5"])
    assert a == inputs_digest(["1.2.5", "1.2.3", "1.2.4", "1.2.3"])
    assert a != inputs_digest(["1.2.3", "1.2.4"])  # one instance fewer
    assert a != inputs_digest(["1.2.3", "1.2.4", "1.2.6"])  # one instance replaced
    with pytest.raises(ValueError, match="at least one"):
        inputs_digest([])


def test_result_key_uids_differ_in_every_part() -> None:
    base = ResultKey(ROOT, inputs_digest(["1.2.3"]), "m-1", "r-1")
    variants = [
        ResultKey(ROOT, inputs_digest(["1.2.3", "1.2.4"]), "m-1", "r-1"),
        ResultKey(ROOT, inputs_digest(["1.2.3"]), "m-2", "r-1"),
        ResultKey(ROOT, inputs_digest(["1.2.3"]), "m-1", "r-2"),
    ]
    mine = {base.series_uid(k) for k in ("sr", "seg", "keyimage")} | {
        base.instance_uid("sr", "report"),
        base.instance_uid("seg", "spheres"),
        base.instance_uid("keyimage", "annulus-plane"),
    }
    assert len(mine) == 6
    for other in variants:
        theirs = {other.series_uid(k) for k in ("sr", "seg", "keyimage")} | {
            other.instance_uid("sr", "report")
        }
        assert not mine & theirs
    again = ResultKey(ROOT, inputs_digest(["1.2.3"]), "m-1", "r-1")
    assert report_uid(again) == report_uid(base) == base.instance_uid("sr", "report")
    assert all(pydicom.uid.UID(u).is_valid and len(u) <= 64 for u in mine)


def test_recipe_follows_settings_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    out, gate, ident = OutputsConfig(), PlausibilityConfig(), Identity()
    base = output_recipe(out, gate, ident)
    assert base == output_recipe(OutputsConfig(), PlausibilityConfig(), Identity())
    changed = {
        output_recipe(OutputsConfig(seg_sphere_radius_mm=3.0), gate, ident),
        output_recipe(OutputsConfig(keyimage_size_px=256), gate, ident),
        output_recipe(OutputsConfig(keyimage_fov_mm=80.0), gate, ident),
        output_recipe(out, PlausibilityConfig(plane_tilt_deg=(5.0, 85.0)), ident),
        output_recipe(out, gate, Identity(series_description_prefix="AI")),
    }
    assert base not in changed and len(changed) == 5
    # Another release (node version) is another recipe.
    monkeypatch.setattr(recipe_module, "__version__", "999.0")
    recipe_module.code_version.cache_clear()
    try:
        assert output_recipe(out, gate, ident) != base
    finally:
        monkeypatch.undo()
        recipe_module.code_version.cache_clear()
    assert output_recipe(out, gate, ident) == base


# --------------------------------------------------------------------------- Orthanc


@pytest.fixture
def keep_first_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not OrthancServer.available():
        pytest.fail("Orthanc is not installed: run scripts/setup.sh", pytrace=False)
    root = tmp_path_factory.mktemp("orthanc-keep-first")
    server = KeepFirstOrthanc(root / "run").start()
    try:
        yield server
    finally:
        log = server.log()
        server.stop()
        print(f"--- Orthanc log ---\n{log}")
        shutil.rmtree(root, ignore_errors=True)


def pacs_holds_what_the_node_sent(
    orthanc: OrthancServer, deliveries: list[Delivery]
) -> dict[str, pydicom.Dataset]:
    """Every object the node sent is in Orthanc with the content the node made (so no SOP
    Instance UID stands for two contents); Orthanc's copies by SOP Instance UID."""
    stored: dict[str, pydicom.Dataset] = {}
    for d in deliveries:
        oid = orthanc.find_sop(d.sop_instance_uid)
        assert oid is not None, d.sop_instance_uid
        stored[d.sop_instance_uid] = pydicom.dcmread(io.BytesIO(orthanc.file(oid)))
        sent = pydicom.dcmread(d.path)
        assert clinical_content(stored[d.sop_instance_uid]) == clinical_content(sent), d.kind
    return stored


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database-specific step
def test_late_instances_get_new_uids_and_pacs_keeps_no_stale_copy(
    tmp_path: Path, migrated_url: str, keep_first_orthanc: OrthancServer
) -> None:
    orthanc = keep_first_orthanc
    assert orthanc.get("/system").get("DicomAet") == orthanc.ae_title
    vol, truth = phantom.generate(SEED, 0, "full", workers=os.cpu_count() or 1)
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED, "uids-0"))
    first, late = files[::2], files[1::2]  # 1 mm, then the slices in between
    cfg = e2e_config(
        tmp_path,
        orthanc,
        database={"url": migrated_url},
        selection={"late_instances": "reprocess"},
        # A 1 s quiet time split the late half under load (a job on 1 mm + some 0.5 mm
        # slices, refused as non-uniform): 3 s keeps each half one input set.
        assembler={"quiet_time_s": 3.0, "sweep_interval_s": 0.2},
    )
    with EmbeddedNode(cfg) as node:
        storescu(cfg, node.port, first)
        wait_delivered(node.engine, results=1)
        storescu(cfg, node.port, late)
        deliveries = wait_delivered(node.engine, results=2)
        with session_factory(node.engine)() as s:
            results = list(s.scalars(select(Result).order_by(Result.id)))
            by_result = {
                r.id: [d for d in s.scalars(select(Delivery).where(Delivery.result_fk == r.id))]
                for r in results
            }
    assert len(results) == 2 and all(r.status in ("ok", "flagged") for r in results)
    uids = [{d.sop_instance_uid for d in by_result[r.id]} for r in results]
    assert len(uids[0]) == len(uids[1]) == 7 and not uids[0] & uids[1]  # SR, SEG, 5 key images
    # No UID of the first result was reused for the second, so Orthanc's copy is never stale.
    stored = pacs_holds_what_the_node_sent(orthanc, deliveries)
    assert len(orthanc.instances()) == 14
    # The final SR: made from all 320 instances, names the first SR, within 3 mm.
    (sr1,) = [stored[d.sop_instance_uid] for d in by_result[results[0].id] if d.kind == "sr"]
    (sr2,) = [stored[d.sop_instance_uid] for d in by_result[results[1].id] if d.kind == "sr"]
    assert (evidence_count(sr1), evidence_count(sr2)) == (len(first), len(files))
    pre = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert pre[0].ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in sr1
    assert sr1.SOPInstanceUID in clinical_content(sr2)  # "Replaces ... SR <uid>" in its text
    err = euclidean_errors(sr_points(sr2), truth.landmarks_lps)
    assert np.all(err < 3.0), err


# --------------------------------------------------------------------------- (a) SIGKILL


def idle(engine: Engine) -> bool:
    """No job waits or runs."""
    with session_factory(engine)() as s:
        states = s.scalars(select(Job.state)).all()
    return not set(states) & {JobState.QUEUED, JobState.HELD, JobState.RUNNING}


class ServeToPacs(Serve):
    """`dicomnode serve` (SCP, assembler, delivery) delivering to ``orthanc``."""

    def __init__(self, folder: Path, db_url: str, orthanc: OrthancServer) -> None:
        super().__init__(folder, db_url)
        cfg = yaml.safe_load(self.config.read_text())
        cfg.pop("selection")  # the defaults: a full-size series
        cfg["destinations"] = [
            {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
             "port": orthanc.dicom_port}
        ]  # fmt: skip
        cfg["delivery"] = {"poll_interval_s": 0.2, "backoff_initial_s": 0.5}
        cfg["worker"] = {"poll_interval_s": 0.2}
        self.config.write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
# The production database; SIGKILL recovery on SQLite is test_scp_restart's (both backends),
# and this 320-instance scenario costs over a minute per backend.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_sigkill_after_142_of_320_instances_then_resend(
    tmp_path: Path, migrated_url: str, keep_first_orthanc: OrthancServer
) -> None:
    orthanc = keep_first_orthanc
    vol, truth = phantom.generate(SEED + 1, 0, "full", workers=os.cpu_count() or 1)
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED + 1, "uids-1"))
    assert len(files) == 320
    serve = ServeToPacs(tmp_path, migrated_url, orthanc)
    cfg = load_config(serve.config)
    engine = make_engine(migrated_url)
    worker, stop = Worker(cfg, engine), threading.Event()
    worker.load_model()
    loop = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        serve.start()
        loop.start()
        scu = RawScu(serve.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
        assert [scu.send(f) for f in files[:142]] == [0] * 142
        serve.kill()  # in the middle of the association
        scu.assoc.abort()
        time.sleep(QUIET_S + 1.0)  # down for longer than the quiet time
        serve.start()
        storescu(cfg, serve.port, files)  # the sender resends the whole series
        wait_delivered(engine, timeout_s=300)
        time.sleep(QUIET_S + 1.0)  # a later (reprocessing) job would be queued by now
        assert wait_for(lambda: idle(engine), 300)
        deliveries = wait_delivered(engine, timeout_s=300)
        with session_factory(engine)() as s:
            results = list(s.scalars(select(Result).order_by(Result.id)))
    finally:
        stop.set()
        loop.join(timeout=60)
        serve.stop()
        engine.dispose()
    stored = pacs_holds_what_the_node_sent(orthanc, deliveries)
    (final,) = [d for d in deliveries if d.kind == "sr" and d.result_fk == results[-1].id]
    sr = stored[final.sop_instance_uid]
    assert evidence_count(sr) == len(files)
    err = euclidean_errors(sr_points(sr), truth.landmarks_lps)
    assert np.all(err < 3.0), err
    # With the fresh quiet period after the restart the partial series is never processed.
    assert len(results) == 1, [r.summary for r in results]
