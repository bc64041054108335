"""Parameters of one phantom case (anatomy, pose, intensities, scan) and their random draw.

Everything a rendering needs is in :class:`PhantomCase`; :func:`random_case` draws one from
the cohort figures in DESIGN.md ("The phantom") with an RNG stream of its own per
(seed, index). Vectors are tuples (hashable, JSON-friendly); lengths are mm, angles degrees,
intensities HU. "Root-local" coordinates are (x, y, z) along (e_ant, e_left, normal): see
:mod:`glipcore.phantom.frame`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from glipcore.phantom.frame import root_frame

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]

QUALITY_GRADES: tuple[str, ...] = ("1", "2", "3-", "3+", "4")
"""The paper's five image-quality grades, worst first."""

NATIVE_SPACING_MM: Vec3 = (0.4, 0.4, 0.5)
"""The scan on which a case's noise SD is specified (i, j, k spacing)."""


@dataclass(frozen=True)
class GradeSpec:
    """What a quality grade means in the phantom: ranges the scan parameters are drawn from.

    ``noise_sd`` is at the native 0.4 x 0.4 x 0.5 mm sampling; ``motion`` is the extra
    Gaussian blur (sigma, mm) of everything that beats; ``streaks`` the number of
    beam-hardening / photon-starvation streaks and ``streak_hu`` their peak amplitude."""

    probability: float
    noise_sd: Vec2
    blood_hu: Vec2
    motion: Vec2
    streaks: tuple[int, int]
    streak_hu: Vec2


GRADES: dict[str, GradeSpec] = {
    "1": GradeSpec(0.06, (48.0, 60.0), (250.0, 320.0), (1.0, 1.8), (6, 12), (120.0, 260.0)),
    "2": GradeSpec(0.22, (38.0, 50.0), (260.0, 380.0), (0.5, 1.1), (3, 8), (50.0, 140.0)),
    "3-": GradeSpec(0.36, (28.0, 40.0), (300.0, 450.0), (0.2, 0.7), (0, 4), (20.0, 70.0)),
    "3+": GradeSpec(0.26, (20.0, 30.0), (350.0, 500.0), (0.0, 0.4), (0, 2), (10.0, 30.0)),
    "4": GradeSpec(0.10, (15.0, 22.0), (430.0, 550.0), (0.0, 0.2), (0, 0), (0.0, 0.0)),
}
"""Grade definitions (probabilities follow the paper's cohort, flattened at the ends)."""


@dataclass(frozen=True)
class Pose:
    """Where the root is and how it is oriented.

    ``tilt_deg`` is the angle of the annulus normal from +z (cranial); ``azimuth_deg`` the
    direction of its horizontal part in the axial plane, from +x (patient left) towards +y
    (posterior): 225 points to the patient's right and anterior."""

    annulus_center: Vec3
    tilt_deg: float
    azimuth_deg: float


@dataclass(frozen=True)
class RootShape:
    """The aortic root in its own frame.

    Polar angles in the annulus plane are measured from the projected anterior direction
    towards the patient's left (so RCC ~ 0, LCC ~ 120, NCC ~ 240 degrees)."""

    perimeter_mm: float
    axis_ratio: float
    major_angle_deg: float
    cusp_angles_deg: Vec3
    sinus_diameters_mm: Vec3
    sinus_height_mm: float
    commissure_height_mm: float
    stj_diameter_mm: float
    asc_diameter_mm: float
    attach_exponent: float
    lvot_narrowing: float
    lvot_length_mm: float
    wall_mm: float
    fat_sheath_mm: float
    septum_mm: float
    asc_straight_mm: float
    asc_bend: Vec3


@dataclass(frozen=True)
class Valve:
    """Closed (diastolic) leaflets: central coaptation height above the nadirs, belly sag
    towards the ventricle, thickness (thickened, as in aortic stenosis) and the exponent of
    the cup profile (< 1: the leaflet rises steeply from its attachment)."""

    coaptation_height_mm: float
    belly_sag_mm: float
    thickness_mm: float
    base_exponent: float


