"""Calcium options of a phantom case: how much valve calcium, and annular calcium at the hinges.

TAVR candidates have calcific aortic stenosis, so a model must see calcium on the leaflets, in
the annulus and right at the hinge points. A case's anatomy, pose, intensities and noise
come from its (seed, index) stream; the calcium options replace only its nodules, drawn on
streams of their own, so a calcified case is its default case with other calcium:

- level ``default``: the nodules of the case's own draw (the cohort of generator 1.0:
  many cases with a little calcium, some with much);
- ``none``: no calcium;
- ``mild``: a few small nodules (0.7-1.8 mm radius, about 1-2 per cusp) on the leaflets and
  the annulus;
- ``heavy``: bulky calcific stenosis, about 4-7 nodules per cusp of 1.0-2.8 mm radius, each
  with 1-3 satellite balls (irregular conglomerates), on the leaflets and the annulus.

These levels keep every nodule at least its radius + 2.5 mm away from the hinge points.
``hinge`` calcium adds 1-2 nodules (1.0-2.5 mm radius) per hinge in the annulus right at it:
the ball's surface lies 0-2 mm from the hinge point (in practice 0.2-2 mm, median about 1:
the nadir is a corner of the lumen, which a ball outside it cannot quite touch) and the ball
stays outside the lumen, so the hinge (the cusp's nadir on the lumen boundary) stays where
the truth says. Every nodule
is 600-1500 HU. Streaks that the default draw anchored on a nodule stay anchored on one (on
nodule ``i mod n`` of the new set), and are dropped when a case has no calcium.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from glipcore.phantom.params import Calcification, PhantomCase, Streak, Vec2
from glipcore.phantom.root import RootGeometry

CALCIUM_LEVELS: tuple[str, ...] = ("default", "none", "mild", "heavy")
"""Calcium levels, from the case's own draw to bulky calcific stenosis."""

CALCIUM_HU: Vec2 = (600.0, 1500.0)
HINGE_CLEARANCE_MM = 2.5
"""Level nodules keep their surface at least this far from every hinge point."""
HINGE_GAP_MM: Vec2 = (0.0, 2.0)
"""Hinge nodules: distance from the hinge point to the ball's surface."""

_LEVEL_STREAM = 101
_HINGE_STREAM = 102


@dataclass(frozen=True)
class CalciumLevel:
    """How a level draws its nodules: the mean count per cusp (drawn once per case between
    these bounds), radii, satellite balls per nodule (inclusive range) and the share of
    nodules in the annulus beside the hinges (the rest sit on the leaflets)."""

    per_cusp: Vec2
    radius_mm: Vec2
    satellites: tuple[int, int]
    annulus_share: float


LEVELS: dict[str, CalciumLevel] = {
    "mild": CalciumLevel((0.7, 2.0), (0.7, 1.8), (0, 1), 0.3),
    "heavy": CalciumLevel((4.0, 7.0), (1.0, 2.8), (1, 3), 0.35),
}


def check_calcium(level: str) -> str:
    """``level`` if it is one of :data:`CALCIUM_LEVELS`; ValueError otherwise."""
    if level not in CALCIUM_LEVELS:
        raise ValueError(f"calcium level must be one of {CALCIUM_LEVELS}, got {level!r}")
    return level


def _hu(rng: np.random.Generator) -> float:
    return float(rng.uniform(*CALCIUM_HU))


def _clear_of_hinges(hinges: np.ndarray, centre: np.ndarray, radius: float) -> bool:
    gap = float(np.linalg.norm(hinges - centre[None, :], axis=1).min()) - radius
    return gap >= HINGE_CLEARANCE_MM


