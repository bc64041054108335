"""Logging: text and JSON formats, and no patient name, ID or birth date in any line at
any level, error paths included."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset

from dicomnode.config import LoggingConfig
from dicomnode.operate import logs

NAME = "ZQXWVY^JOHANNA^M"
PATIENT_ID = "PID-4711-QX"
BIRTH = "19380415"
# Every spelling of them that must never show up (checked case-insensitively).
FORBIDDEN = ["ZQXWVY", "JOHANNA", PATIENT_ID, "4711-QX", BIRTH, "1938-04-15"]


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """Logging set up fresh for the test, and the root logger, library levels and
    exception hooks put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    levels = {n: logging.getLogger(n).level for n in logs.ALWAYS_WARNING + logs.QUIET_UNLESS_DEBUG}
    logs.clear_phi()
    stream = io.StringIO()
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook = saved[2], saved[3]
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    logging.captureWarnings(False)
    logs.clear_phi()


def assert_clean(text: str) -> None:
    low = text.lower()
    leaked = [v for v in FORBIDDEN if v.lower() in low]
    assert not leaked, f"PHI {leaked} in log output:\n{text}"


def _patient_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "UNREGISTERED^PERSON"
    ds.PatientID = "UNREG-0099"
    ds.PatientBirthDate = "19990909"
    ds.StudyDescription = "CT aortic root"
    return ds


def _emit_everything(log: logging.Logger) -> None:
    """Messages, arguments, exceptions and stacks that carry PHI, at every level."""
    log.debug("received instance for %s (%s), born %s", NAME, PATIENT_ID, BIRTH)
    log.info("patient Zqxwvy Johanna, id %s: study 42 stored", PATIENT_ID.lower())
    log.warning("dump: PatientName=%s, PatientID=%s study=42", NAME, PATIENT_ID)
    log.error("record %r", {"PatientBirthDate": BIRTH, "rows": 512})
    try:
        raise ValueError(f"cannot parse header of {NAME} / {PATIENT_ID}")
    except ValueError:
        log.exception("job 7 failed")
    try:
        try:
            raise KeyError(BIRTH)
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        log.critical("chained failure", exc_info=exc)
    log.info("stack for %s", PATIENT_ID, stack_info=True)


def test_text_format_at_debug_has_no_phi(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="DEBUG", format="text"), stream=capture)
    logs.register_phi(NAME, PATIENT_ID, BIRTH)
    log = logging.getLogger("dicomnode.test")
    _emit_everything(log)
    # Shape-based: a data set nobody registered, printed whole.
    log.debug("data set:\n%s", _patient_dataset())
    # A library that dumps data sets at DEBUG stays at WARNING.
    logging.getLogger("pynetdicom.dsutils").debug("decoded: %s", _patient_dataset())
    logging.getLogger("sqlalchemy.engine.Engine").info("[params] ('%s',)", PATIENT_ID)

    out = capture.getvalue()
    assert_clean(out)
    for v in ("UNREGISTERED", "UNREG-0099", "19990909"):
        assert v not in out
    assert "decoded:" not in out and "[params]" not in out
    # What is not PHI survives, and the lines are the human-readable kind.
    assert "study 42 stored" in out and "job 7 failed" in out and "rows': 512" in out
    assert "CT aortic root" in out
    assert "Traceback (most recent call last)" in out and "ValueError: cannot parse" in out
    assert "KeyError: '[redacted]'" in out and "RuntimeError: wrapped" in out
    assert "Stack (most recent call last)" in out
    first = out.splitlines()[0]
    assert " DEBUG   dicomnode.test: received instance for [redacted] ([redacted])" in first


def test_json_lines_parse_and_carry_no_phi(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="DEBUG", format="json"), stream=capture)
    logs.register_phi(NAME, PATIENT_ID, BIRTH)
    _emit_everything(logging.getLogger("dicomnode.json"))
    lines = capture.getvalue().splitlines()
    objs = [json.loads(line) for line in lines]  # one object per line
    assert len(objs) == 7
    assert [o["level"] for o in objs[:2]] == ["DEBUG", "INFO"]
    assert all(o["logger"] == "dicomnode.json" and o["time"].endswith("+00:00") for o in objs)
    failed = next(o for o in objs if o["message"] == "job 7 failed")
    assert "ValueError: cannot parse header of [redacted] / [redacted]" in failed["exception"]
    assert "stack" in objs[-1]
    assert_clean(capture.getvalue())


def test_levels_of_libraries(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="DEBUG"), stream=capture)
    # pynetdicom dumps whole data sets (patient name included) at DEBUG: never enabled.
    for name in ("pynetdicom", "pynetdicom.assoc", "pydicom", "sqlalchemy.engine"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    assert logging.getLogger("apscheduler").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("dicomnode.receive.scp").isEnabledFor(logging.DEBUG)
    logs.setup_logging(LoggingConfig(level="INFO"), stream=capture)
    assert not logging.getLogger("apscheduler").isEnabledFor(logging.INFO)
    assert logging.getLogger("dicomnode.receive.scp").isEnabledFor(logging.INFO)
    assert not logging.getLogger("dicomnode.receive.scp").isEnabledFor(logging.DEBUG)
    assert len(logging.getLogger().handlers) == 1  # set up twice: still one handler


def test_uncaught_exceptions_go_through_the_scrubber(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="INFO"), stream=capture)
    logs.register_phi(NAME, PATIENT_ID, BIRTH)

    def boom() -> None:
        raise RuntimeError(f"worker crashed on {PATIENT_ID}")

    t = threading.Thread(target=boom, name="job-thread")
    t.start()
    t.join()
    try:
        raise OSError(f"main crashed on {NAME}")
    except OSError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    out = capture.getvalue()
    assert "uncaught exception in thread job-thread" in out
    assert "RuntimeError: worker crashed on [redacted]" in out
    assert "OSError: main crashed on [redacted]" in out
    assert_clean(out)


