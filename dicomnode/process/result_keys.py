"""Names of the annulus-sizing and ostium measurements in a result row (``Result.
measurements``), shared by the worker, the outputs, the CSV export and the demo; a light
module, so that the admin commands need not load the DICOM encoders."""

from __future__ import annotations

SIZING_KEYS: tuple[tuple[str, str], ...] = (
    ("annulus_area_mm2", "area_mm2"),
    ("annulus_perimeter_mm", "perimeter_mm"),
    ("annulus_area_diameter_mm", "area_diameter_mm"),
    ("annulus_perimeter_diameter_mm", "perimeter_diameter_mm"),
    ("annulus_min_diameter_mm", "min_diameter_mm"),
    ("annulus_max_diameter_mm", "max_diameter_mm"),
    ("annulus_eccentricity", "eccentricity"),
    ("annulus_bridged_fraction", "bridged_fraction"),
)
"""(result measurement key, :class:`glipcore.sizing.AnnulusSizing` attribute)."""

SIZING_REFUSAL_KEY = "annulus_sizing_refusal"
"""The result measurement that says why the annulus was not sized ("<reason>: <detail>")."""

OSTIUM_NAMES: tuple[str, str] = ("LCO", "RCO")
"""The coronary ostia (left, right), in the order every output lists them."""


def height_key(name: str) -> str:
    """Result measurement key of an ostium's height above the annulus plane (mm), e.g.
    "lco_height_mm"."""
    return f"{name.lower()}_height_mm"


__all__ = ["OSTIUM_NAMES", "SIZING_KEYS", "SIZING_REFUSAL_KEY", "height_key"]
