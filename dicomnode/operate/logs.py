"""Logging of the node: human-readable lines or one JSON object per line, on stderr, and
never a patient's name, ID or birth date, at any level and on error paths too.

Two defences work together in :class:`PhiScrubber`, a filter on the root handlers:

* values: the ingest path calls :func:`register_phi` with the PatientName, PatientID and
  PatientBirthDate it sees; the most recent :data:`PHI_CAPACITY` values are replaced by
  ``[redacted]`` wherever they appear in a message, exception text or stack;
* shapes: ``PatientName=...``, ``'PatientID': '...'``, ``Patient's Name ... PN: '...'``
  and any printed element of the patient group (0010,xxxx) lose their value, whether or
  not it was registered.

Libraries that print data sets are kept quiet whatever the level (see
:data:`ALWAYS_WARNING`).

Sender-controlled text (UIDs, AE titles, descriptions) may hold control bytes: every
message has its control characters written as backslash escapes (hex, or n, r and t)
once, so that no peer can forge log lines or drive the terminal; text already
escaped (e.g. by ``repr``) is left as it is. pydicom reports a problem both through its
logger and as a Python warning: the warning's copy is dropped
(:class:`RepeatedWarningFilter`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from dicomnode.config import LoggingConfig

REDACTED = "[redacted]"
PHI_CAPACITY = 10_000
"""How many registered PHI values are remembered (least recently seen go first)."""
MIN_PHI_LENGTH = 3
"""Shorter values are not registered: redacting every "7" or "AB" would ruin every log
line while protecting little. Dumps of patient attributes are still redacted by shape."""

ALWAYS_WARNING = ("pynetdicom", "pydicom", "sqlalchemy")
"""Loggers held at WARNING even at DEBUG. pynetdicom logs every DIMSE message at INFO and,
at DEBUG, whole data sets (PatientName, PatientID, PatientBirthDate included) as it
decodes them; pydicom in debug mode logs every element it reads; SQLAlchemy's engine
logs each statement with its bound parameters (patient IDs among them) at INFO."""

QUIET_UNLESS_DEBUG = ("apscheduler", "alembic", "highdicom", "matplotlib", "PIL", "urllib3")
"""Loggers held at WARNING unless the level is DEBUG (they chatter on every tick)."""

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_IDENT = r"[A-Za-z0-9]"

# Patient attributes written as key=value or key: value, in keyword, snake_case or
# pydicom's "Patient's Name ... PN: 'X'" form; the value runs to the next delimiter.
_PHI_KEY = (
    r"(?:other[ _]?)?patient(?:'s)?[ _]?"
    r"(?:name|ids?|birth[ _]?date|birth[ _]?name|birth[ _]?time|address|"
    r"mother(?:'s)?[ _]?birth[ _]?name|telephone[ _]?numbers?|"
    r"ids?[ _]?sequence)"
)
_PHI_FIELD = re.compile(
    rf"(?i)(?<!{_IDENT})({_PHI_KEY})(['\"]?\s*(?:[A-Z]{{2}}\s*)?[=:]\s*)"
    r"('[^'\n]*'|\"[^\"\n]*\"|\[[^\]\n]*\]|[^,;)\]}\n]*)"
)
# An element of group 0010 as pydicom prints it: "(0010,0010) Patient's Name   PN: 'X'"
# (anything after the tag to the end of the line), and in the DICOM JSON model.
_GROUP_0010_LINE = re.compile(r"(?i)(\(0010,\s*[0-9a-f]{4}\))[^\n]*")
_GROUP_0010_JSON = re.compile(r"(?i)(\"0010[0-9a-f]{4}\"\s*:\s*)\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")


class _PhiRegistry:
    """Recently seen PHI values, indexed for a scan that costs one dictionary look-up per
    word of a message however many values are remembered.

    A value matches where it stands on ASCII word boundaries (no letter or digit right
    before or after it), case-insensitively. ASCII values are indexed by their first word;
    the few others go into one regular expression.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._index: dict[str, list[str]] | None = None
        self._other: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            for v in values:
                key = v.lower()
                if key in self._values:
                    self._values.move_to_end(key)
                    continue
                self._values[key] = None
                self._index = None
                while len(self._values) > self.capacity:
                    self._values.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._index = None

    def __len__(self) -> int:
        return len(self._values)

    def _snapshot(self) -> tuple[dict[str, list[str]], re.Pattern[str] | None]:
        with self._lock:
            if self._index is None:
                index: dict[str, list[str]] = {}
                other: list[str] = []
                for v in self._values:
                    first = _WORD.match(v) if v.isascii() else None
                    if first is None:
                        other.append(v)
                    else:
                        index.setdefault(first.group(), []).append(v)
                for cands in index.values():
                    cands.sort(key=len, reverse=True)  # "doe^john" before "doe"
                other.sort(key=len, reverse=True)
                body = "|".join(re.escape(v) for v in other)
                self._other = (
                    re.compile(rf"(?<!{_IDENT})(?:{body})(?!{_IDENT})", re.IGNORECASE)
                    if other
                    else None
                )
                self._index = index
            return self._index, self._other

    def redact(self, text: str) -> str:
        """``text`` with every remembered value replaced by :data:`REDACTED`."""
        index, other = self._snapshot()
        if index:
            parts: list[str] = []
            last = 0
            for m in _WORD.finditer(text):
                start = m.start()
                cands = index.get(m.group().lower()) if start >= last else None
                for v in cands or ():
                    end = start + len(v)
                    if text[start:end].lower() == v and not _is_ident(text, end):
                        parts += [text[last:start], REDACTED]
                        last = end
                        break
            parts.append(text[last:])
            text = "".join(parts)
        return other.sub(REDACTED, text) if other is not None else text


