"""Ground truth of a case: hinge points, annulus, coronary ostia, quality, measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glipcore.geometry import FloatArray
from glipcore.phantom.frame import root_frame
from glipcore.phantom.params import PhantomCase, ellipse_axes
from glipcore.phantom.root import RootGeometry


@dataclass(frozen=True, eq=False)
class PhantomTruth:
    """Everything known about a case's anatomy, in LPS mm.

    ``landmarks_lps`` (3, 3): RCC, LCC, NCC hinge points (the cusps' nadirs, on the lumen
    boundary). The annulus is the ellipse through them: centre, unit normal (cranial, to the
    patient's right and anterior; equal to the right-hand normal RCC -> LCC -> NCC), unit
    major/minor axis directions and diameters, perimeter, area. ``ostia_lps`` (2, 3): left
    and right coronary ostia (centre of the vessel where it leaves the sinus wall).
    ``measurements``: tilt (deg from axial), sinus/STJ/ascending diameters, sinus height and
    ostium heights above the annulus plane (mm)."""

    landmarks_lps: FloatArray
    annulus_center: FloatArray
    annulus_normal: FloatArray
    annulus_major_axis: FloatArray
    annulus_minor_axis: FloatArray
    annulus_major_mm: float
    annulus_minor_mm: float
    annulus_perimeter_mm: float
    annulus_area_mm2: float
    ostia_lps: FloatArray
    quality: str
    measurements: dict[str, float] = field(default_factory=dict)

    _ARRAYS = (
        "landmarks_lps",
        "annulus_center",
        "annulus_normal",
        "annulus_major_axis",
        "annulus_minor_axis",
        "ostia_lps",
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays become nested lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = np.asarray(v).tolist() if name in self._ARRAYS else v
        out["measurements"] = {k: float(v) for k, v in self.measurements.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomTruth:
        """Inverse of :meth:`to_dict`; raises ValueError naming a missing or bad field."""
        try:
            kwargs: dict[str, Any] = {
                name: np.asarray(data[name], dtype=np.float64) for name in cls._ARRAYS
            }
            for name in (
                "annulus_major_mm",
                "annulus_minor_mm",
                "annulus_perimeter_mm",
                "annulus_area_mm2",
            ):
                kwargs[name] = float(data[name])
            kwargs["quality"] = str(data["quality"])
            kwargs["measurements"] = {
                str(k): float(v) for k, v in dict(data.get("measurements", {})).items()
            }
        except KeyError as e:
            raise ValueError(f"phantom truth: missing field {e.args[0]!r}") from e
        if kwargs["landmarks_lps"].shape != (3, 3) or kwargs["ostia_lps"].shape != (2, 3):
            raise ValueError("phantom truth: landmarks_lps must be 3x3 and ostia_lps 2x3")
        return cls(**kwargs)


def truth_of(case: PhantomCase) -> PhantomTruth:
    """The ground truth of a case, from its analytic anatomy."""
    frame = root_frame(case.pose)
    geo = RootGeometry(case.root, case.valve)
    hinges = frame.to_world(geo.hinges_local())
    a, b = ellipse_axes(case.root.perimeter_mm, case.root.axis_ratio)
    phi = math.radians(case.root.major_angle_deg)
    major = math.cos(phi) * frame.rot[0] + math.sin(phi) * frame.rot[1]
    minor = -math.sin(phi) * frame.rot[0] + math.cos(phi) * frame.rot[1]
    cor = case.coronaries
    left, _ = geo.wall_point(1, cor.left_offset, cor.left_height_mm)
    right, _ = geo.wall_point(0, cor.right_offset, cor.right_height_mm)
    ostia = frame.to_world(np.stack([left, right]))
    normal = frame.normal
    measurements = {
        "tilt_deg": math.degrees(math.acos(max(-1.0, min(1.0, float(normal[2]))))),
        "sinus_diameter_rcc_mm": case.root.sinus_diameters_mm[0],
        "sinus_diameter_lcc_mm": case.root.sinus_diameters_mm[1],
        "sinus_diameter_ncc_mm": case.root.sinus_diameters_mm[2],
        "sinus_height_mm": case.root.sinus_height_mm,
        "stj_diameter_mm": case.root.stj_diameter_mm,
        "ascending_diameter_mm": case.root.asc_diameter_mm,
        "left_ostium_height_mm": cor.left_height_mm,
        "right_ostium_height_mm": cor.right_height_mm,
    }
    return PhantomTruth(
        landmarks_lps=hinges,
        annulus_center=np.asarray(frame.origin, dtype=np.float64),
        annulus_normal=np.asarray(normal, dtype=np.float64),
        annulus_major_axis=np.asarray(major, dtype=np.float64),
        annulus_minor_axis=np.asarray(minor, dtype=np.float64),
        annulus_major_mm=2.0 * a,
        annulus_minor_mm=2.0 * b,
        annulus_perimeter_mm=case.root.perimeter_mm,
        annulus_area_mm2=math.pi * a * b,
        ostia_lps=ostia,
        quality=case.quality,
        measurements=measurements,
    )
