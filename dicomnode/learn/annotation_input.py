"""What an import produces before and after the checks: candidates and per-row outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from glipcore.geometry import FloatArray
from glipcore.manifest import QUALITY_GRADES


class AnnotationSource(StrEnum):
    """Where an annotation came from (the ``source`` column)."""

    CSV = "csv"
    SR_FILE = "sr-file"
    SR_RECEIVED = "sr-received"


class Outcome(StrEnum):
    """What became of one row (a CSV line or an SR)."""

    IMPORTED = "imported"
    CHECKED = "checked"  # passed the checks, not written (a dry run, or the file refused)
    UNCHANGED = "unchanged"  # the study's newest annotation already says the same
    DUPLICATE = "duplicate"  # this SR was imported before
    IGNORED = "ignored"  # not an annotation (e.g. our own result, an SR without hinges)
    REFUSED = "refused"


@dataclass(frozen=True, eq=False)
class Candidate:
    """One annotation to check and store. ``points``: "RCC", "LCC", "NCC" and optionally
    "LCO", "RCO" -> LPS mm; ``frame_of_reference_uid``: the one the points refer to (SR)."""

    label: str
    study_uid: str
    points: dict[str, FloatArray]
    source: AnnotationSource
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    annotator: str | None = None
    quality: str | None = None
    annotated_at: datetime | None = None
    source_ref: str | None = None
    source_uid: str | None = None


@dataclass(frozen=True)
class RowOutcome:
    """The outcome of one row, with the reason (refused, ignored, ...)."""

    label: str
    outcome: Outcome
    reason: str = ""
    study_uid: str | None = None
    annotation_id: int | None = None


@dataclass
class ImportReport:
    """Every row of one file; ``written`` is False when the file was refused as a whole
    (or checked only)."""

    path: Path
    rows: list[RowOutcome] = field(default_factory=list)
    written: bool = False

    @property
    def refused(self) -> list[RowOutcome]:
        return [r for r in self.rows if r.outcome == Outcome.REFUSED]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.rows if r.outcome == outcome)


def quality_problem(quality: str | None) -> str | None:
    """Why a quality grade is not one of the paper's (None when it is, or is absent)."""
    if quality in (None, "") or quality in QUALITY_GRADES:
        return None
    return f"quality {quality!r} is not one of {', '.join(QUALITY_GRADES)}"


__all__ = [
    "AnnotationSource",
    "Candidate",
    "ImportReport",
    "Outcome",
    "RowOutcome",
    "quality_problem",
]
