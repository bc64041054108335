"""What a result object means to a reader, and whether the PACS holds what the node sent.

A PACS may keep the first copy of a SOP Instance UID (Orthanc with ``OverwriteInstances:
false``), so a UID that ever stood for two contents leaves a stale object there. These
helpers compare clinical content (the SR content tree and predecessors, the SEG's frames
with the CT instance each derives from, the key image's pixels), never bytes. Shared by
``tests/test_result_uids.py`` and ``python -m bench.chaos``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicomnode.operate.localpacs import OrthancServer


class KeepFirstOrthanc(OrthancServer):
    """Orthanc that keeps the first instance stored under a SOP Instance UID."""

    def config(self) -> dict[str, Any]:
        return {**super().config(), "OverwriteInstances": False}


def clinical_content(ds: pydicom.Dataset) -> str:
    """What a reader sees of a result object: the SR content tree (and predecessors), the
    SEG's frames with the CT instance each derives from, the key image's pixels."""
    if ds.Modality == "SR":
        tree = pydicom.Dataset()
        tree.ContentSequence = ds.ContentSequence
        tree.PredecessorDocumentsSequence = ds.get("PredecessorDocumentsSequence", [])
        return json.dumps(tree.to_json_dict(), sort_keys=True)
    refs = [
        fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for fg in ds.get("PerFrameFunctionalGroupsSequence", [])
    ]
    pixels = np.ascontiguousarray(ds.pixel_array)
    return f"{ds.SOPClassUID} {pixels.shape} {pixels.tobytes().hex()} {refs}"


def evidence_count(sr: pydicom.Dataset) -> int:
    """How many CT instances the SR says it was made from."""
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    return sum(len(series.ReferencedSOPSequence) for series in study.ReferencedSeriesSequence)


@dataclass(frozen=True)
class SentObject:
    """One object the node sent: its SOP Instance UID, kind and the file it encoded."""

    sop_instance_uid: str
    kind: str
    path: Path


@dataclass
class PacsCheck:
    """The PACS's copies of the objects the node sent, compared with what it made."""

    stored: dict[str, pydicom.Dataset]
    missing: list[str]
    # UIDs whose PACS copy differs in content from one the node made under that UID
    two_contents: list[str]


def check_pacs(orthanc: OrthancServer, sent: Iterable[SentObject]) -> PacsCheck:
    """Fetch every sent object from ``orthanc`` and compare its clinical content with each
    file the node made under that UID (one UID sent twice with two contents counts even
    when the PACS copy matches one of them)."""
    by_uid: dict[str, list[SentObject]] = {}
    for obj in sent:
        by_uid.setdefault(obj.sop_instance_uid, []).append(obj)
    check = PacsCheck({}, [], [])
    for uid, objs in sorted(by_uid.items()):
        oid = orthanc.find_sop(uid)
        if oid is None:
            check.missing.append(uid)
            continue
        copy = pydicom.dcmread(io.BytesIO(orthanc.file(oid)))
        check.stored[uid] = copy
        ours = {clinical_content(pydicom.dcmread(o.path)) for o in objs}
        if ours != {clinical_content(copy)}:
            check.two_contents.append(uid)
    return check
