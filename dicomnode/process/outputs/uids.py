"""Deterministic UIDs of the node's result objects.

A UID is ``uid_root`` followed by decimal digits of the SHA-256 of (source series UID,
model version, kind, item), filling the UID up to 64 characters. So resending or
reprocessing a series with the same model writes the same UIDs (PACS keeps one copy), and a
new model version writes new series. Conventions used by the builders:

- series of kind K: ``output_uid(root, series, version, K, "series")``
- instance of kind K: ``output_uid(root, series, version, K, "instance/<name>")``
- other UIDs inside an object (tracking UIDs, ...): ``item`` names them.

With the default root (43 characters) 21 digits (about 70 bits) of the hash remain.
"""

from __future__ import annotations

import hashlib
import re

UID_MAX = 64
_MIN_DIGITS = 12  # at least ~40 bits of the hash
_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")

KINDS: tuple[str, ...] = ("sr", "seg", "keyimage")
"""Object kinds the node writes."""


def output_uid(
    uid_root: str, source_series_uid: str, model_version: str, kind: str, item: str = ""
) -> str:
    """A valid DICOM UID (<= 64 characters) that depends only on the arguments."""
    root = uid_root if uid_root.endswith(".") else uid_root + "."
    if not _ROOT_RE.match(root):
        raise ValueError(
            f"UID root must be dot-separated numbers without leading zeros: {uid_root!r}"
        )
    room = UID_MAX - len(root)
    if room < _MIN_DIGITS:
        raise ValueError(f"UID root {uid_root!r} leaves fewer than {_MIN_DIGITS} digits")
    if not source_series_uid or not model_version or not kind:
        raise ValueError("source_series_uid, model_version and kind must be non-empty")
    key = "\x1f".join(("glip-node output uid v1", source_series_uid, model_version, kind, item))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    digits = str(int.from_bytes(digest, "big"))  # never starts with 0 (77-78 digits)
    return root + digits[:room]


def instance_uid(
    uid_root: str, source_series_uid: str, model_version: str, kind: str, name: str
) -> str:
    """SOP Instance UID of object ``name`` of a result series."""
    return output_uid(uid_root, source_series_uid, model_version, kind, f"instance/{name}")


def series_uid(uid_root: str, source_series_uid: str, model_version: str, kind: str) -> str:
    """Series Instance UID of the result series of one kind."""
    return output_uid(uid_root, source_series_uid, model_version, kind, "series")


__all__ = ["KINDS", "UID_MAX", "instance_uid", "output_uid", "series_uid"]
