"""The committed results: ``reports/paper-on-phantoms/runs/<name>-<key>/``.

Each finished run's folder holds ``cases.csv`` (per held-out case: every landmark's error
and position, plane metrics, failed flag), ``curve.csv`` (the learning curve) and
``summary.json``. A folder is written under a temporary name and renamed when complete,
so a folder with a ``summary.json`` is a finished run.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_REPORT_DIR = Path("reports/paper-on-phantoms")


@dataclass(frozen=True)
class RunResult:
    """A finished run read back: its summary, per-case rows and learning curve."""

    folder: Path
    summary: dict[str, Any]
    cases: list[dict[str, str]]
    curve: list[dict[str, str]]

    @property
    def key(self) -> str:
        return str(self.summary["key"])

    def column(self, name: str) -> NDArray[np.float64]:
        """A numeric per-case column (NaN where empty)."""
        return np.array([float(r[name]) if r.get(name) else np.nan for r in self.cases])

    def curve_column(self, name: str) -> NDArray[np.float64]:
        """A numeric learning-curve column (NaN where empty)."""
        return np.array([float(r[name]) if r.get(name) else np.nan for r in self.curve])


class Store:
    """Finished runs under ``report_dir/runs``, found by key."""

    def __init__(self, report_dir: Path = DEFAULT_REPORT_DIR) -> None:
        self.report_dir = Path(report_dir)
        self.runs_dir = self.report_dir / "runs"

    def folder(self, name: str, key: str) -> Path:
        return self.runs_dir / f"{name}-{key}"

    def find(self, key: str) -> Path | None:
        """The finished folder of ``key`` (any name), or None."""
        if not self.runs_dir.is_dir():
            return None
        for p in sorted(self.runs_dir.glob(f"*-{key}")):
            if (p / "summary.json").is_file():
                return p
        return None

    def load(self, key: str) -> RunResult | None:
        """The finished run of ``key``, or None."""
        folder = self.find(key)
        if folder is None:
            return None
        return RunResult(
            folder,
            json.loads((folder / "summary.json").read_text()),
            _read_csv(folder / "cases.csv"),
            _read_csv(folder / "curve.csv"),
        )

    def keys(self) -> set[str]:
        """Keys of every finished run in the store (also ones no experiment lists now)."""
        if not self.runs_dir.is_dir():
            return set()
        return {
            p.name.rsplit("-", 1)[-1]
            for p in self.runs_dir.iterdir()
            if (p / "summary.json").is_file()
        }

    def write(
        self,
        name: str,
        key: str,
        summary: dict[str, Any],
        cases: Sequence[dict[str, Any]],
        curve: Sequence[dict[str, Any]],
    ) -> Path:
        """Write a finished run atomically (temporary folder, then rename)."""
        final = self.folder(name, key)
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        _write_csv(tmp / "cases.csv", cases)
        _write_csv(tmp / "curve.csv", curve)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
        return final


def _json(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(v) for k, v in row.items()})


def _cell(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "1" if v else "0"
    if isinstance(v, float | np.floating):
        # Six significant digits, not fixed decimals: some losses (WCE) sit near 1e-5.
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)
