"""A real Orthanc PACS for integration tests: fixture ``orthanc``.

Orthanc (Debian package) runs as a subprocess through
:class:`dicomnode.operate.localpacs.OrthancServer` (the demo's local PACS): free DICOM and
HTTP ports, storage in a temporary folder, HTTP from localhost only, any calling AE title
allowed, unknown storage SOP classes accepted. Its log is printed at teardown, so pytest
shows it with a failing test. Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.operate.localpacs import OrthancServer

Orthanc = OrthancServer


def start_orthanc(root: Path, tries: int = 3) -> OrthancServer:
    """Start Orthanc in ``root`` (a port taken meanwhile by someone else: new ports)."""
    if not OrthancServer.available():
        pytest.fail(
            "Orthanc is not installed: run scripts/setup.sh (it installs the Debian orthanc "
            "package)",
            pytrace=False,
        )
    error = ""
    for n in range(tries):
        try:
            return OrthancServer(root / f"run{n}").start()
        except RuntimeError as exc:
            error = str(exc)
    pytest.fail(f"could not start Orthanc after {tries} tries: {error}", pytrace=False)


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A running Orthanc with an empty store; stopped (and its log shown) after the test."""
    root = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(root)
    try:
        yield server
    finally:
        exited = not server.alive()
        log = server.log()
        server.stop()
        print(f"--- Orthanc log ({server.log_path}) ---\n{log}")
        if exited:
            pytest.fail(f"Orthanc exited during the test:\n{log}", pytrace=False)
        shutil.rmtree(root, ignore_errors=True)
