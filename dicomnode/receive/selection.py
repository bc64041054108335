"""The selection rules: whether a complete series qualifies for a job, and which of a
study's qualifying series is the best (and why, in words)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID

from dicomnode.config import NodeConfig
from dicomnode.db.models import Series
from dicomnode.receive.phases import InstanceInfo, Phase, split_phases
from dicomnode.receive.series_facts import PROCESSED_CLASSES

ORIENTATION_TOL = 1e-4


@dataclass(frozen=True)
class Evaluation:
    """The selection rules applied to one complete series."""

    eligible: bool
    reason: str
    phase: Phase | None = None
    phase_distance: float = 0.0
    series_number: int | None = None
    series_uid: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def chosen_phase(self) -> Phase:
        """The phase an eligible series is processed with; ValueError for an ineligible one."""
        if self.phase is None:
            raise ValueError(f"series {self.series_uid} has no chosen phase ({self.reason})")
        return self.phase

    def rank_key(self) -> tuple[float, float, float, int, int, str]:
        """Smaller is better: phase match, thin slices, z-coverage, slices, number, UID."""
        p = self.chosen_phase()
        return (
            round(self.phase_distance, 3),
            round(p.resolution_mm, 2),
            -round(p.coverage_mm, 1),
            -p.slices,
            self.series_number if self.series_number is not None else 1 << 30,
            self.series_uid,
        )


def why_better(a: Evaluation, b: Evaluation) -> str:
    """Why series evaluation ``a`` ranks before ``b``, in words."""
    pa, pb = a.chosen_phase(), b.chosen_phase()
    ka, kb = a.rank_key(), b.rank_key()
    if ka[0] != kb[0]:
        return f"phase closer to the configured one ({pa.label} vs {pb.label})"
    if ka[1] != kb[1]:
        return f"thinner slices ({pa.resolution_mm:g} mm vs {pb.resolution_mm:g} mm)"
    if ka[2] != kb[2]:
        return f"larger z-coverage ({pa.coverage_mm:.1f} mm vs {pb.coverage_mm:.1f} mm)"
    if ka[3] != kb[3]:
        return f"more slices ({pa.slices} vs {pb.slices})"
    if ka[4] != kb[4]:
        return "equal quality, lower series number"
    return "equal quality, first by series UID"


def _image_type_values(s: str | None) -> list[str]:
    return [v.strip().upper() for v in s.split("\\")] if s else []


def _own_output(series: Series, cfg: NodeConfig) -> str | None:
    ident = cfg.identity
    if series.series_instance_uid.startswith(ident.uid_root):
        return f"UID root {ident.uid_root}"
    if (series.manufacturer or "") == ident.manufacturer:
        return f"Manufacturer {ident.manufacturer}"
    if (series.series_description or "").startswith(ident.series_description_prefix):
        return f"SeriesDescription starting with {ident.series_description_prefix}"
    return None


def _phase_problem(p: Phase, cfg: NodeConfig) -> str | None:
    sel = cfg.selection
    if p.slices < sel.min_slices:
        return f"{p.slices} slices (at least {sel.min_slices} required)"
    if p.resolution_mm > sel.max_slice_thickness_mm:
        return (
            f"slice thickness/spacing {p.resolution_mm:g} mm "
            f"(at most {sel.max_slice_thickness_mm:g} mm allowed)"
        )
    if p.coverage_mm < sel.min_z_coverage_mm:
        return f"z-coverage {p.coverage_mm:.1f} mm (at least {sel.min_z_coverage_mm:g} mm required)"
    return None


def evaluate_series(
    series: Series, instances: Sequence[InstanceInfo], cfg: NodeConfig
) -> Evaluation:
    """Apply the selection rules to a complete series."""
    sel = cfg.selection

    def no(reason: str) -> Evaluation:
        return Evaluation(False, f"not selected: {reason}", series_uid=series.series_instance_uid)

    if sel.skip_own_outputs and (why := _own_output(series, cfg)) is not None:
        return no(f"this node's own output ({why})")
    if not instances:
        return no("no instances")
    classes = {i.sop_class_uid for i in instances}
    other = sorted(classes - set(PROCESSED_CLASSES))
    if other:
        return no(f"{UID(other[0]).name} is archived only")
    modality = series.modality or "(none)"
    if modality not in sel.modalities:
        return no(f"modality {modality} (expected {', '.join(sel.modalities)})")
    types = [_image_type_values(i.image_type) for i in instances]
    if sel.require_original and any(not t or t[0] != "ORIGINAL" for t in types):
        bad = next(t for t in types if not t or t[0] != "ORIGINAL")
        return no(f"image type {bad[0] if bad else '(missing)'} (ORIGINAL required)")
    if sel.exclude_localizers and any("LOCALIZER" in t for t in types):
        return no("localizer")
    orients = [i.orientation for i in instances if i.orientation and len(i.orientation) == 6]
    if len(orients) != len(instances):
        return no("an instance lacks ImageOrientationPatient")
    first = orients[0]
    if any(
        max(abs(a - b) for a, b in zip(o, first, strict=True)) > ORIENTATION_TOL for o in orients
    ):
        return no("ImageOrientationPatient differs between instances")
    phases = split_phases(instances)
    if isinstance(phases, str):
        return no(phases)
    problems = {p: _phase_problem(p, cfg) for p in phases}
    ok = [p for p in phases if problems[p] is None]
    multi = len(phases) > 1
    if not ok:
        worst = max(phases, key=lambda p: (p.slices, p.coverage_mm))
        where = f" (best of {len(phases)} phases: {worst.label})" if multi else ""
        return no(f"{problems[worst]}{where}")
    chosen, why, distance = _choose_phase(ok, sel.phase)
    detail = (
        f"{chosen.slices} slices, {chosen.resolution_mm:g} mm, "
        f"z-coverage {chosen.coverage_mm:.1f} mm"
    )
    if multi:
        detail += f"; {len(phases)} phases, chose {chosen.label}: {why}"
    return Evaluation(
        True,
        f"selected: {detail}",
        phase=chosen,
        phase_distance=distance,
        series_number=series.series_number,
        series_uid=series.series_instance_uid,
    )


def _choose_phase(phases: Sequence[Phase], policy: str | float) -> tuple[Phase, str, float]:
    """(phase, why, distance from the configured percent) for a phase policy."""
    most = max(phases, key=lambda p: (p.slices, p.coverage_mm, -phases.index(p)))
    if policy == "most_complete":
        return most, "the most complete phase", 0.0
    target = float(policy)
    known = [p for p in phases if p.percent is not None]
    if not known:
        return most, f"no phase percent known; chose the most complete (wanted {target:g}%)", 0.0
    best = min(known, key=lambda p: (abs(float(p.percent or 0) - target), -p.slices))
    dist = abs(float(best.percent or 0) - target)
    return best, f"closest to the configured {target:g}%", dist