@dataclass(frozen=True)
class Coronaries:
    """Ostia (height above the annulus plane, angular offset within the sinus as a fraction
    of its half-width) and proximal vessels (radii, world-direction jitter)."""

    left_height_mm: float
    left_offset: float
    right_height_mm: float
    right_offset: float
    lm_length_mm: float
    lm_radius_mm: float
    lad_radius_mm: float
    lcx_radius_mm: float
    rca_radius_mm: float
    lad_dir: Vec3
    lcx_dir: Vec3
    rca_dir: Vec3
    rca_down: Vec3


@dataclass(frozen=True)
class Calcification:
    """A calcium ball: centre in root-local mm, radius mm, HU."""

    center_local: Vec3
    radius_mm: float
    hu: float


@dataclass(frozen=True)
class Heart:
    """Chambers around the root. Offsets are LPS mm from the annulus centre."""

    lv_base_back_mm: float
    lv_axis: Vec3
    lv_length_mm: float
    lv_radius_mm: float
    lv_wall_mm: float
    la_offset: Vec3
    la_semi: Vec3
    ra_offset: Vec3
    ra_semi: Vec3
    rv_offset: Vec3
    rv_semi: Vec3
    pa_angle_deg: float
    pa_radius_mm: float
    svc_offset: Vec2
    svc_radius_mm: float
    envelope_semi: Vec3


@dataclass(frozen=True)
class Body:
    """Thorax: torso ellipse, subcutaneous fat and muscle, spine, sternum, lungs, liver,
    descending aorta and oesophagus (LPS mm; the z of lungs and liver is an offset from the
    annulus centre's z)."""

    torso_center: Vec2
    torso_semi: Vec2
    fat_mm: float
    muscle_mm: float
    spine_center: Vec2
    spine_radius_mm: float
    disc_period_mm: float
    disc_phase_mm: float
    sternum_y: float
    cavity_center: Vec2
    cavity_semi: Vec2
    lung_right: Vec3
    lung_left: Vec3
    lung_semi: Vec3
    liver_center: Vec3
    liver_semi: Vec3
    desc_aorta: Vec2
    desc_radius_mm: float
    esophagus: Vec2
    esophagus_air_mm: float


@dataclass(frozen=True)
class Intensities:
    """Tissue intensities (HU)."""

    blood: float
    myocardium: float
    fat: float
    muscle: float
    lung: float
    bone: float
    wall: float
    leaflet: float
    liver: float
    right_heart: float
    pulmonary: float
    svc: float


@dataclass(frozen=True)
class Streak:
    """A streak in the axial plane through an anchor ("svc" or "calcium:<i>")."""

    anchor: str
    angle_deg: float
    width_mm: float
    amplitude_hu: float
    length_mm: float


@dataclass(frozen=True)
class Scan:
    """Acquisition: field-of-view centre, pixel spacing of the full preset, point-spread
    sigma, noise SD at the native sampling, cardiac-motion blur and streaks."""

    fov_center: Vec3
    pixel_spacing_mm: float
    psf_sigma_mm: float
    noise_sd_hu: float
    motion_sigma_mm: float
    streaks: tuple[Streak, ...]


@dataclass(frozen=True)
class PhantomCase:
    """Every parameter of one phantom case; rendering is a pure function of it."""

    seed: int
    index: int
    quality: str
    pose: Pose
    root: RootShape
    valve: Valve
    coronaries: Coronaries
    calcium: tuple[Calcification, ...]
    heart: Heart
    body: Body
    hu: Intensities
    scan: Scan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomCase:
        """Inverse of :meth:`to_dict`."""
        return _build(cls, data)


_T = TypeVar("_T")


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if len(value) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin is types.UnionType:
        return value
    if tp is float:
        return float(value)
    if tp is int:
        return int(value)
    if tp is str:
        return str(value)
    return value


