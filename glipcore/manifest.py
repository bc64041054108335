"""The case manifest: the CSV that exchanges labelled cases (ours and users').

Columns: case_id, path, RCC_x, RCC_y, RCC_z, LCC_x, LCC_y, LCC_z, NCC_x, NCC_y, NCC_z,
quality, and optionally the coronary ostia LCO_x, LCO_y, LCO_z, RCO_x, RCO_y, RCO_z (all six
columns or none; a row may leave one ostium's three cells empty when it is not known).
Coordinates are patient LPS mm; ``path`` (a DICOM series folder or a NIfTI
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from glipcore import ALL_LANDMARKS, LANDMARKS, OSTIA

QUALITY_GRADES: tuple[str, ...] = ("1", "2", "3-", "3+", "4")
COORD_COLUMNS: tuple[str, ...] = tuple(f"{lm}_{ax}" for lm in LANDMARKS for ax in "xyz")
COLUMNS: tuple[str, ...] = ("case_id", "path", *COORD_COLUMNS, "quality")
OSTIUM_COLUMNS: tuple[str, ...] = tuple(f"{lm}_{ax}" for lm in OSTIA for ax in "xyz")
"""Optional columns: present together or not at all."""


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True, eq=False)
class ManifestRow:
    """One labelled case: ``landmarks`` (3, 3) LPS mm in RCC, LCC, NCC order; ``path``
    resolved (absolute when read from a file); ``quality`` a grade or "" (unknown);
    ``ostia`` (2, 3) LPS mm in LCO, RCO order or None, a row of NaN for an unknown one."""

    case_id: str
    path: Path
    landmarks: NDArray[np.float64]
    quality: str = ""
    ostia: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        lm = np.asarray(self.landmarks, dtype=np.float64)
        if lm.shape != (3, 3) or not np.all(np.isfinite(lm)):
            raise ValueError(f"case {self.case_id!r}: landmarks must be 3x3 finite LPS mm")
        if self.ostia is not None:
            ost = np.asarray(self.ostia, dtype=np.float64)
            rows_ok = all(np.all(np.isfinite(r)) or np.all(np.isnan(r)) for r in ost)
            if ost.shape != (2, 3) or not rows_ok:
                raise ValueError(
                    f"case {self.case_id!r}: ostia must be 2x3 LPS mm (a row of NaN when unknown)"
                )
            object.__setattr__(self, "ostia", None if np.all(np.isnan(ost)) else ost)
        if self.quality not in ("", *QUALITY_GRADES):
            raise ValueError(
                f"case {self.case_id!r}: quality must be one of {QUALITY_GRADES} or empty, "
                f"got {self.quality!r}"
            )
        if not self.case_id:
            raise ValueError("case_id must not be empty")
        object.__setattr__(self, "landmarks", lm)
        object.__setattr__(self, "path", Path(self.path))

    def points(self, names: Iterable[str] = LANDMARKS) -> NDArray[np.float64]:
        """(L, 3) LPS mm of the named landmarks (see ``glipcore.ALL_LANDMARKS``); a row of
        NaN for a landmark this case does not have (an unknown ostium)."""
        table = dict(zip(LANDMARKS, self.landmarks, strict=True))
        nan = np.full(3, np.nan)
        ostia = self.ostia if self.ostia is not None else np.full((2, 3), np.nan)
        table.update(zip(OSTIA, ostia, strict=True))
        out = []
        for name in names:
            if name not in table:
                raise ValueError(f"unknown landmark {name!r}; known: {ALL_LANDMARKS}")
            out.append(table.get(name, nan))
        return np.asarray(out, dtype=np.float64).reshape(-1, 3)


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
    ostia = [c for c in OSTIUM_COLUMNS if c in names]
    if ostia and len(ostia) != len(OSTIUM_COLUMNS):
        absent = [c for c in OSTIUM_COLUMNS if c not in names]
        raise _fail(path, line, None, f"ostium columns come all six or none; missing {absent}")
    unknown = [c for c in names if c not in (*COLUMNS, *OSTIUM_COLUMNS)]
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
        ostia = _ostia(path, line, cell) if OSTIUM_COLUMNS[0] in index else None
        rows.append(ManifestRow(case_id, resolved, landmarks, quality, ostia))
    return rows


def _ostia(path: Path, line: int, cell: Callable[[str], str]) -> NDArray[np.float64] | None:
    """The optional ostium cells of one row: a (2, 3) array, NaN rows for an ostium whose
    three cells are empty; None when both are empty."""
    out = np.full((2, 3), np.nan)
    for i, name in enumerate(OSTIA):
        columns = [f"{name}_{ax}" for ax in "xyz"]
        texts = [cell(c) for c in columns]
        if not any(texts):
            continue
        out[i] = [_coordinate(path, line, c, x) for c, x in zip(columns, texts, strict=True)]
    return None if np.all(np.isnan(out)) else out


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
    rows = list(rows)
    with_ostia = any(row.ostia is not None for row in rows)
    writer.writerow((*COLUMNS, *OSTIUM_COLUMNS) if with_ostia else COLUMNS)
    ids: set[str] = set()
    for row in rows:
        if row.case_id in ids:
            raise ValueError(f"duplicate case_id {row.case_id!r}")
        ids.add(row.case_id)
        target = row.path if row.path.is_absolute() else path.parent / row.path
        coords = [repr(float(v)) for v in np.asarray(row.landmarks, dtype=np.float64).ravel()]
        cells = [row.case_id, _relative(target, path.parent), *coords, row.quality]
        if with_ostia:
            ostia = row.points(OSTIA).ravel()
            cells += ["" if math.isnan(v) else repr(float(v)) for v in ostia]
        writer.writerow(cells)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return path