def test_bad_log_arguments_do_not_raise_or_leak(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="INFO"), stream=capture)
    logs.register_phi(PATIENT_ID)
    logging.getLogger("dicomnode.x").info("count %d for " + PATIENT_ID, "not-a-number")
    out = capture.getvalue()
    assert "did not fit the format" in out and "--- Logging error ---" not in out
    assert_clean(out)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PatientName=DOE^JANE, rows=5", "PatientName=[redacted], rows=5"),
        ("patient_id='12' issuer=''", "patient_id=[redacted] issuer=''"),
        ("{'PatientID': 'AB1', 'x': 1}", "{'PatientID': [redacted], 'x': 1}"),
        ("(0010,0030) Patient's Birth Date   DA: '20010101'", "(0010,0030) [redacted]"),
        (
            '{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}, "x": 1}',
            '{"00100010": "[redacted]", "x": 1}',
        ),
        ("Other Patient IDs: A1\\B2; next", "Other Patient IDs: [redacted]; next"),
        ("(0008,0020) Study Date  DA: '20010101'", "(0008,0020) Study Date  DA: '20010101'"),
        ("series 1.2.3 has 512 slices", "series 1.2.3 has 512 slices"),
    ],
)
def test_attribute_dumps_are_redacted_by_shape(text: str, expected: str) -> None:
    logs.clear_phi()
    assert logs.scrub(text) == expected


def test_registered_values_and_their_spellings() -> None:
    logs.clear_phi()
    logs.register_phi(NAME, PATIENT_ID, BIRTH, None, "", "7")  # None, empty, short: ignored
    logs.register_phi(["OTHER-ID-1", "OTHER-ID-2"])  # multi-valued (OtherPatientIDs)
    logs.register_phi("山田^太郎")
    text = (
        "zqxwvy^johanna^m | Zqxwvy Johanna | ZQXWVY, JOHANNA | pid-4711-qx | 1938-04-15 | "
        "OTHER-ID-2 | 山田 太郎 | 7 files | xpid-4711-qx0"
    )
    assert logs.scrub(text) == (
        # Components are registered one by one too, so any order or spacing is covered.
        "[redacted] | [redacted] [redacted] | [redacted] | [redacted] | [redacted] | "
        "[redacted] | [redacted] | 7 files | xpid-4711-qx0"
    )
    logs.clear_phi()
    assert logs.registered_phi_count() == 0


def test_registry_keeps_the_most_recent_values() -> None:
    reg = logs._PhiRegistry(capacity=3)
    reg.add(["AAA1", "BBB2", "CCC3"])
    reg.add(["AAA1"])  # seen again: now the most recent
    reg.add(["DDD4"])  # evicts BBB2, the least recently seen
    assert len(reg) == 3
    assert reg.redact("AAA1 BBB2 CCC3 DDD4") == "[redacted] BBB2 [redacted] [redacted]"


def test_sender_bytes_are_escaped_once(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="INFO", format="text"), stream=capture)
    log = logging.getLogger("dicomnode.test")
    uid = "1.2.3\x00\x1b[2J.4\nFORGED 2026-01-01 INFO fake line"
    log.warning("series %s from %s (as repr: %r)", uid, "AE\x85\r", uid)
    try:
        raise ValueError(f"bad uid {uid}")
    except ValueError:
        log.exception("refused")
    text = capture.getvalue()
    lines = text.splitlines()
    assert lines[0].endswith(
        "series 1.2.3\\x00\\x1b[2J.4\\nFORGED 2026-01-01 INFO fake line from AE\\x85\\r "
        "(as repr: '1.2.3\\x00\\x1b[2J.4\\nFORGED 2026-01-01 INFO fake line')"
    )
    assert not any(line.startswith("FORGED") for line in lines)
    assert "\x00" not in text and "\x1b" not in text and "\r" not in text
    assert "Traceback (most recent call last):\n" in text  # tracebacks keep their lines


def test_json_lines_are_escaped_once(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="INFO", format="json"), stream=capture)
    logging.getLogger("dicomnode.test").warning("ae %s", "EVIL\x00\x1b")
    (line,) = capture.getvalue().splitlines()
    assert json.loads(line)["message"] == "ae EVIL\\x00\\x1b"


def test_pydicom_warnings_are_logged_once(capture: io.StringIO) -> None:
    logs.setup_logging(LoggingConfig(level="INFO", format="text"), stream=capture)
    ds = Dataset()
    ds.SeriesInstanceUID = "1.2.3\x00.4"  # pydicom warns and logs: an invalid UI value
    text = capture.getvalue()
    assert text.count("Invalid value for VR UI") == 1, text
    assert "'1.2.3\\x00.4'" in text and "\x00" not in text
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a plain warning stays", UserWarning, stacklevel=1)
    assert "a plain warning stays" in capture.getvalue()