def _build(cls: type[_T], data: dict[str, Any]) -> _T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    missing = names - set(data)
    if missing:
        raise ValueError(f"{cls.__name__}: missing fields {sorted(missing)}")
    kwargs = {n: _convert(hints[n], data[n]) for n in names}
    return cls(**kwargs)


# ----------------------------------------------------------------------------- random draw


def _unit(v: Any) -> Vec3:
    a = np.asarray(v, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


def _v3(v: Any) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def ellipse_axes(perimeter: float, ratio: float) -> tuple[float, float]:
    """Semi-axes (a >= b) of the ellipse with this perimeter (Ramanujan II) and b/a."""
    lam = ((1.0 - ratio) / (1.0 + ratio)) ** 2
    factor = math.pi * (1.0 + ratio) * (1.0 + 3.0 * lam / (10.0 + math.sqrt(4.0 - 3.0 * lam)))
    a = perimeter / factor
    return a, ratio * a


def _grade(rng: np.random.Generator) -> str:
    p = np.array([GRADES[g].probability for g in QUALITY_GRADES])
    return QUALITY_GRADES[int(rng.choice(len(p), p=p / p.sum()))]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _clipped_normal(
    rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float
) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _draw_root(rng: np.random.Generator) -> RootShape:
    perimeter = _clipped_normal(rng, 77.0, 7.0, 60.0, 95.0)
    ratio = _u(rng, 0.8, 0.95)
    d_ann = perimeter / math.pi
    sinus_mean = float(np.clip(d_ann + 4.5 + rng.normal(0.0, 2.0), d_ann + 2.5, 38.0))
    sinus = tuple(sinus_mean * _u(rng, 0.95, 1.05) for _ in range(3))
    stj = float(np.clip(25.7 + 0.6 * (d_ann - 24.5) + rng.normal(0.0, 1.9), 20.0, 32.0))
    stj = min(stj, min(sinus) - 2.0)
    asc = float(np.clip(_clipped_normal(rng, 28.0, 1.3, 25.0, 32.0), stj, 34.0))
    height = _u(rng, 19.0, 22.0)
    # The whole cusp pattern turns about the normal; each cusp jitters on top.
    rot = _u(rng, -35.0, 20.0) + np.array([0.0, 120.0, 240.0]) + rng.uniform(-8.0, 8.0, 3)
    return RootShape(
        perimeter_mm=perimeter,
        axis_ratio=ratio,
        major_angle_deg=_u(rng, 75.0, 105.0),
        cusp_angles_deg=_v3(rot),
        sinus_diameters_mm=_v3(sinus),
        sinus_height_mm=height,
        commissure_height_mm=height - _u(rng, 1.0, 3.0),
        stj_diameter_mm=stj,
        asc_diameter_mm=asc,
        attach_exponent=_u(rng, 1.5, 2.2),
        lvot_narrowing=_u(rng, 0.0, 0.08),
        lvot_length_mm=_u(rng, 14.0, 22.0),
        wall_mm=_u(rng, 1.5, 2.5),
        fat_sheath_mm=_u(rng, 2.0, 4.0),
        septum_mm=_u(rng, 8.0, 13.0),
        asc_straight_mm=_u(rng, 15.0, 25.0),
        asc_bend=_v3(rng.normal(0.0, 0.25, 3)),
    )


def _draw_coronaries(rng: np.random.Generator, root: RootShape) -> Coronaries:
    top = root.sinus_height_mm + 3.0
    return Coronaries(
        left_height_mm=_clipped_normal(rng, 14.0, 3.0, 6.0, top),
        left_offset=_u(rng, -0.35, 0.35),
        right_height_mm=_clipped_normal(rng, 17.0, 3.0, 8.0, top),
        right_offset=_u(rng, -0.35, 0.35),
        lm_length_mm=_u(rng, 6.0, 12.0),
        lm_radius_mm=_u(rng, 1.8, 2.4),
        lad_radius_mm=_u(rng, 1.3, 1.8),
        lcx_radius_mm=_u(rng, 1.2, 1.6),
        rca_radius_mm=_u(rng, 1.5, 2.1),
        lad_dir=_unit(np.array([0.3, -0.8, -0.4]) + rng.normal(0.0, 0.15, 3)),
        lcx_dir=_unit(np.array([0.6, 0.5, -0.3]) + rng.normal(0.0, 0.15, 3)),
        rca_dir=_unit(np.array([-0.6, -0.6, -0.1]) + rng.normal(0.0, 0.15, 3)),
        rca_down=_unit(np.array([-0.5, -0.1, -0.85]) + rng.normal(0.0, 0.1, 3)),
    )


def _draw_calcium(
    rng: np.random.Generator, root: RootShape, valve: Valve
) -> tuple[Calcification, ...]:
    from glipcore.phantom.root import RootGeometry

    geo = RootGeometry(root, valve)
    hinges = geo.hinges_local()
    load = float(rng.uniform(0.0, 1.0) ** 1.5)  # many mild cases, some heavy ones
    out: list[Calcification] = []
    for cusp in range(3):
        n_nodules = int(rng.poisson(0.5 + 5.0 * load))
        for _ in range(n_nodules):
            near_hinge = rng.random() < 0.3
            for _attempt in range(20):
                if near_hinge:
                    centre = geo.near_hinge_point(cusp, rng)
                else:
                    centre = geo.leaflet_point(cusp, rng)
                radius = _u(rng, 0.7, 2.4)
                clear = np.linalg.norm(hinges - centre[None, :], axis=1).min()
                if clear >= radius + 2.5:
                    break
            else:
                continue
            hu = _u(rng, 600.0, 1500.0)
            out.append(Calcification(_v3(centre), radius, hu))
            for _k in range(int(rng.integers(0, 3))):  # irregular nodules: satellite balls
                sat = centre + rng.normal(0.0, 0.8 * radius, 3)
                r2 = radius * _u(rng, 0.5, 0.9)
                if np.linalg.norm(hinges - sat[None, :], axis=1).min() >= r2 + 2.5:
                    out.append(
                        Calcification(
                            _v3(sat), r2, float(np.clip(hu * _u(rng, 0.85, 1.1), 600.0, 1500.0))
                        )
                    )
    return tuple(out)


def _draw_body(rng: np.random.Generator) -> Body:
    spine = (_u(rng, -10.0, 10.0), _u(rng, 20.0, 60.0))
    r_s = _u(rng, 16.0, 21.0)
    fat = _u(rng, 6.0, 28.0)
    muscle = _u(rng, 6.0, 12.0)
    posterior_skin = spine[1] + _u(rng, 65.0, 85.0) + 0.5 * fat
    sternum_back = spine[1] - r_s - _u(rng, 115.0, 140.0)
    anterior_skin = sternum_back - 12.0 - muscle - fat
    semi_y = 0.5 * (posterior_skin - anterior_skin)
    cy = 0.5 * (posterior_skin + anterior_skin)
    semi_x = _u(rng, 150.0, 185.0)
    cx = spine[0] + _u(rng, -6.0, 6.0)
    cav_semi_x = semi_x - fat - muscle - 10.0
    cav_y0, cav_y1 = sternum_back - 2.0, spine[1] + 25.0
    lung_semi = (_u(rng, 55.0, 70.0), _u(rng, 70.0, 90.0), _u(rng, 120.0, 150.0))
    return Body(
        torso_center=(cx, cy),
        torso_semi=(semi_x, semi_y),
        fat_mm=fat,
        muscle_mm=muscle,
        spine_center=spine,
        spine_radius_mm=r_s,
        disc_period_mm=_u(rng, 26.0, 32.0),
        disc_phase_mm=_u(rng, 0.0, 32.0),
        sternum_y=sternum_back - 6.0,
        cavity_center=(cx, 0.5 * (cav_y0 + cav_y1)),
        cavity_semi=(cav_semi_x, 0.5 * (cav_y1 - cav_y0)),
        lung_right=(spine[0] - _u(rng, 70.0, 85.0), spine[1] - _u(rng, 30.0, 45.0), _u(rng, 0, 30)),
        lung_left=(spine[0] + _u(rng, 75.0, 90.0), spine[1] - _u(rng, 30.0, 45.0), _u(rng, 0, 30)),
        lung_semi=lung_semi,
        liver_center=(
            spine[0] - _u(rng, 30.0, 50.0),
            spine[1] - _u(rng, 40.0, 60.0),
            -_u(rng, 95.0, 115.0),
        ),
        liver_semi=(_u(rng, 90.0, 110.0), _u(rng, 70.0, 90.0), _u(rng, 50.0, 60.0)),
        desc_aorta=(spine[0] + _u(rng, 20.0, 30.0), spine[1] - r_s - _u(rng, 6.0, 12.0)),
        desc_radius_mm=_u(rng, 10.0, 13.0),
        esophagus=(spine[0] + _u(rng, -6.0, 6.0), spine[1] - r_s - _u(rng, 8.0, 12.0)),
        esophagus_air_mm=_u(rng, 0.0, 3.0),
    )


def _draw_pose(rng: np.random.Generator, body: Body) -> Pose:
    sx = body.spine_center[0]
    sternum_back = body.sternum_y + 6.0
    centre = (
        sx + _u(rng, -5.0, 20.0),
        sternum_back + _u(rng, 52.0, 66.0),
        _u(rng, -200.0, -100.0),
    )
    return Pose(
        annulus_center=centre,
        tilt_deg=_clipped_normal(rng, 50.0, 9.0, 20.0, 80.0),
        azimuth_deg=_u(rng, 195.0, 255.0),
    )


def _draw_heart(rng: np.random.Generator, root: RootShape) -> Heart:
    r_s = 0.5 * max(root.sinus_diameters_mm)
    la_semi = (_u(rng, 26.0, 34.0), _u(rng, 16.0, 21.0), _u(rng, 20.0, 26.0))
    ra_semi = (_u(rng, 20.0, 26.0), _u(rng, 20.0, 26.0), _u(rng, 25.0, 32.0))
    return Heart(
        lv_base_back_mm=_u(rng, 8.0, 14.0),
        lv_axis=_unit(np.array([0.55, -0.45, -0.7]) + rng.normal(0.0, 0.12, 3)),
        lv_length_mm=_u(rng, 70.0, 90.0),
        lv_radius_mm=_u(rng, 20.0, 26.0),
        lv_wall_mm=_u(rng, 10.0, 15.0),
        la_offset=(_u(rng, 0.0, 14.0), r_s + 6.0 + la_semi[1], _u(rng, -2.0, 10.0)),
        la_semi=la_semi,
        ra_offset=(-(r_s + 7.0 + ra_semi[0]), _u(rng, 5.0, 18.0), _u(rng, -25.0, -8.0)),
        ra_semi=ra_semi,
        rv_offset=(_u(rng, -30.0, -15.0), _u(rng, -35.0, -25.0), _u(rng, 0.0, 10.0)),
        rv_semi=(_u(rng, 30.0, 40.0), _u(rng, 18.0, 25.0), _u(rng, 35.0, 45.0)),
        pa_angle_deg=_u(rng, 35.0, 65.0),
        pa_radius_mm=_u(rng, 11.0, 14.0),
        svc_offset=(_u(rng, 0.0, 8.0), _u(rng, -8.0, 0.0)),
        svc_radius_mm=_u(rng, 8.0, 11.0),
        envelope_semi=(_u(rng, 55.0, 68.0), _u(rng, 45.0, 55.0), _u(rng, 55.0, 68.0)),
    )


def _draw_hu(rng: np.random.Generator, spec: GradeSpec) -> Intensities:
    blood = _u(rng, *spec.blood_hu)
    return Intensities(
        blood=blood,
        myocardium=_u(rng, 80.0, 150.0),
        fat=_u(rng, -150.0, -50.0),
        muscle=_u(rng, 35.0, 65.0),
        lung=_u(rng, -880.0, -820.0),
        bone=_u(rng, 400.0, 1000.0),
        wall=_u(rng, 40.0, 90.0),
        leaflet=_u(rng, 70.0, 150.0),
        liver=_u(rng, 60.0, 120.0),
        right_heart=blood * _u(rng, 0.45, 0.95),
        pulmonary=blood * _u(rng, 0.6, 1.0),
        svc=min(2500.0, blood * _u(rng, 1.3, 3.5)),
    )


def _draw_scan(rng: np.random.Generator, spec: GradeSpec, pose: Pose, n_calcium: int) -> Scan:
    streaks: list[Streak] = []
    for _ in range(int(rng.integers(spec.streaks[0], spec.streaks[1] + 1))):
        use_calcium = n_calcium > 0 and rng.random() < 0.5
        anchor = f"calcium:{int(rng.integers(0, n_calcium))}" if use_calcium else "svc"
        sign = -1.0 if rng.random() < 0.65 else 1.0
        streaks.append(
            Streak(
                anchor=anchor,
                angle_deg=_u(rng, 0.0, 180.0),
                width_mm=_u(rng, 0.8, 2.5),
                amplitude_hu=sign * _u(rng, *spec.streak_hu),
                length_mm=_u(rng, 40.0, 140.0),
            )
        )
    c = pose.annulus_center
    fov = (c[0] + _u(rng, -25.0, 25.0), c[1] + _u(rng, -25.0, 25.0), c[2] + _u(rng, -25.0, 20.0))
    return Scan(
        fov_center=fov,
        pixel_spacing_mm=_u(rng, 0.35, 0.45),
        psf_sigma_mm=_u(rng, 0.35, 0.5),
        noise_sd_hu=_u(rng, *spec.noise_sd),
        motion_sigma_mm=_u(rng, *spec.motion),
        streaks=tuple(streaks),
    )


def random_case(
    seed: int, index: int, *, calcium: str = "default", hinge_calcium: bool = False
) -> PhantomCase:
    """Draw case ``index`` of the cohort ``seed`` (deterministic; one RNG stream per pair).

    ``calcium`` (a level of :data:`glipcore.phantom.calcium.CALCIUM_LEVELS`) and
    ``hinge_calcium`` replace only the case's calcium, drawn on streams of their own:
    everything else equals the default case of the same (seed, index)."""
    from glipcore.phantom.calcium import with_calcium

    case = _random_default_case(seed, index)
    return with_calcium(case, calcium, hinge_calcium)


def _random_default_case(seed: int, index: int) -> PhantomCase:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([int(seed), int(index)])
    quality = _grade(rng)
    spec = GRADES[quality]
    body = _draw_body(rng)
    pose = _draw_pose(rng, body)
    root = _draw_root(rng)
    valve = Valve(
        coaptation_height_mm=_u(rng, 10.0, 14.0),
        belly_sag_mm=_u(rng, 0.5, 2.5),
        thickness_mm=_u(rng, 1.0, 2.2),
        base_exponent=_u(rng, 0.5, 0.7),
    )
    coronaries = _draw_coronaries(rng, root)
    calcium = _draw_calcium(rng, root, valve)
    heart = _draw_heart(rng, root)
    hu = _draw_hu(rng, spec)
    scan = _draw_scan(rng, spec, pose, len(calcium))
    # Sanity: the frame exists for every drawn pose (tilt < 90 degrees).
    root_frame(pose)
    return PhantomCase(
        seed=int(seed),
        index=int(index),
        quality=quality,
        pose=pose,
        root=root,
        valve=valve,
        coronaries=coronaries,
        calcium=calcium,
        heart=heart,
        body=body,
        hu=hu,
        scan=scan,
    )
