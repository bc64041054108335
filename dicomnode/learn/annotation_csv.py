"""The annotation CSV: one study per row, points in patient LPS mm.

Columns (any order; lines starting with ``#`` are comments): ``StudyInstanceUID``,
``RCC_x, RCC_y, RCC_z, LCC_x, ... NCC_z`` (required); ``SeriesInstanceUID`` (the CT series
the points were drawn on; empty: the series the node processed), ``LCO_x .. LCO_z``,
``RCO_x .. RCO_z`` (coronary ostia; an ostium's three cells all filled or all empty),
``annotator`` and ``quality`` (1, 2, 3-, 3+, 4 or empty) are optional.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from dicomnode.learn.annotation_input import (
    AnnotationSource,
    Candidate,
    Outcome,
    RowOutcome,
    quality_problem,
)
from glipcore import LANDMARKS, OSTIA
from glipcore.geometry import FloatArray

STUDY, SERIES, ANNOTATOR, QUALITY = "StudyInstanceUID", "SeriesInstanceUID", "annotator", "quality"
HINGE_COLUMNS = tuple(f"{n}_{ax}" for n in LANDMARKS for ax in "xyz")
OSTIUM_COLUMNS = tuple(f"{n}_{ax}" for n in OSTIA for ax in "xyz")
REQUIRED = (STUDY, *HINGE_COLUMNS)
KNOWN = frozenset((*REQUIRED, SERIES, *OSTIUM_COLUMNS, ANNOTATOR, QUALITY))


class AnnotationCsvError(ValueError):
    """The file as a whole cannot be read (header, encoding)."""


def _point(row: dict[str, str], name: str, required: bool) -> FloatArray | str | None:
    """The point's three cells -> LPS, None (all empty, optional), or a problem."""
    cells = [(row.get(f"{name}_{ax}") or "").strip() for ax in "xyz"]
    if not any(cells):
        return f"missing point {name}" if required else None
    values = []
    for ax, text in zip("xyz", cells, strict=True):
        if not text:
            return f"{name}_{ax}: missing value"
        try:
            v = float(text)
        except ValueError:
            return f"{name}_{ax}: not a number: {text!r}"
        if not math.isfinite(v):
            return f"{name}_{ax}: not finite"
        values.append(v)
    return np.array(values)


def _row(path: Path, line: int, row: dict[str, str]) -> Candidate | RowOutcome:
    label = f"line {line}"
    study = (row.get(STUDY) or "").strip()
    if not study:
        return RowOutcome(label, Outcome.REFUSED, f"{STUDY} is empty")
    points: dict[str, FloatArray] = {}
    for name in (*LANDMARKS, *OSTIA):
        p = _point(row, name, name in LANDMARKS)
        if isinstance(p, str):
            return RowOutcome(label, Outcome.REFUSED, p, study)
        if p is not None:
            points[name] = p
    quality = (row.get(QUALITY) or "").strip() or None
    problem = quality_problem(quality)
    if problem:
        return RowOutcome(label, Outcome.REFUSED, problem, study)
    return Candidate(
        label=label,
        study_uid=study,
        points=points,
        source=AnnotationSource.CSV,
        series_uid=(row.get(SERIES) or "").strip() or None,
        annotator=((row.get(ANNOTATOR) or "").strip() or None),
        quality=quality,
        source_ref=f"{path.name}:{line}",
    )


def _records(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each line that is neither empty nor a comment."""
    return [
        (n, next(csv.reader([line])))
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def read_annotation_csv(path: Path) -> list[Candidate | RowOutcome]:
    """Each data row as a candidate, or as a refused row with the reason."""
    try:
        records = _records(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise AnnotationCsvError(f"{path}: not a UTF-8 CSV ({exc.reason})") from None
    if not records:
        raise AnnotationCsvError(f"{path}: no header (expected {', '.join(REQUIRED)}, ...)")
    header = [h.strip() for h in records[0][1]]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in KNOWN]
    if missing or unknown or len(set(header)) != len(header):
        raise AnnotationCsvError(
            f"{path}: header lacks {missing} / has unknown or repeated columns {unknown}; "
            f"expected {', '.join(REQUIRED)} and optionally {SERIES}, LCO_x..RCO_z, "
            f"{ANNOTATOR}, {QUALITY}"
        )
    out: list[Candidate | RowOutcome] = []
    for line, cells in records[1:]:
        if len(cells) != len(header):
            out.append(
                RowOutcome(
                    f"line {line}", Outcome.REFUSED, f"{len(cells)} cells, header has {len(header)}"
                )
            )
            continue
        out.append(_row(path, line, dict(zip(header, cells, strict=True))))
    return out


__all__ = ["AnnotationCsvError", "read_annotation_csv"]
