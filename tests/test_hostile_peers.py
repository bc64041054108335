"""Hostile and odd peers against the real SCP (issue 11, items 3-7 and 11): deflate bombs
and broken deflate streams, oversized and spooled data sets, a data set of another SOP
class than its presentation context, the storage-class policy, idle connections,
silent and failed TLS clients, and refusals that must be logged."""

from __future__ import annotations

import logging
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ingest_fixtures import (
    Node,
    RawScu,
    dataset_bytes,
    self_signed,
    variant,
    wait_for,
    write_series,
)
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from dicomnode.db.models import Instance

NodeFactory = Callable[..., Node]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PRIVATE_CLASS = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage
PROTOCOL_CLASS = "1.2.840.10008.5.1.4.1.1.200.2"  # CT Performed Procedure Protocol Storage
BOTH_SYNTAXES = [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]


@pytest.fixture
def ct_slice(tmp_path: Path) -> Path:
    """One small CT slice (explicit VR little endian)."""
    return write_series(tmp_path / "src", seed=41, case_id="hostile")[0]


def with_private_bytes(src: Path, out: Path, nbytes: int, ts: str) -> Path:
    """A copy of ``src`` (new SOP Instance UID) carrying ``nbytes`` zero bytes in a private
    OB element, written in transfer syntax ``ts``."""
    path = variant(src, out, TransferSyntaxUID=ts)
    ds = dcmread(path)
    ds.private_block(0x0009, "GLIP TEST", create=True).add_new(0x00, "OB", bytes(nbytes))
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflate_bomb_and_oversized_data_sets_are_refused_the_association_goes_on(
    node_factory: NodeFactory, ct_slice: Path, tmp_path: Path
) -> None:
    node = node_factory(network={"max_instance_size": "1MiB", "spool_above": "64KiB"})
    bomb = with_private_bytes(
        ct_slice, tmp_path / "bomb.dcm", 32 << 20, DeflatedExplicitVRLittleEndian
    )
    assert bomb.stat().st_size < 200_000  # 32 MiB of zeros, deflated
    deflated = variant(
        ct_slice, tmp_path / "ok.dcm", TransferSyntaxUID=DeflatedExplicitVRLittleEndian
    )
    big = with_private_bytes(ct_slice, tmp_path / "big.dcm", 2 << 20, ExplicitVRLittleEndian)
    spooled = with_private_bytes(ct_slice, tmp_path / "spool.dcm", 300_000, ExplicitVRLittleEndian)
    with RawScu(node.port, [(CTImageStorage, BOTH_SYNTAXES)]) as scu:
        statuses = [scu.send(p) for p in (bomb, deflated, big, spooled)]
        assert scu.assoc.is_established
    assert statuses == [0xA700, 0x0000, 0xA700, 0x0000]
    (audit,) = node.audits(1)
    assert (audit.outcome, audit.requests, audit.stored, audit.failures) == ("released", 4, 2, 2)
    archive = node.cfg.archive_dir
    stored = {i.sop_instance_uid: archive / i.path for i in node.rows(Instance)}
    for sent in (deflated, spooled):  # stored exactly as sent, from memory or the spool file
        uid = str(dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(sent)
    assert len(stored) == 2
    assert list((archive / ".incoming").iterdir()) == []


def test_broken_deflate_stream_is_an_undecodable_data_set(
    node_factory: NodeFactory, ct_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode")
    node = node_factory()
    good = variant(
        ct_slice, tmp_path / "good.dcm", TransferSyntaxUID=DeflatedExplicitVRLittleEndian
    )
    data = bytearray(good.read_bytes())
    body = len(data) - len(dataset_bytes(good))
    data[body + 40 : body + 200] = b"\xff" * 160  # garble the deflate stream
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(data[body:]), -zlib.MAX_WBITS)
    again = variant(
        ct_slice, tmp_path / "again.dcm", TransferSyntaxUID=DeflatedExplicitVRLittleEndian
    )
    with RawScu(node.port, [(CTImageStorage, BOTH_SYNTAXES)]) as scu:
        statuses = [scu.send(broken), scu.send(again)]
    assert statuses == [0xC000, 0x0000]
    (audit,) = node.audits(1)
    assert (audit.requests, audit.stored, audit.failures) == (2, 1, 1)
    assert "broken deflate stream" in caplog.text
    assert wait_for(lambda: "1 stored, 0 duplicates, 1 failed" in caplog.text, 10)
    assert "Traceback" not in caplog.text and "exception in the C-STORE handler" not in caplog.text


def test_data_set_of_another_class_than_its_context_gets_a900(
    node_factory: NodeFactory, ct_slice: Path, tmp_path: Path
) -> None:
    node = node_factory()
    mr = variant(
        ct_slice,
        tmp_path / "mr.dcm",
        meta_class=CTImageStorage,
        SOPClassUID=MRImageStorage,
        Modality="MR",
    )
    ct = variant(ct_slice, tmp_path / "ct.dcm")
    with RawScu(node.port, [(CTImageStorage, [ExplicitVRLittleEndian])]) as scu:
        assert [scu.send(mr), scu.send(ct)] == [0xA900, 0x0000]
    assert [i.sop_class_uid for i in node.rows(Instance)] == [CTImageStorage]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all", {CTImageStorage, PROTOCOL_CLASS, PRIVATE_CLASS}),
        ("standard", {CTImageStorage, PROTOCOL_CLASS}),
        ("listed", {CTImageStorage}),
    ],
)
def test_storage_class_policy(node_factory: NodeFactory, policy: str, expected: set[str]) -> None:
    node = node_factory(network={"storage_classes": policy})
    proposed = [CTImageStorage, PROTOCOL_CLASS, PRIVATE_CLASS, "1.2.840.10008.5.1.4.1.2.2.1"]
    with RawScu(node.port, [(uid, [ExplicitVRLittleEndian]) for uid in proposed]) as scu:
        assert scu.accepted == expected  # never a query/retrieve class


