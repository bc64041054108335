"""The demo's local PACS: Orthanc when it starts, else the built-in storage SCP."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_fixtures import tiny_volume
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.operate import localpacs
from glipcore.dicomwrite import SeriesMeta, write_ct_series


def test_orthanc_that_cannot_start_falls_back_to_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localpacs, "ORTHANC_BIN", "/bin/false")  # exits at once
    pacs = localpacs.start_local_pacs(tmp_path, prefer_orthanc=True)
    try:
        assert isinstance(pacs, localpacs.BuiltinStoreSCP)
        files = write_ct_series(tiny_volume(1), tmp_path / "ct", SeriesMeta.synthetic(1, "lp"))
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        assert assoc.is_established
        for f in files[:2]:
            assert assoc.send_c_store(dcmread(f)).Status == 0
        assoc.release()
        sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:2]}
        assert pacs.sop_instance_uids() == sent
        assert all(pacs.counts[u] == 1 for u in sent)
    finally:
        pacs.stop()
