"""Which storage SOP classes the SCP accepts at negotiation (``network.storage_classes``).

Only CT becomes a job; every other class accepted here is archived only (the assembler
records its series as "not selected: <class> is archived only"). Accepting what a PACS
sends as part of a study matters: a PACS that meets one refused class fails the whole
study transfer.
"""

from __future__ import annotations

from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicomnode.receive.series_facts import ARCHIVE_ONLY_CLASSES, PROCESSED_CLASSES

_LISTED = frozenset(PROCESSED_CLASSES + ARCHIVE_ONLY_CLASSES)


def accepts_storage_class(policy: str, uid: str) -> bool:
    """Whether storage of SOP class ``uid`` is accepted under ``policy``: ``listed`` (the
    classes of :mod:`dicomnode.receive.series_facts`), ``standard`` (and every standard
    storage class) or ``all`` (and any class pynetdicom does not know as a service:
    private, vendor or newer standard ones)."""
    if uid in _LISTED:
        return True
    if policy == "listed":
        return False
    service = uid_to_service_class(uid)
    if service is StorageServiceClass:
        return True
    return policy == "all" and service is ServiceClass
