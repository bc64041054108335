"""Plausibility gate: each check can fail on its own; the action decides the status."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dicomnode.config import PlausibilityConfig
from dicomnode.process.outputs.measurements import plane_tilt_deg
from dicomnode.process.plausibility import gate

GOOD = {
    "RCC": np.array([0.0, -12.0, 0.0]),
    "LCC": np.array([10.4, 6.0, 0.0]),
    "NCC": np.array([-10.4, 6.0, 0.0]),
}
TILTED = np.array([0.0, -np.sin(np.radians(50)), np.cos(np.radians(50))])
SPREAD = {"RCC": 0.5, "LCC": 0.5, "NCC": 0.5}
CONF = {"RCC": 0.9, "LCC": 0.9, "NCC": 0.9}


def test_tilt() -> None:
    assert abs(plane_tilt_deg(np.array([0, 0, 1.0]))) < 1e-9
    assert abs(plane_tilt_deg(TILTED) - 50) < 1e-9
    assert abs(plane_tilt_deg(-TILTED) - 50) < 1e-9


def test_plausible_prediction_is_ok() -> None:
    r = gate(GOOD, TILTED, SPREAD, CONF, PlausibilityConfig())
    assert r.status == "ok" and r.findings == ()


def test_each_check_flags() -> None:
    cfg = PlausibilityConfig(min_confidence=0.5, geometry_action="flag")
    squeezed = {**GOOD, "LCC": GOOD["RCC"] + np.array([2.0, 0, 0])}
    assert any("RCC-LCC" in f for f in gate(squeezed, TILTED, SPREAD, CONF, cfg).findings)
    axial = gate(GOOD, np.array([0, 0, 1.0]), SPREAD, CONF, cfg)
    assert axial.status == "flagged" and "tilt" in axial.findings[0]
    spread = gate(GOOD, TILTED, {**SPREAD, "NCC": 9.0}, CONF, cfg)
    assert spread.findings == ("NCC: fold models disagree by 9.0 mm (limit 4 mm)",)
    low = gate(GOOD, TILTED, SPREAD, {**CONF, "LCC": 0.2}, cfg)
    assert low.findings == ("LCC: confidence 0.20 below 0.5",)


def test_withhold_action() -> None:
    cfg = PlausibilityConfig(confidence_action="withhold")
    r = gate(GOOD, TILTED, SPREAD, {**CONF, "NCC": 0.1}, cfg)
    assert r.status == "withheld" and len(r.findings) == 1


def test_impossible_geometry_is_withheld_by_default_low_confidence_flagged() -> None:
    cfg = PlausibilityConfig()
    assert (cfg.geometry_action, cfg.confidence_action) == ("withhold", "flag")
    squeezed = {**GOOD, "LCC": GOOD["RCC"] + np.array([2.0, 0, 0])}
    assert gate(squeezed, TILTED, SPREAD, CONF, cfg).status == "withheld"
    axial = gate(GOOD, np.array([0, 0, 1.0]), SPREAD, CONF, cfg)
    assert axial.status == "withheld" and axial.findings == (
        "annulus plane tilt 0.0 deg outside 10-85 deg",
    )
    low = gate(GOOD, TILTED, {**SPREAD, "RCC": 9.0}, {**CONF, "LCC": 0.07}, cfg)
    assert low.status == "flagged" and len(low.findings) == 2
    both = gate(GOOD, np.array([0, 0, 1.0]), SPREAD, {**CONF, "LCC": 0.07}, cfg)
    assert both.status == "withheld" and "tilt" in both.findings[0]  # geometry first


def test_the_old_single_action_is_refused_with_the_new_names() -> None:
    with pytest.raises(ValidationError, match="geometry_action"):
        PlausibilityConfig.model_validate({"action": "flag"})


@pytest.mark.parametrize(
    ("landmarks", "words"),
    [
        ({**GOOD, "LCC": GOOD["RCC"] + np.array([0.2, 0.0, 0.0])}, "RCC and LCC lie on one spot"),
        ({**GOOD, "NCC": 2 * GOOD["LCC"] - GOOD["RCC"]}, "collinear"),
        ({**GOOD, "NCC": np.array([np.nan, 0.0, 0.0])}, "not a finite position"),
    ],
)
def test_degenerate_prediction_is_withheld_whatever_the_actions(
    landmarks: dict[str, np.ndarray], words: str
) -> None:
    cfg = PlausibilityConfig(geometry_action="flag", confidence_action="flag")
    r = gate(landmarks, TILTED, SPREAD, CONF, cfg)
    assert r.status == "withheld" and r.degenerate
    assert words in r.findings[0] and r.findings[0].startswith("degenerate prediction")


def test_no_plane_is_withheld_even_for_a_proper_triangle() -> None:
    r = gate(GOOD, None, SPREAD, {**CONF, "RCC": 0.1}, PlausibilityConfig())
    assert r.status == "withheld" and r.degenerate
    assert r.findings == (
        "degenerate prediction: no annulus plane through the hinge points",
        "RCC: confidence 0.10 below 0.5",
    )
    assert not gate(GOOD, TILTED, SPREAD, CONF, PlausibilityConfig()).degenerate