@SQLITE_ONLY
def test_private_class_is_archived_only_in_the_stock_acceptor_too(
    node_factory: NodeFactory, ct_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_ACCEPTOR", "stock")
    node = node_factory()
    private = variant(
        ct_slice, tmp_path / "p.dcm", SOPClassUID=PRIVATE_CLASS, SeriesInstanceUID="1.2.3.99"
    )
    with RawScu(node.port, [(PRIVATE_CLASS, [ExplicitVRLittleEndian])]) as scu:
        assert scu.send(private) == 0x0000
    (series,) = node.wait_decided(1)
    assert series.decision_reason == f"not selected: {PRIVATE_CLASS} is archived only"


# --------------------------------------------------------------------------- connections


def _idle(source: str, port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        socks.append(s)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.05)
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _echo_from(source: str, port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="ECHOSCU")
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="GLIPNODE", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().get("Status", -1)) == 0
    assoc.release()
    return ok


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@SQLITE_ONLY
def test_idle_connections_neither_lock_senders_out_nor_stay(
    node_factory: NodeFactory, closing: list[socket.socket]
) -> None:
    node = node_factory(
        network={"max_associations": 2, "request_timeout_s": 2.0, "max_connections_per_host": 4}
    )
    closing += _idle("127.0.0.2", node.port, 20)
    res = node.echoscu()  # from 127.0.0.1, at once
    assert res.returncode == 0, res.stdout + res.stderr
    # 16 were over 127.0.0.2's limit: closed at once; the other 4 after the request timeout
    assert wait_for(lambda: sum(map(_closed_by_peer, closing)) >= 16, 10)
    closing += _idle("127.0.0.3", node.port, 4)
    assert not _echo_from("127.0.0.3", node.port)  # that host is at its limit
    assert _echo_from("127.0.0.4", node.port)  # another host is not
    assert wait_for(lambda: all(map(_closed_by_peer, closing)), 15)
    assert _echo_from("127.0.0.3", node.port)  # its silent connections are gone


@SQLITE_ONLY
def test_silent_and_failed_tls_clients(
    node_factory: NodeFactory,
    tmp_path: Path,
    closing: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode")
    key, crt = self_signed(tmp_path)
    tls = {"enabled": True, "cert_file": str(crt), "key_file": str(key)}
    node = node_factory(network={"tls": tls, "request_timeout_s": 2.0})
    closing += _idle("127.0.0.2", node.port, 3)  # never start a handshake
    ok = node.echoscu("ECHOSCU", "+tla", "+cf", str(crt))  # is not blocked by them
    assert ok.returncode == 0, ok.stdout + ok.stderr
    plain = node.echoscu()  # no TLS against the TLS port
    assert plain.returncode != 0
    assert wait_for(lambda: "TLS handshake with 127.0.0.1 failed" in caplog.text, 10)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    with ctx.wrap_socket(raw) as client:  # a TLS client that then says nothing
        assert wait_for(lambda: _closed_by_peer(client), 15)
    assert wait_for(lambda: "no handshake within the request timeout" in caplog.text, 10)


def test_wrong_called_ae_title_is_logged_and_audited(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode")
    node = node_factory()
    res = node.echoscu("ECHOSCU", "-aec", "NOTTHENODE")
    assert "Called AE Title Not Recognized" in res.stdout + res.stderr
    expected = "called AE title 'NOTTHENODE' is not this node's (GLIPNODE)"
    (audit,) = node.audits(1)
    assert (audit.outcome, audit.reason) == ("rejected", expected)
    assert wait_for(
        lambda: f"association from ECHOSCU@127.0.0.1 refused: {expected}" in caplog.text, 10
    )