_WORD = re.compile(r"[A-Za-z0-9]+")


def _is_ident(text: str, i: int) -> bool:
    return i < len(text) and text[i].isascii() and text[i].isalnum()


_registry = _PhiRegistry(PHI_CAPACITY)


def _variants(value: str) -> set[str]:
    """The forms a value may take in a log line: as is, a person name's components and
    its caret-free spellings, an 8-digit date also as YYYY-MM-DD."""
    v = _trim(value)
    out = {v}
    if "^" in v or "=" in v:
        groups = [g.strip("^ ") for g in v.split("=")]
        for g in groups:
            out.add(g)
            parts = [p.strip() for p in g.split("^") if p.strip()]
            out.update(parts)
            out.add(" ".join(parts))
            out.add(", ".join(parts[:2]))
    if re.fullmatch(r"\d{8}", v):
        out.add(f"{v[:4]}-{v[4:6]}-{v[6:]}")
    # Non-ASCII names (e.g. ideographic) are distinctive at two characters already.
    return {t for x in out if len(t := _trim(x)) >= (MIN_PHI_LENGTH if t.isascii() else 2)}


def _trim(text: str) -> str:
    """``text`` without leading and trailing characters that are not letters or digits."""
    return _EDGES.sub("", text)


_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def register_phi(*values: object) -> None:
    """Remember patient-identifying values (PatientName, PatientID, PatientBirthDate, ...)
    so that no log line shows them. ``None``, empty and very short values are ignored;
    pydicom values (``PersonName``, ``MultiValue``) are accepted as they are."""
    found: set[str] = set()
    for value in values:
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            text = str(item)
            if text.strip():
                found |= _variants(text)
    if found:
        _registry.add(sorted(found))


def clear_phi() -> None:
    """Forget every registered value (tests)."""
    _registry.clear()


def registered_phi_count() -> int:
    """How many values (variants included) are remembered."""
    return len(_registry)


