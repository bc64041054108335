"""The case manifest: the CSV that exchanges labelled cases (ours and users').

Columns, exactly: case_id, path, RCC_x, RCC_y, RCC_z, LCC_x, LCC_y, LCC_z, NCC_x, NCC_y,
NCC_z, quality. Coordinates are patient LPS mm; ``path`` (a DICOM series folder or a NIfTI
file) is relative to the manifest's folder (absolute paths are kept); ``quality`` is one of
the paper's grades 1, 2, 3-, 3+, 4, or empty when unknown. Lines starting with ``#`` before
the header carry provenance as ``# key: value`` (e.g. the phantom generator's version);
:func:`read_manifest_header` returns them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from glipcore import LANDMARKS

QUALITY_GRADES: tuple[str, ...] = ("1", "2", "3-", "3+", "4")
COORD_COLUMNS: tuple[str, ...] = tuple(f"{lm}_{ax}" for lm in LANDMARKS for ax in "xyz")
COLUMNS: tuple[str, ...] = ("case_id", "path", *COORD_COLUMNS, "quality")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True, eq=False)
class ManifestRow:
    """One labelled case: ``landmarks`` (3, 3) LPS mm in RCC, LCC, NCC order; ``path``
    resolved (absolute when read from a file); ``quality`` a grade or "" (unknown)."""

    case_id: str
    path: Path
    landmarks: NDArray[np.float64]
    quality: str = ""

    def __post_init__(self) -> None:
        lm = np.asarray(self.landmarks, dtype=np.float64)
        if lm.shape != (3, 3) or not np.all(np.isfinite(lm)):
            raise ValueError(f"case {self.case_id!r}: landmarks must be 3x3 finite LPS mm")
        if self.quality not in ("", *QUALITY_GRADES):
            raise ValueError(
                f"case {self.case_id!r}: quality must be one of {QUALITY_GRADES} or empty, "
                f"got {self.quality!r}"
            )
        if not self.case_id:
            raise ValueError("case_id must not be empty")
        object.__setattr__(self, "landmarks", lm)
        object.__setattr__(self, "path", Path(self.path))


def _fail(path: Path, line: int, column: str | None, message: str) -> ManifestError:
    where = f"{path}:{line}" + (f", column {column!r}" if column else "")
    return ManifestError(f"{where}: {message}")


def _lines(path: Path) -> tuple[list[str], list[str], int]:
    """(comment lines, the rest, line number of the first non-comment line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest file") from None
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (lines[n].startswith("#") or not lines[n].strip()):
        n += 1
    return lines[:n], lines[n:], n + 1


def read_manifest_header(path: Path | str) -> dict[str, str]:
    """The ``# key: value`` provenance lines before the CSV header."""
    comments, _, _ = _lines(Path(path))
    out: dict[str, str] = {}
    for line in comments:
        body = line.lstrip("#").strip()
        if ":" in body:
            key, value = body.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def _check_header(path: Path, header: list[str], line: int) -> None:
    names = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise _fail(path, line, None, f"missing columns {missing}; expected {list(COLUMNS)}")
    unknown = [c for c in names if c not in COLUMNS]
    if unknown or len(names) != len(set(names)):
        raise _fail(path, line, None, f"unexpected or repeated columns {unknown or names}")


def _coordinate(path: Path, line: int, column: str, text: str) -> float:
    if not text.strip():
        raise _fail(path, line, column, "missing value (LPS mm expected)")
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, column, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _fail(path, line, column, f"not a finite number: {text!r}")
    return value


def read_manifest(path: Path | str, *, check_paths: bool = True) -> list[ManifestRow]:
    """Read a manifest; paths are resolved relative to the manifest's folder.

    Raises :class:`ManifestError` naming the line and column of the first missing or
    invalid value (also for duplicate case ids and, with ``check_paths``, for paths that
    do not exist)."""
    path = Path(path)
    _, body, first = _lines(path)
    reader = csv.reader(io.StringIO("".join(body)))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"{path}: empty manifest (expected header {list(COLUMNS)})") from None
    _check_header(path, header, first)
    index = {name.strip(): i for i, name in enumerate(header)}
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for offset, record in enumerate(reader, start=1):
        line = first + offset
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise _fail(path, line, None, f"{len(record)} fields, expected {len(header)}")

        def cell(column: str, rec: list[str] = record) -> str:
            return rec[index[column]].strip()

        case_id = cell("case_id")
        if not case_id:
            raise _fail(path, line, "case_id", "missing value")
        if case_id in seen:
            raise _fail(path, line, "case_id", f"duplicate of line {seen[case_id]}: {case_id!r}")
        seen[case_id] = line
        rel = cell("path")
        if not rel:
            raise _fail(path, line, "path", "missing value")
        resolved = (path.parent / rel).resolve()
        if check_paths and not resolved.exists():
            raise _fail(path, line, "path", f"{resolved} does not exist")
        coords = [_coordinate(path, line, c, cell(c)) for c in COORD_COLUMNS]
        quality = cell("quality")
        if quality not in ("", *QUALITY_GRADES):
            raise _fail(path, line, "quality", f"{quality!r} is not one of {QUALITY_GRADES}")
        landmarks = np.array(coords, dtype=np.float64).reshape(3, 3)
        rows.append(ManifestRow(case_id, resolved, landmarks, quality))
    return rows


def _relative(target: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.resolve().as_posix()


def write_manifest(
    rows: Iterable[ManifestRow], path: Path | str, *, header: Mapping[str, str] | None = None
) -> Path:
    """Write rows as a manifest (paths relative to its folder; coordinates with enough
    digits to round-trip float64). ``header`` adds ``# key: value`` lines first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    for key, value in (header or {}).items():
        if "\n" in f"{key}{value}" or ":" in key:
            raise ValueError(f"header entries must be one line and keys without ':': {key!r}")
        buf.write(f"# {key}: {value}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    ids: set[str] = set()
    for row in rows:
        if row.case_id in ids:
            raise ValueError(f"duplicate case_id {row.case_id!r}")
        ids.add(row.case_id)
        target = row.path if row.path.is_absolute() else path.parent / row.path
        coords = [repr(float(v)) for v in np.asarray(row.landmarks, dtype=np.float64).ravel()]
        writer.writerow([row.case_id, _relative(target, path.parent), *coords, row.quality])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return path
