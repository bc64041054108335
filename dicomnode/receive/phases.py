"""A series' cardiac phases: the instance columns selection reads, and their grouping into
phases (instances at the same slice position told apart by a phase attribute)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.receive.series_facts import PHASE_ATTRIBUTES, phase_value_str

POSITION_DECIMALS = 2  # positions equal to 0.01 mm are the same slice position


@dataclass(frozen=True)
class InstanceInfo:
    """The columns of one instance that selection reads."""

    id: int
    sop_class_uid: str
    image_type: str | None
    orientation: list[float] | None
    slice_positions: list[float] | None
    slice_thickness: float | None
    acquisition_number: int | None = None
    temporal_position_index: int | None = None
    trigger_time: float | None = None
    cardiac_phase_percent: float | None = None
    nominal_interval: float | None = None


@dataclass(frozen=True)
class Phase:
    """One phase of a series: its instances and slice positions (mm along the normal)."""

    key: str | None
    value: str | None
    percent: float | None
    instance_ids: tuple[int, ...]
    positions: tuple[float, ...]
    thickness: float | None

    @property
    def label(self) -> str:
        if self.key is None:
            return "single phase"
        attr = dict(PHASE_ATTRIBUTES)[self.key]
        pct = f" ({self.percent:g}% R-R)" if self.percent is not None else ""
        return f"{attr}={self.value}{pct}"

    @property
    def slices(self) -> int:
        return len(self.positions)

    @property
    def coverage_mm(self) -> float:
        return self.positions[-1] - self.positions[0] if self.positions else 0.0

    @property
    def spacing_mm(self) -> float | None:
        if len(self.positions) < 2:
            return None
        gaps = [b - a for a, b in zip(self.positions, self.positions[1:], strict=False)]
        return float(statistics.median(gaps))

    @property
    def resolution_mm(self) -> float:
        """The coarser of slice thickness and slice spacing (what 'thin slices' means)."""
        vals = [v for v in (self.thickness, self.spacing_mm) if v is not None]
        return max(vals) if vals else float("inf")


def split_phases(instances: Sequence[InstanceInfo]) -> list[Phase] | str:
    """Group instances into phases; a reason string when positions repeat and no phase
    attribute separates them (or when geometry is missing)."""
    slots: list[tuple[InstanceInfo, float]] = []
    for inst in instances:
        if not inst.slice_positions:
            return "an instance lacks ImagePositionPatient/ImageOrientationPatient"
        slots.extend((inst, round(p, POSITION_DECIMALS)) for p in inst.slice_positions)

    def thickness(members: Sequence[InstanceInfo]) -> float | None:
        vals = [m.slice_thickness for m in members if m.slice_thickness is not None]
        return float(statistics.median(vals)) if vals else None

    def make(key: str | None, value: Any, members: list[tuple[InstanceInfo, float]]) -> Phase:
        insts = list({m.id: m for m, _ in members}.values())
        percent: float | None = None
        if key == "cardiac_phase_percent":
            percent = float(value)
        elif key == "trigger_time":
            rr = [m.nominal_interval for m in insts if m.nominal_interval]
            if rr:
                percent = round(100.0 * float(value) / float(statistics.median(rr)), 1)
        return Phase(
            key=key,
            value=None if key is None else phase_value_str(value),
            percent=percent,
            instance_ids=tuple(sorted(m.id for m in insts)),
            positions=tuple(sorted(p for _, p in members)),
            thickness=thickness(insts),
        )

    positions = [p for _, p in slots]
    if len(set(positions)) == len(positions):
        return [make(None, None, slots)]
    for key, _attr in PHASE_ATTRIBUTES:
        values = [getattr(inst, key) for inst, _ in slots]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        groups: dict[Any, list[tuple[InstanceInfo, float]]] = {}
        for (inst, p), v in zip(slots, values, strict=True):
            groups.setdefault(v, []).append((inst, p))
        if all(len({p for _, p in g}) == len(g) for g in groups.values()):
            return [make(key, v, g) for v, g in sorted(groups.items())]
    return (
        "several instances at the same position and no phase attribute "
        f"({', '.join(a for _, a in PHASE_ATTRIBUTES)}) separates them"
    )
