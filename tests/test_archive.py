"""Archive layout, atomic writes, duplicates and the disk watermark."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from dicomnode.receive.archive import Archive, safe_name
from dicomnode.receive.filemeta import file_header


def test_uid_layout(tmp_path: Path) -> None:
    a = Archive(tmp_path)
    assert a.relpath("1.2.3", "1.2.3.4", "1.2.3.4.5") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"


def test_hashed_layout(tmp_path: Path) -> None:
    a = Archive(tmp_path, layout="hashed")
    h = hashlib.sha256(b"1.2.3.4.5").hexdigest()
    assert a.relpath("1.2.3", "1.2.3.4", "1.2.3.4.5") == f"{h[:2]}/{h[2:4]}/1.2.3.4.5.dcm"


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/3", "", "1." * 40, "1.2.3 "])
def test_unsafe_uids_never_become_paths(uid: str) -> None:
    name = safe_name(uid)
    assert name == "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]
    assert "/" not in name and ".." not in name


def test_commit_new_keeps_the_first(tmp_path: Path) -> None:
    a = Archive(tmp_path)
    tmp1, n1 = a.write_temp([b"first", memoryview(b"-copy")])
    assert n1 == len(b"first-copy")
    assert a.commit_new(tmp1, "s/x/1.dcm") is True
    tmp2, _ = a.write_temp([b"second"])
    assert a.commit_new(tmp2, "s/x/1.dcm") is False
    assert (tmp_path / "s/x/1.dcm").read_bytes() == b"first-copy"
    assert not tmp1.exists() and not tmp2.exists()
    assert list(a.incoming.iterdir()) == []


def test_commit_replace_swaps_atomically(tmp_path: Path) -> None:
    a = Archive(tmp_path)
    final = tmp_path / "s/x/1.dcm"
    a.commit_replace(a.write_temp([b"A" * 100_000])[0], "s/x/1.dcm")
    seen: set[tuple[bytes, int]] = set()
    stop = threading.Event()

    def reader() -> None:  # a reader sees the old or the new file, never a partial one
        while not stop.is_set():
            data = final.read_bytes()
            seen.add((data[:1], len(data)))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        byte = b"B" if i % 2 else b"A"
        a.commit_replace(a.write_temp([byte * 100_000])[0], "s/x/1.dcm")
    stop.set()
    t.join()
    assert seen and seen <= {(b"A", 100_000), (b"B", 100_000)}


def test_clean_incoming_removes_crash_leftovers(tmp_path: Path) -> None:
    a = Archive(tmp_path)
    (a.incoming / "123-1-1.part").write_bytes(b"partial")
    assert a.clean_incoming() == 1
    assert list(a.incoming.iterdir()) == []


def test_watermark_against_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    pct = Archive(tmp_path, min_free="10%").space()
    assert pct.watermark == int(total * 0.10)
    assert Archive(tmp_path, min_free="1MiB").space().watermark == 1_048_576
    above = Archive(tmp_path, min_free=str(free + 10**12)).space()
    assert not above.allows(0)
    assert Archive(tmp_path, min_free="0").space().allows(1000)


def test_file_header_is_valid_file_meta(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientID = "X"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    path = tmp_path / "f.dcm"
    head = file_header("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1", "CALLER")
    path.write_bytes(head + fp.getvalue())
    back = dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.file_meta.SourceApplicationEntityTitle == "CALLER"
    # group length = bytes after the (0002,0000) element up to the data set
    assert back.file_meta.FileMetaInformationGroupLength == len(head) - 132 - 12
    assert back.PatientID == "X"