def draw_level(case: PhantomCase, level: str) -> tuple[Calcification, ...]:
    """The nodules of a level for a case (``default``: the case's own), on the level's
    stream of the case's (seed, index)."""
    if check_calcium(level) == "default":
        return case.calcium
    if level == "none":
        return ()
    spec = LEVELS[level]
    rng = np.random.default_rng([case.seed, case.index, _LEVEL_STREAM])
    geo = RootGeometry(case.root, case.valve)
    hinges = geo.hinges_local()
    mean = float(rng.uniform(*spec.per_cusp))
    out: list[Calcification] = []
    for cusp in range(3):
        for _ in range(int(rng.poisson(mean))):
            on_annulus = rng.random() < spec.annulus_share
            for _attempt in range(30):
                if on_annulus:
                    centre = geo.near_hinge_point(cusp, rng, degrees=(10.0, 45.0))
                else:
                    centre = geo.leaflet_point(cusp, rng)
                radius = float(rng.uniform(*spec.radius_mm))
                if _clear_of_hinges(hinges, centre, radius):
                    break
            else:
                continue
            hu = _hu(rng)
            out.append(Calcification(_v3(centre), radius, hu))
            for _k in range(int(rng.integers(spec.satellites[0], spec.satellites[1] + 1))):
                sat = centre + rng.normal(0.0, 0.8 * radius, 3)
                r2 = radius * float(rng.uniform(0.5, 0.9))
                if _clear_of_hinges(hinges, sat, r2):
                    sat_hu = float(np.clip(hu * rng.uniform(0.85, 1.1), *CALCIUM_HU))
                    out.append(Calcification(_v3(sat), r2, sat_hu))
    return tuple(out)


def _sphere(n: int) -> np.ndarray:
    """n roughly even unit vectors (a Fibonacci sphere)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


_SPHERE = _sphere(96)


def outside_lumen(geo: RootGeometry, centre: np.ndarray, radius: float) -> bool:
    """Whether a ball (root-local mm) lies wholly outside the root's lumen (LVOT, sinuses)."""
    pts = centre[None, :] + radius * _SPHERE
    r = np.hypot(pts[:, 0], pts[:, 1])
    theta = np.arctan2(pts[:, 1], pts[:, 0])
    wall = geo.radius(pts[:, 2], theta)
    return bool(np.all(r >= wall))


def _hinge_nodule(
    geo: RootGeometry, hinge: np.ndarray, theta: float, rng: np.random.Generator
) -> Calcification | None:
    """A ball in the annulus outside the lumen, as close to the hinge as its direction from
    the hinge allows (the nadir is a corner of the lumen, so a ball that stays outside it
    keeps about 0.4 x its radius from the hinge when it sits right below and outside it),
    plus a random extra gap favouring small ones, within :data:`HINGE_GAP_MM`."""
    out = np.array([math.cos(theta), math.sin(theta), 0.0])
    along = np.array([-math.sin(theta), math.cos(theta), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    lo, hi = HINGE_GAP_MM
    for _attempt in range(20):
        radius = float(rng.uniform(1.0, 2.5))
        d = out + along * rng.normal(0.0, 0.6) - up * rng.uniform(0.3, 1.5)
        d /= np.linalg.norm(d)
        for gap in np.arange(lo, hi + 1e-9, 0.05):
            if outside_lumen(geo, hinge + (radius + gap) * d, radius):
                gap = float(gap + (hi - gap) * rng.random() ** 3)
                centre = hinge + (radius + gap) * d
                if outside_lumen(geo, centre, radius):
                    return Calcification(_v3(centre), radius, _hu(rng))
                break
    return None


def draw_hinge(case: PhantomCase) -> tuple[Calcification, ...]:
    """Annular nodules touching or next to each hinge point (0-2 mm from its surface),
    outside the lumen, on the hinge stream of the case's (seed, index)."""
    rng = np.random.default_rng([case.seed, case.index, _HINGE_STREAM])
    geo = RootGeometry(case.root, case.valve)
    out: list[Calcification] = []
    for hinge, theta in zip(geo.hinges_local(), geo.centers, strict=True):
        for _ in range(int(rng.integers(1, 3))):
            nodule = _hinge_nodule(geo, hinge, float(theta), rng)
            if nodule is not None:
                out.append(nodule)
    return tuple(out)


def _reanchor(streaks: tuple[Streak, ...], n_calcium: int) -> tuple[Streak, ...]:
    out = []
    for st in streaks:
        if not st.anchor.startswith("calcium:"):
            out.append(st)
        elif n_calcium > 0:
            i = int(st.anchor.split(":")[1]) % n_calcium
            out.append(dataclasses.replace(st, anchor=f"calcium:{i}"))
    return tuple(out)


def with_calcium(case: PhantomCase, level: str = "default", hinge: bool = False) -> PhantomCase:
    """The case with the calcium of ``level`` (plus hinge calcium when asked); ``default``
    without hinge calcium returns the case itself."""
    if check_calcium(level) == "default" and not hinge:
        return case
    calcium = draw_level(case, level) + (draw_hinge(case) if hinge else ())
    scan = dataclasses.replace(case.scan, streaks=_reanchor(case.scan.streaks, len(calcium)))
    return dataclasses.replace(case, calcium=calcium, scan=scan)


def _v3(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))
