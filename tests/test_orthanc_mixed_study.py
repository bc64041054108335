"""A PACS (a real Orthanc) sends the node a whole study that holds, besides the CT, a CT
Performed Procedure Protocol object and a private (vendor) SOP class instance (issue 11,
item 3): the transfer succeeds, every object is archived, the others are recorded as
"not selected: <class> is archived only", and the CT becomes the study's one job."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ingest_fixtures import TEST_CALLERS, Node, variant, write_series
from orthanc_fixtures import Orthanc
from pydicom import dcmread

from dicomnode.db.models import Instance, Job

NodeFactory = Callable[..., Node]
PRIVATE_CLASS = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage
PROTOCOL_CLASS = "1.2.840.10008.5.1.4.1.1.200.2"  # CT Performed Procedure Protocol Storage


def _non_image(src: Path, out: Path, sop_class: str, series_uid: str) -> Path:
    """An object of ``sop_class`` in the study of ``src``, in a series of its own."""
    path = variant(src, out, SOPClassUID=sop_class, SeriesInstanceUID=series_uid)
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def _put(orthanc: Orthanc, path: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(
        orthanc.http_url + path, data=json.dumps(body).encode(), method="PUT"
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


def test_orthanc_sends_a_mixed_study(
    node_factory: NodeFactory, orthanc: Orthanc, tmp_path: Path
) -> None:
    node = node_factory(access={"allowed": [*TEST_CALLERS, {"ae_title": orthanc.ae_title}]})
    ct = write_series(tmp_path / "ct", seed=61, case_id="mixed")
    protocol = _non_image(ct[0], tmp_path / "protocol.dcm", PROTOCOL_CLASS, "1.2.826.0.1.61.1")
    private = _non_image(ct[0], tmp_path / "private.dcm", PRIVATE_CLASS, "1.2.826.0.1.61.2")
    studies = {orthanc.post("/instances", p.read_bytes())["ParentStudy"] for p in ct}
    for p in (protocol, private):
        studies.add(orthanc.post("/instances", p.read_bytes())["ParentStudy"])
    (study,) = studies
    _put(orthanc, "/modalities/glip", {"AET": "GLIPNODE", "Host": "127.0.0.1", "Port": node.port})
    body = json.dumps({"Resources": [study], "Synchronous": True}).encode()
    answer = orthanc.post("/modalities/glip/store", body)  # HTTP 500 raises
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    classes = [i.sop_class_uid for i in node.rows(Instance)]
    assert sorted(set(classes)) == sorted({ct_class(ct[0]), PROTOCOL_CLASS, PRIVATE_CLASS})
    assert len(classes) == len(ct) + 2
    series = {s.sop_class_uid: s for s in node.wait_decided(3)}
    assert series[ct_class(ct[0])].decision == "selected"
    assert series[PROTOCOL_CLASS].decision_reason == (
        "not selected: CT Performed Procedure Protocol Storage is archived only"
    )
    assert series[PRIVATE_CLASS].decision_reason == (
        f"not selected: {PRIVATE_CLASS} is archived only"
    )
    (job,) = node.rows(Job)
    assert job.instance_count == len(ct)


def ct_class(path: Path) -> str:
    """The SOP class of a DICOM file."""
    return str(dcmread(path, stop_before_pixels=True).SOPClassUID)