def scrub(text: str) -> str:
    """``text`` with registered PHI values and patient-attribute dumps redacted."""
    if not text:
        return text
    text = _registry.redact(text)
    text = _PHI_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _GROUP_0010_LINE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _GROUP_0010_JSON.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    r"""``text`` with control characters (C0, DEL, C1) written as ``\xNN`` (newline, return
    and tab as ``\n``, ``\r``, ``\t``); with ``keep_newlines``, newlines and tabs stay
    (tracebacks)."""

    def sub(m: re.Match[str]) -> str:
        c = m.group()
        if keep_newlines and c in "\n\t":
            return c
        return _NAMED.get(c) or f"\\x{ord(c):02x}"

    return _CONTROL.sub(sub, text)


def format_traceback(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> str:
    """The traceback as Python prints it, except that the exception messages (which may
    carry sender-controlled text) have their line breaks escaped: only the traceback's own
    structure spans lines."""
    parts = []
    for chunk in traceback.format_exception(exc_type, exc, tb):
        if chunk.startswith(("Traceback", "  File ", "\n")):
            parts.append(chunk)
        else:
            parts.append(escape_controls(chunk.removesuffix("\n")) + "\n")
    return "".join(parts)


class PhiScrubber(logging.Filter):
    """A handler filter that rewrites each record with its PHI redacted.

    The message is formatted once (``msg % args``), scrubbed and put back with no args;
    exception and stack text are rendered, scrubbed and stored in ``exc_text`` /
    ``stack_info``, which formatters use as they are. The record is changed in place, so
    every later handler sees the scrubbed record too. If scrubbing itself fails, the
    message is replaced rather than let through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # arguments that do not fit the format
                message = f"{record.msg} [log arguments did not fit the format]"
            record.msg = escape_controls(scrub(message))
            record.args = None
            if record.exc_info and record.exc_info[0] is not None:
                exc_text = format_traceback(*record.exc_info).rstrip("\n")
                record.exc_text = escape_controls(scrub(exc_text), keep_newlines=True)
                record.exc_info = None
            elif record.exc_text:
                record.exc_text = escape_controls(scrub(record.exc_text), keep_newlines=True)
            if record.stack_info:
                record.stack_info = escape_controls(scrub(record.stack_info), keep_newlines=True)
        except Exception as exc:  # never let a log call fail, never let text through
            record.msg = f"[log message withheld: PHI scrubbing failed ({type(exc).__name__})]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


class RepeatedWarningFilter(logging.Filter):
    """Drops the ``py.warnings`` copy of a message pydicom has just logged itself
    (pydicom's ``warn_and_log`` does both), so that each problem is logged once."""

    def __init__(self) -> None:
        super().__init__()
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pydicom" or record.name.startswith("pydicom."):
            self._last.message = record.getMessage()
            return True
        if record.name == "py.warnings":
            last: str | None = getattr(self._last, "message", None)
            self._last.message = None
            if last and last in record.getMessage():
                return False
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, thread,
    process, and ``exception`` / ``stack`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
            "process": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exception"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        return json.dumps(obj, ensure_ascii=False)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(_TEXT_FORMAT)


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("dicomnode").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("dicomnode").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def setup_logging(cfg: LoggingConfig, stream: Any = None) -> logging.Handler:
    """Log to ``stream`` (default stderr) in ``cfg.format`` at ``cfg.level``, through a
    :class:`PhiScrubber`. Replaces the root logger's handlers; uncaught exceptions (main
    thread and others) are logged through it too instead of printed raw. Returns the
    handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_formatter(cfg.format))
    handler.addFilter(RepeatedWarningFilter())  # before the scrubber: it compares raw text
    handler.addFilter(PhiScrubber())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    for name in ALWAYS_WARNING:
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet = logging.DEBUG if cfg.level == "DEBUG" else logging.WARNING
    for name in QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(quiet)
    if cfg.level != "DEBUG":
        # "Execution of job ... skipped: maximum number of running instances reached" is
        # the intended coalescing of a periodic job that ran long, not a fault.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    return handler
