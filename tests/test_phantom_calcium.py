"""Calcium options of the phantom: default cases unchanged, own random streams, the levels'
nodules and the hinge calcium where they are meant to be."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from glipcore.geometry import ijk_to_lps
from glipcore.phantom import (
    REPRODUCES_DEFAULT_COHORTS_OF,
    generate,
    grid_for,
    random_case,
    render,
    truth_of,
)
from glipcore.phantom.calcium import CALCIUM_HU, HINGE_CLEARANCE_MM, outside_lumen
from glipcore.phantom.frame import root_frame
from glipcore.phantom.params import PhantomCase
from glipcore.phantom.root import RootGeometry

SEED = 77
N = 40


def cohort(**options: object) -> list[PhantomCase]:
    return [random_case(SEED, i, **options) for i in range(N)]  # type: ignore[arg-type]


DEFAULT = cohort()
HEAVY = cohort(calcium="heavy")
HEAVY_HINGE = cohort(calcium="heavy", hinge_calcium=True)


def without_calcium(case: PhantomCase) -> PhantomCase:
    return dataclasses.replace(
        case,
        calcium=(),
        scan=dataclasses.replace(
            case.scan, streaks=tuple(s for s in case.scan.streaks if s.anchor == "svc")
        ),
    )


def volume_mm3(case: PhantomCase) -> float:
    return sum(4.0 / 3.0 * np.pi * c.radius_mm**3 for c in case.calcium)


def hinge_gaps(case: PhantomCase) -> np.ndarray:
    """(nodules, 3): distance from each hinge point to each nodule's surface."""
    hinges = RootGeometry(case.root, case.valve).hinges_local()
    centres = np.array([c.center_local for c in case.calcium]).reshape(-1, 3)
    radii = np.array([c.radius_mm for c in case.calcium])
    return np.linalg.norm(centres[:, None, :] - hinges[None, :, :], axis=2) - radii[:, None]


def test_default_options_are_the_default_case_bit_for_bit() -> None:
    assert random_case(SEED, 3, calcium="default") == random_case(SEED, 3)
    a, ta = generate(SEED, 3, "fast")
    b, tb = generate(SEED, 3, "fast", calcium="default", hinge_calcium=False)
    assert np.array_equal(a.array, b.array) and ta.to_dict() == tb.to_dict()


@pytest.mark.parametrize(
    "options",
    [{"calcium": "none"}, {"calcium": "mild"}, {"calcium": "heavy"}, {"hinge_calcium": True}],
    ids=str,
)
def test_options_change_only_the_calcium(options: dict[str, object]) -> None:
    for i, base in enumerate(DEFAULT[:10]):
        case = random_case(SEED, i, **options)  # type: ignore[arg-type]
        assert without_calcium(case) == without_calcium(base)
        assert case.calcium != base.calcium
        # Streaks that followed a nodule follow one of the new nodules (none without any).
        for st in case.scan.streaks:
            if st.anchor != "svc":
                assert int(st.anchor.split(":")[1]) < len(case.calcium)
        assert len(case.scan.streaks) <= len(base.scan.streaks)


def test_noise_and_anatomy_pixels_equal_the_default_case_away_from_calcium() -> None:
    base, heavy = DEFAULT[1], HEAVY_HINGE[1]
    affine, shape = grid_for(base, "fast")
    a = render(base, affine, shape, noise=True, artefacts=False)
    b = render(heavy, affine, shape, noise=True, artefacts=False)
    changed = a != b
    assert changed.sum() > 50  # the calcium shows
    # Every changed voxel lies within a few blur widths of a nodule of either case.
    frame = root_frame(base.pose)
    nodules = [
        (frame.to_world(np.asarray(c.center_local)), c.radius_mm)
        for c in base.calcium + heavy.calcium
    ]
    zyx = np.argwhere(changed)
    pts = ijk_to_lps(affine, zyx[:, ::-1].astype(float))
    gap = np.min([np.linalg.norm(pts - c, axis=1) - r for c, r in nodules], axis=0)
    assert gap.max() < 6.0


def test_levels_order_the_calcium_burden() -> None:
    burden = {
        name: np.median([volume_mm3(c) for c in cases])
        for name, cases in (
            ("none", cohort(calcium="none")),
            ("mild", cohort(calcium="mild")),
            ("default", DEFAULT),
            ("heavy", HEAVY),
        )
    }
    assert burden["none"] == 0.0
    assert 0.0 < burden["mild"] < burden["default"] < burden["heavy"] / 4.0
    counts = np.array([len(c.calcium) for c in HEAVY])
    assert np.median(counts) >= 30 and counts.std() > 3.0  # many nodules, drawn per case


def test_level_nodules_keep_clear_of_the_hinges_and_hinge_nodules_touch_them() -> None:
    for base, heavy, both in zip(DEFAULT, HEAVY, HEAVY_HINGE, strict=True):
        for case in (base, heavy):
            if case.calcium:
                assert hinge_gaps(case).min() >= HINGE_CLEARANCE_MM - 1e-9
        # Hinge calcium comes on its own stream: added after the level's, which stay.
        assert both.calcium[: len(heavy.calcium)] == heavy.calcium
        added = dataclasses.replace(both, calcium=both.calcium[len(heavy.calcium) :])
        gaps = hinge_gaps(added)
        assert (gaps.min(axis=1) >= 0.0).all() and (gaps.min(axis=1) <= 2.0).all()
        assert (gaps.min(axis=0) <= 2.0).all()  # every hinge has one
        geo = RootGeometry(both.root, both.valve)
        for c in added.calcium:
            assert outside_lumen(geo, np.asarray(c.center_local), c.radius_mm)
    for case in HEAVY_HINGE:
        hu = np.array([c.hu for c in case.calcium])
        assert hu.min() >= CALCIUM_HU[0] and hu.max() <= CALCIUM_HU[1]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="calcium level"):
        random_case(SEED, 0, calcium="extreme")


# sha256 over repr(random_case) and truth.json of cases 0-7 of seeds 1000 (the shipped
# model's training cohort) and 424242 (the held-out set), computed with generator 1.0.
DEFAULT_COHORT_FINGERPRINT_1_0 = "ba07d70e93131f33e82b7fdc88a52e9794908b5f9e386ccb81d3b9c1f9df1dad"


def test_default_cohorts_are_those_of_every_version_it_claims_to_reproduce() -> None:
    h = hashlib.sha256()
    for seed in (1000, 424242):
        for i in range(8):
            case = random_case(seed, i)
            h.update(repr(case).encode())
            h.update(json.dumps(truth_of(case).to_dict(), sort_keys=True).encode())
    assert "aortic-root-phantom/1.0" in REPRODUCES_DEFAULT_COHORTS_OF
    assert h.hexdigest() == DEFAULT_COHORT_FINGERPRINT_1_0
