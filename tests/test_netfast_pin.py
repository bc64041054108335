"""netfast stands on pynetdicom internals: the installed pynetdicom must be the minor
release it is tested with, the pyproject pin must say the same, and every private name
it uses must still exist. A failure here means: port netfast before moving the pin."""

from __future__ import annotations

import re
import tomllib
from io import BytesIO
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomnode.receive import netfast

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_installed_pynetdicom_is_the_tested_minor() -> None:
    assert netfast.PYNETDICOM_TESTED == ">=3.0,<3.1"
    major, minor = (int(x) for x in pynetdicom.__version__.split(".")[:2])
    assert (major, minor) == (3, 0), (
        f"pynetdicom {pynetdicom.__version__} is installed but netfast is tested with "
        f"{netfast.PYNETDICOM_TESTED}: port dicomnode/receive/netfast.py first"
    )


def test_pyproject_pins_the_tested_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [re.sub(r"\s", "", d) for d in deps if re.match(r"pynetdicom\b", d)]
    assert pins == [f"pynetdicom{netfast.PYNETDICOM_TESTED}"]


@pytest.mark.parametrize("version", ["3.1.0", "3.2.1", "4.0.0", "2.1.2", "2.0", "dev"])
def test_guard_refuses_other_versions(version: str) -> None:
    with pytest.raises(ImportError, match=r"needs pynetdicom >=3\.0,<3\.1, found"):
        netfast.check_pynetdicom_version(version)


@pytest.mark.parametrize("version", ["3.0.0", "3.0.4", "3.0.12"])
def test_guard_admits_the_tested_minor(version: str) -> None:
    netfast.check_pynetdicom_version(version)


def test_private_methods_netfast_overrides_or_calls_exist() -> None:
    for cls, names in [
        (
            DULServiceProvider,
            ["run_reactor", "send_pdu", "kill_dul", "_process_recv_primitive"],
        ),
        (DULServiceProvider, ["_is_transport_event", "idle_timer_expired", "receive_pdu"]),
        (Association, ["_run_reactor", "_serve_request", "kill", "abort", "bind"]),
        (ACSE, ["_negotiate_as_acceptor", "send_reject", "is_release_requested", "is_aborted"]),
        (RequestHandler, ["_create_association", "handle"]),
        (DIMSEServiceProvider, ["receive_primitive"]),
    ]:
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone"


def test_private_attributes_netfast_reads_exist() -> None:
    ae = AE()
    ae.add_supported_context("1.2.840.10008.1.1")
    assoc = Association(ae, "acceptor")
    for name in [
        "_dul_ready",
        "_kill",
        "_is_paused",
        "_reactor_checkpoint",
        "_accepted_cx",
        "_sent_release",
        "_server",
    ]:
        assert hasattr(assoc, name), f"Association.{name} is gone"
    dul = assoc.dul
    for name in [
        "_idle_timer",
        "_kill_thread",
        "_run_loop_delay",
        "artim_timer",
        "event_queue",
        "to_provider_queue",
        "state_machine",
    ]:
        assert hasattr(dul, name), f"DULServiceProvider.{name} is gone"
    for name in ["msg_queue", "message", "cancel_req"]:
        assert hasattr(assoc.dimse, name), f"DIMSEServiceProvider.{name} is gone"
    assert isinstance(DIMSEMessage().data_set, BytesIO), "DIMSEMessage.data_set is not a BytesIO"
    assert isinstance(ae._servers, list), "AE._servers is gone"
    server = ThreadedAssociationServer(ae, ("127.0.0.1", 0), "X", ae.supported_contexts)
    try:
        assert isinstance(server._handlers, dict), "AssociationServer._handlers is gone"
    finally:
        server.server_close()
