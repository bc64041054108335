"""Deterministic UIDs of the node's result objects.

A UID is ``uid_root`` followed by decimal digits of the SHA-256 of (source key, model
version, kind, item, recipe), filling the UID up to 64 characters. A result's source key is
the digest of the set of its input SOP Instance UIDs (:func:`inputs_digest`) and its recipe
the version of the output code and settings (:mod:`.recipe`), both held by a
:class:`ResultKey`. So processing the same instances again with the same model, code and
settings writes the same UIDs (a PACS keeps one copy: idempotent redelivery), while a
changed input set (late instances, a resent series), model, release or setting never
reuses a UID. Conventions used by the builders:

- series of kind K: ``key.series_uid(K)``
- instance of kind K: ``key.instance_uid(K, name)``
- other UIDs inside an object (tracking UIDs, ...): :func:`output_uid` with an ``item``.

With the default root (43 characters) 21 digits (about 70 bits) of the hash remain.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

UID_MAX = 64
_MIN_DIGITS = 12  # at least ~40 bits of the hash
_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")

KINDS: tuple[str, ...] = ("sr", "seg", "keyimage")
"""Object kinds the node writes."""


def output_uid(
    uid_root: str,
    source_key: str,
    model_version: str,
    kind: str,
    item: str = "",
    recipe: str = "",
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
    if not source_key or not model_version or not kind:
        raise ValueError("source_key, model_version and kind must be non-empty")
    parts = ["glip-node output uid v1", source_key, model_version, kind, item]
    if recipe:  # v1 UIDs (no recipe) stay as they were
        parts.append(f"recipe={recipe}")
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    digits = str(int.from_bytes(digest, "big"))  # never starts with 0 (77-78 digits)
    return root + digits[:room]


def inputs_digest(sop_instance_uids: Iterable[str]) -> str:
    """Digest of a set of input SOP Instance UIDs (order and repeats do not matter)."""
    uids = sorted({str(u) for u in sop_instance_uids})
    if not uids:
        raise ValueError("a result needs at least one input instance")
    return "inputs:" + hashlib.sha256("\n".join(uids).encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class ResultKey:
    """Everything a result's UIDs derive from: its input set, model and output recipe."""

    uid_root: str
    inputs: str  # inputs_digest(...) of the input SOP Instance UIDs
    model_version: str
    recipe: str  # recipe.output_recipe(...)

    def uid(self, kind: str, item: str) -> str:
        """The UID of ``item`` of the result series of ``kind``."""
        return output_uid(self.uid_root, self.inputs, self.model_version, kind, item, self.recipe)

    def series_uid(self, kind: str) -> str:
        """Series Instance UID of the result series of one kind."""
        return self.uid(kind, "series")

    def instance_uid(self, kind: str, name: str) -> str:
        """SOP Instance UID of object ``name`` of a result series."""
        return self.uid(kind, f"instance/{name}")


__all__ = ["KINDS", "UID_MAX", "ResultKey", "inputs_digest", "output_uid"]
