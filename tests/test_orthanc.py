"""Delivery into a real PACS: Orthanc (Debian package) started by the test."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from orthanc_fixtures import Orthanc
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import Engine
from test_delivery import (
    PATIENT_ID,
    Objects,
    all_uids,
    attempts_of,
    deliveries,
    node_cfg,
    plan,
    write_ct,
    write_sc,
    write_sr,
)

from dicomnode.config import NodeConfig
from dicomnode.deliver.scu import echo
from dicomnode.deliver.service import DeliveryService


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return sqlite_engine


def write_seg(out: Path, ct: list[tuple[str, Path]]) -> tuple[str, Path]:
    """A binary SEG (highdicom) of a small square on every CT slice."""
    sources = [dcmread(p) for _, p in ct]
    mask = np.zeros((len(sources), 8, 8), dtype=bool)
    mask[:, 2:5, 2:5] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="hinge region",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=903,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="glip-node",
        manufacturer_model_name="delivery-test",
        software_versions="0",
        device_serial_number="0",
    )
    path = out / "seg.dcm"
    seg.save_as(path)
    return str(seg.SOPInstanceUID), path.resolve()


def orthanc_cfg(url: str, orthanc: Orthanc) -> NodeConfig:
    return node_cfg(
        url,
        [
            {
                "name": "orthanc",
                "ae_title": orthanc.ae_title,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            }
        ],
        dimse_timeout_s=30.0,
    )


def test_ct_sr_sc_and_seg_arrive_in_orthanc(
    orthanc: Orthanc, engine: Engine, sqlite_url: str, tmp_path: Path
) -> None:
    study_uid, ct = write_ct(tmp_path / "ct")
    objects: Objects = {
        "keyimage": [*ct, write_sc(tmp_path, study_uid)],
        "sr": [write_sr(tmp_path, study_uid)],
        "seg": [write_seg(tmp_path, ct)],
    }
    cfg = orthanc_cfg(sqlite_url, orthanc)
    assert orthanc.instances() == []
    assert plan(engine, cfg, objects) == 5

    rnd = DeliveryService(engine, cfg).run_once()

    assert rnd.of("orthanc").sent == 5, [d.last_error for d in deliveries(engine)]
    for d in deliveries(engine):
        assert d.state == "sent" and d.attempts == 1
        assert [t.status for t in attempts_of(engine, d.id)] == [0]
    assert len(orthanc.instances()) == 5
    expected_class = {uid: str(dcmread(p).SOPClassUID) for it in objects.values() for uid, p in it}
    for uid in all_uids(objects):
        oid = orthanc.find_sop(uid)
        assert oid is not None, f"{uid} not in Orthanc"
        tags = orthanc.instance_tags(oid)
        assert tags["SOPInstanceUID"] == uid
        assert tags["SOPClassUID"] == expected_class[uid]
        assert tags["StudyInstanceUID"] == study_uid
    sr_tags = orthanc.instance_tags(str(orthanc.find_sop(objects["sr"][0][0])))
    assert sr_tags["PatientID"] == PATIENT_ID and sr_tags["Modality"] == "SR"
    assert orthanc.find_sop("1.2.3.4.5.6.7.8.9") is None


def test_orthanc_accepts_the_node_output_classes_and_echo(
    orthanc: Orthanc, sqlite_url: str
) -> None:
    """The SOP classes the node sends are negotiated by Orthanc's SCP; C-ECHO answers."""
    cfg = orthanc_cfg(sqlite_url, orthanc)
    ok, msg = echo(cfg.destinations[0], cfg)
    assert ok, msg
    wanted = [
        Comprehensive3DSRStorage,
        SegmentationStorage,
        SecondaryCaptureImageStorage,
        CTImageStorage,
    ]
    ae = AE(ae_title="GLIPNODE")
    assoc = ae.associate(
        "127.0.0.1",
        orthanc.dicom_port,
        [build_context(uid, ExplicitVRLittleEndian) for uid in wanted],
        ae_title=orthanc.ae_title,
    )
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == set(wanted)
