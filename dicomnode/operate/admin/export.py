"""Results export: one CSV row per study, its latest result."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from sqlalchemy import Engine, select

from dicomnode.db.models import Job, ModelVersion, Result, Series, Study
from dicomnode.db.session import session_factory
from dicomnode.operate.admin.common import iso, join_job_study
from dicomnode.process.result_keys import (
    OSTIUM_NAMES,
    SIZING_KEYS,
    SIZING_REFUSAL_KEY,
    height_key,
)

LANDMARK_ORDER = ("RCC", "LCC", "NCC", "LCO", "RCO")
SIZING_COLUMNS = (*(key for key, _attr in SIZING_KEYS), SIZING_REFUSAL_KEY)
"""The annulus sizing block: measurements (empty when refused) and the refusal's reason."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(d: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """A flat dict; nested mappings become ``outer_inner`` keys."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "_"))
        else:
            out[key] = v
    return out


def _landmark_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [n for n in LANDMARK_ORDER if n in names] + sorted(names - set(LANDMARK_ORDER))


def _xyz(value: Any) -> list[Any]:
    if isinstance(value, list | tuple) and len(value) == 3:
        return list(value)
    return [None, None, None]


def _measurement_columns(keys: Iterable[str], landmarks: Iterable[str]) -> list[str]:
    """The annulus sizing block (whole, when any result has a sizing or a refusal), the
    ostium heights (of the ostia among ``landmarks``), then every other key (sorted)."""
    keys = set(keys)
    sizing = list(SIZING_COLUMNS) if keys & set(SIZING_COLUMNS) else []
    heights = [height_key(n) for n in OSTIUM_NAMES if n in set(landmarks) or height_key(n) in keys]
    return [*sizing, *heights, *sorted(keys - set(sizing) - set(heights))]


def export_results_csv(engine: Engine, out: TextIO) -> int:
    """Write one CSV row per study (its latest result) to ``out``; returns the row count.

    Columns: study_instance_uid, accession_number, study_date, series_instance_uid,
    result_id, result_created_at, status, model_version, trained_on_phantom, then
    <landmark>_x/_y/_z (LPS mm; the coronary ostia LCO, RCO after the hinge points when a
    model predicts them), plane_origin_x.._z, plane_normal_x.._z; the annulus sizing
    (annulus_area_mm2, annulus_perimeter_mm, annulus_area_diameter_mm,
    annulus_perimeter_diameter_mm, annulus_min_diameter_mm, annulus_max_diameter_mm,
    annulus_eccentricity, annulus_bridged_fraction, and annulus_sizing_refusal: why it was
    not measured) when any result has one; lco_height_mm / rco_height_mm (ostium centre
    above the annulus plane, along its normal); every other measurement key present
    (sorted); confidence_<landmark>; and flags joined by "; ".
    """
    q = (
        join_job_study(
            select(
                Result,
                Study.id,
                Study.study_instance_uid,
                Study.accession_number,
                Study.study_date,
                Series.series_instance_uid,
                ModelVersion.trained_on_phantom,
            )
        )
        .join(Series, Series.id == Job.series_fk)
        .outerjoin(ModelVersion, ModelVersion.id == Result.model_version_fk)
        .order_by(Study.id, Result.created_at, Result.id)
    )
    with session_factory(engine)() as s:
        latest: dict[int, Any] = {}
        for row in s.execute(q).all():
            latest[row[1]] = row  # ordered: the last one per study wins
    rows = list(latest.values())
    landmarks = _landmark_order(k for r in rows for k in (r[0].landmarks_lps or {}))
    meas_keys = _measurement_columns(
        {k for r in rows for k in _flatten(r[0].measurements)}, landmarks
    )
    conf_keys = _landmark_order({k for r in rows for k in _flatten(r[0].confidence)})
    header = [
        "study_instance_uid",
        "accession_number",
        "study_date",
        "series_instance_uid",
        "result_id",
        "result_created_at",
        "status",
        "model_version",
        "trained_on_phantom",
        *[f"{lm}_{a}" for lm in landmarks for a in "xyz"],
        *[f"plane_{p}_{a}" for p in ("origin", "normal") for a in "xyz"],
        *meas_keys,
        *[f"confidence_{k}" for k in conf_keys],
        "flags",
    ]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    for r, _sid, study_uid, accession, study_date, series_uid, phantom in rows:
        lms = r.landmarks_lps or {}
        plane = r.plane or {}
        meas = _flatten(r.measurements)
        conf = _flatten(r.confidence)
        values: list[Any] = [
            study_uid,
            accession,
            study_date,
            series_uid,
            r.id,
            iso(r.created_at),
            r.status,
            r.model_version,
            phantom,
            *[c for lm in landmarks for c in _xyz(lms.get(lm))],
            *_xyz(plane.get("origin")),
            *_xyz(plane.get("normal")),
            *[meas.get(k) for k in meas_keys],
            *[conf.get(k) for k in conf_keys],
            "; ".join(str(f) for f in (r.flags or [])),
        ]
        w.writerow([_cell(v) for v in values])
    return len(rows)
