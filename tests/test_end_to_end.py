"""The whole node against a real PACS: dcmtk's storescu sends a full-size phantom series,
the node (SCP, assembler, worker with the shipped model, delivery) processes it, and the
SR, SEG and key images arrive in Orthanc; the SR's points are within 3 mm of the truth."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicomnode.config import NodeConfig
from dicomnode.db.models import Delivery, Job, Result
from dicomnode.db.session import session_factory
from dicomnode.operate.embedded import EmbeddedNode
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors

SEED = 660_001  # never used for training (1000) or evaluation (424242)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


def e2e_config(tmp: Path, orthanc: Any, **overrides: Any) -> NodeConfig:
    """A node on a free port that takes storescu's series and delivers to ``orthanc``."""
    settings: dict[str, Any] = {
        "var_dir": tmp / "var",
        "network": {"port": 0},
        "access": {"allowed": [{"ae_title": "STORESCU"}]},
        "archive": {"min_free": "0"},
        "assembler": {"quiet_time_s": 1.0, "sweep_interval_s": 0.2},
        "destinations": [
            {
                "name": "orthanc",
                "ae_title": orthanc.ae_title,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            }
        ],
        "delivery": {"poll_interval_s": 0.2, "backoff_initial_s": 0.5},
        "worker": {"poll_interval_s": 0.2},
    }
    return NodeConfig(**{**settings, **overrides})


def storescu(cfg: NodeConfig, port: int, files: list[Path]) -> None:
    """Send ``files`` to the node with dcmtk's storescu (AE STORESCU)."""
    r = subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "STORESCU",
            "-aec",
            cfg.ae_title,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert r.returncode == 0, r.stderr


def wait_delivered(engine: Engine, timeout_s: float = 240, results: int = 1) -> list[Delivery]:
    """Every delivery once ``results`` results exist and all their deliveries are sent."""
    sessions = session_factory(engine)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as s:
            jobs = list(s.scalars(select(Job)))
            assert not [j for j in jobs if j.state == "failed"], [j.reason for j in jobs]
            made = len(s.scalars(select(Result.id)).all())
            rows = list(s.scalars(select(Delivery)))
            if made >= results and rows and all(d.state == "sent" for d in rows):
                return rows
            assert not [d for d in rows if d.state == "dead"], [d.last_error for d in rows]
        time.sleep(0.2)
    raise AssertionError("results were not delivered in time")


def sr_points(sr_ds: Any) -> np.ndarray[Any, Any]:
    """(3, 3) RCC, LCC, NCC points of a node's SR, read back with highdicom."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = {g.tracking_identifier: g for g in report.get_planar_roi_measurement_groups()}
    points = []
    for name in ("RCC", "LCC", "NCC"):
        roi = groups[f"{name} hinge point"].roi
        assert roi is not None and roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        points.append(np.asarray(roi.value[0], dtype=float))
    return np.array(points)


@pytest.mark.slow
def test_full_size_series_to_orthanc(tmp_path: Path, orthanc: Any) -> None:
    vol, truth = phantom.generate(SEED, 0, "full", workers=os.cpu_count() or 1)
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED, "e2e-0"))
    cfg = e2e_config(tmp_path, orthanc)
    with EmbeddedNode(cfg) as node:
        storescu(cfg, node.port, files)
        deliveries = wait_delivered(node.engine)
        with session_factory(node.engine)() as s:
            result = s.scalars(select(Result)).one()
    kinds = sorted({d.kind for d in deliveries})
    assert kinds == ["keyimage", "seg", "sr"]
    # Everything the node sent is in Orthanc, with the right SOP classes.
    stored = {}
    for d in deliveries:
        oid = orthanc.find_sop(d.sop_instance_uid)
        assert oid is not None, f"{d.kind} {d.sop_instance_uid} missing in Orthanc"
        stored[d.sop_instance_uid] = dcmread(io.BytesIO(orthanc.file(oid)))
    classes = {d.kind: str(stored[d.sop_instance_uid].SOPClassUID) for d in deliveries}
    assert classes == {"sr": SR_CLASS, "seg": SEG_CLASS, "keyimage": SC_CLASS}
    # The SR as Orthanc stores it: its points are within 3 mm of the phantom's truth.
    sr_ds = next(stored[d.sop_instance_uid] for d in deliveries if d.kind == "sr")
    err = euclidean_errors(sr_points(sr_ds), truth.landmarks_lps)
    assert np.all(err < 3.0), err
    assert result.status in ("ok", "flagged")
    assert sr_ds.PatientID == dcmread(files[0], stop_before_pixels=True).PatientID
