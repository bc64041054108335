"""The part of an archive file before the received data set: the 128-byte preamble,
``DICM`` and the File Meta Information group (explicit VR little endian, PS3.10 7.1)."""

from __future__ import annotations

import struct

IMPLEMENTATION_CLASS_UID = "2.25.4310749083864333264016674165094214414.0.1"
IMPLEMENTATION_VERSION = "GLIPNODE_0.1"
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = ""
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (explicit VR little endian)."""
    body = b"".join(
        (
            _element(2, 0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(2, 0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _element(2, 0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _element(2, 0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
            _element(2, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00"),
            _element(2, 0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii"), b" "),
            _element(2, 0x0016, b"AE", source_ae.strip().encode("ascii", "replace"), b" ")
            if source_ae.strip()
            else b"",
        )
    )
    return _PREAMBLE + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body
