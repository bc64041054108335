"""Shared pytest configuration: fixture modules loaded as plugins, and logging left as found."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pytest

pytest_plugins = ["ingest_fixtures", "orthanc_fixtures"]


@pytest.fixture(autouse=True)
def _root_logging_as_found() -> Iterator[None]:
    """Remove the stream handlers a test's in-process command installed on the root logger
    (``dicomnode.operate.logs.setup_logging``) and restore the exception hooks it set.

    Such a handler writes to the stream that was stderr during the test (a CliRunner's or
    pytest's capture, closed afterwards), so a server thread that logs later printed
    "--- Logging error --- ValueError: I/O operation on closed file" into the suite's output.
    pytest's own capture handlers are subclasses of StreamHandler and are left alone."""
    root = logging.getLogger()
    before = set(root.handlers)
    level = root.level
    hooks = (sys.excepthook, threading.excepthook)
    yield
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and h not in before:
            root.removeHandler(h)
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
