"""The scene of one case: painters in drawing order, from the torso to the calcium.

Later painters cover earlier ones (each blends its blurred occupancy over what is there), so
the order encodes which tissue wins where shapes overlap: e.g. the root's fat sheath is
drawn over the chambers, which keeps a tissue gap of a few mm around the sinuses and the
annulus whatever the chambers' random sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from glipcore.phantom.frame import Frame, root_frame
from glipcore.phantom.params import PhantomCase
from glipcore.phantom.root import RootGeometry
from glipcore.phantom.shapes import (
    F32,
    F64,
    Ball,
    BBox,
    Coords,
    Ellipsoid,
    HalfSpace,
    Intersect,
    Layer,
    Painter,
    PeriodicSlabs,
    Prism,
    Streaks,
    Tube,
    ZBand,
    blend,
    chaikin,
    local_coords,
    phi,
)

UP = np.array([0.0, 0.0, 1.0])
LV_ROOF_MM = 6.0
VESSELS_PER_LUNG = 80
"""The LV cavity lies this far below the annulus plane or more."""


def _unit(v: Any) -> F64:
    a = np.asarray(v, dtype=np.float64)
    return np.asarray(a / np.linalg.norm(a), dtype=np.float64)


def _grow(semi: tuple[float, float, float], d: float) -> tuple[float, float, float]:
    return (semi[0] + d, semi[1] + d, semi[2] + d)


def _basis(axis: F64) -> F64:
    """Rows (u, v, axis): an orthonormal basis with the given last axis."""
    a = _unit(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = _unit(np.cross(helper, a))
    return np.stack([u, np.cross(a, u), a])


def _tube(
    points: list[F64] | F64, r0: float, r1: float, smooth: int = 3, presmoothed: bool = False
) -> Tube:
    arr = np.asarray(np.stack(list(points)), dtype=np.float64)
    p = arr if presmoothed else chaikin(arr, smooth)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    radii = r0 + (r1 - r0) * s / max(float(s[-1]), 1e-9)
    return Tube(points=p, radii=radii)


@dataclass
class RootPainter:
    """The aortic root with its LVOT, walls, surrounding tissue and leaflets."""

    case: PhantomCase
    frame: Frame
    geo: RootGeometry
    lv_cavity: Intersect
    cardiac: bool = True

    def _extent(self) -> tuple[float, float, float]:
        r = self.case.root
        rmax = self.geo.max_radius() + max(r.septum_mm, r.wall_mm + r.fat_sheath_mm) + 2.0
        return rmax, -(r.lvot_length_mm + 10.0), r.sinus_height_mm + 4.0

    def bbox(self) -> BBox | None:
        rmax, h0, h1 = self._extent()
        corners = np.array(
            [[x, y, z] for x in (-rmax, rmax) for y in (-rmax, rmax) for z in (h0, h1)]
        )
        world = self.frame.to_world(corners)
        return world.min(axis=0), world.max(axis=0)

    def paint(self, img: F32, c: Coords, sigma: float) -> None:
        case, geo = self.case, self.geo
        rs, hu = case.root, case.hu
        lx, ly, h = local_coords(c, self.frame.origin, self.frame.rot)
        r = np.sqrt(lx * lx + ly * ly)
        theta = np.arctan2(ly, lx)
        sec = geo.sector(theta)
        big_r, slope = geo.radius_and_slope(h, theta, sec, step=max(0.3, sigma))
        radial = big_r - r
        s = np.float32(1.0 / sigma)
        # Offsets are radial (walls keep their thickness); the slope only sets the blur
        # width across the sloping sinus floor.
        s_n = s / np.minimum(np.sqrt(1.0 + slope * slope), 3.0)

        def band(lo: float, hi: float) -> Any:
            return phi((h - np.float32(lo)) * s) * phi((np.float32(hi) - h) * s)

        def within(extra: float) -> Any:
            return phi((radial + np.float32(extra)) * s_n)

        top = rs.sinus_height_mm + 3.0
        lvot_end = -(rs.lvot_length_mm + 8.0)
        muscle_lo = -(rs.lvot_length_mm + 2.0)
        rcc = float(geo.centers[0])
        septal = phi(
            (np.cos(theta - np.float32(rcc - math.radians(40.0))) - np.float32(-0.17)) * 7.0
        )

        blend(img, within(rs.wall_mm + rs.fat_sheath_mm) * band(-0.5, top), hu.fat)
        blend(img, within(rs.wall_mm + 3.0) * band(-4.0, 1.5), hu.wall)
        # Septum and mitral curtain wrap the LVOT but never cut into the LV cavity.
        outside_lv = 1.0 - self.lv_cavity.occupancy(c, sigma)
        lvot_band = band(muscle_lo, -1.0) * outside_lv
        blend(img, within(rs.septum_mm) * lvot_band * septal, hu.myocardium)
        blend(img, within(3.5) * lvot_band * (1.0 - septal), hu.wall)
        blend(img, within(rs.wall_mm) * band(-1.0, top), hu.wall)
        blend(img, within(0.0) * band(lvot_end, top), hu.blood)

        height, grad, r_att = geo.leaflet(r, theta, sec)
        d = (h - height) / grad
        half = np.float32(0.5 * case.valve.thickness_mm)
        slab = phi((half - d) * s) - phi((-half - d) * s)
        slab = slab * phi((r_att - r) * s)  # the leaflet ends at its attachment
        blend(img, slab, hu.leaflet)


@dataclass
class Scene:
    """Painters in drawing order, plus the facts the truth and the streaks need."""

    painters: list[Painter]
    frame: Frame
    geo: RootGeometry
    ostia_local: tuple[F64, F64]


def _ostia(case: PhantomCase, geo: RootGeometry) -> tuple[tuple[F64, float], tuple[F64, float]]:
    cor = case.coronaries
    left = geo.wall_point(1, cor.left_offset, cor.left_height_mm)
    right = geo.wall_point(0, cor.right_offset, cor.right_height_mm)
    return left, right


def _body(case: PhantomCase) -> list[Painter]:
    b, hu = case.body, case.hu
    cz = case.pose.annulus_center[2]
    tc, ts = b.torso_center, b.torso_semi
    fat = b.fat_mm
    cavity = Prism(b.cavity_center, b.cavity_semi)
    sx, sy = b.spine_center
    rs = b.spine_radius_mm
    lung_rot = np.eye(3)
    # Laminae and spinous processes are separate per vertebra, offset from the discs.
    arches = PeriodicSlabs(
        b.disc_period_mm, b.disc_phase_mm + 0.5 * b.disc_period_mm, 0.6 * b.disc_period_mm
    )
    out: list[Painter] = [
        Layer(Prism(tc, ts), hu.fat, name="torso"),
        Layer(Prism(tc, (ts[0] - fat, ts[1] - fat)), hu.muscle, name="muscle"),
        Layer(cavity, hu.fat, name="thoracic cavity"),
    ]
    lungs = []
    inner = Prism(b.cavity_center, (b.cavity_semi[0] - 2.0, b.cavity_semi[1] - 2.0))
    for centre in (b.lung_right, b.lung_left):
        ctr = np.array([centre[0], centre[1], cz + centre[2]])
        lungs.append(Intersect((Ellipsoid(ctr, lung_rot, b.lung_semi), inner)))
        out.append(Layer(lungs[-1], hu.lung, name="lung"))
    out += _lung_vessels(case, lungs)
    lc = b.liver_center
    liver = Ellipsoid(np.array([lc[0], lc[1], cz + lc[2]]), np.eye(3), b.liver_semi)
    out.append(Layer(Intersect((liver, cavity)), hu.liver, name="liver"))
    mid_y0 = b.sternum_y + 6.0
    mid_y1 = sy - rs
    out.append(
        Layer(
            Prism((sx + 5.0, 0.5 * (mid_y0 + mid_y1)), (32.0, 0.5 * (mid_y1 - mid_y0))),
            hu.fat,
            name="mediastinum",
        )
    )
    out += [
        Layer(Prism((sx - 30.0, sy + rs + 28.0), (24.0, 28.0)), hu.muscle, name="paraspinal R"),
        Layer(Prism((sx + 30.0, sy + rs + 28.0), (24.0, 28.0)), hu.muscle, name="paraspinal L"),
        Layer(Prism((sx, sy), (rs, rs * 0.9)), hu.bone, name="vertebral cortex"),
        Layer(
            Prism((sx, sy), (rs - 2.0, rs * 0.9 - 2.0)),
            0.45 * hu.bone + 40.0,
            name="vertebral body",
        ),
        Layer(
            Intersect(
                (
                    Prism((sx, sy), (rs + 0.5, rs * 0.9 + 0.5)),
                    PeriodicSlabs(b.disc_period_mm, b.disc_phase_mm, 6.0),
                )
            ),
            85.0,
            name="discs",
        ),
        Layer(
            Intersect((Prism((sx, sy + rs + 11.0), (13.0, 11.0)), arches)),
            hu.bone,
            name="vertebral arch",
        ),
        Layer(Prism((sx, sy + rs + 11.0), (7.0, 6.0)), 15.0, name="spinal canal"),
        Layer(
            Intersect((Prism((sx, sy + rs + 30.0), (5.0, 13.0)), arches)),
            hu.bone,
            name="spinous process",
        ),
        Layer(Prism((tc[0], b.sternum_y), (14.0, 6.0)), hu.bone, name="sternum"),
        Layer(
            Prism((tc[0], b.sternum_y), (11.5, 3.5)), 0.35 * hu.bone + 60.0, name="sternal marrow"
        ),
        Layer(
            Prism(b.desc_aorta, (b.desc_radius_mm + 1.5,) * 2),
            hu.wall,
            name="descending aortic wall",
        ),
        Layer(Prism(b.desc_aorta, (b.desc_radius_mm,) * 2), hu.blood, name="descending aorta"),
        Layer(Prism(b.esophagus, (7.0, 6.0)), hu.muscle, name="oesophagus"),
    ]
    if b.esophagus_air_mm > 0.5:
        out.append(
            Layer(Prism(b.esophagus, (b.esophagus_air_mm,) * 2), -950.0, name="oesophageal air")
        )
    return out


def _lung_vessels(case: PhantomCase, lungs: list[Intersect]) -> list[Painter]:
    """Pulmonary vessels: short contrast-filled branches in each lung, pointing away from
    its hilum. Texture only; drawn from the case's own (seed, index) stream."""
    rng = np.random.default_rng([case.seed, case.index, 3])
    b = case.body
    out: list[Painter] = []
    hu = 0.75 * case.hu.blood
    for lung, centre in zip(lungs, (b.lung_right, b.lung_left), strict=True):
        hilum = np.array(
            [
                0.6 * centre[0] + 0.4 * b.spine_center[0],
                centre[1],
                case.pose.annulus_center[2] + centre[2],
            ]
        )
        semi = np.asarray(b.lung_semi)
        for _ in range(VESSELS_PER_LUNG):
            d = rng.normal(0.0, 1.0, 3)
            d /= np.linalg.norm(d)
            start = hilum + rng.uniform(0.15, 0.85) * semi * d
            end = start + rng.uniform(10.0, 30.0) * _unit(d + rng.normal(0.0, 0.3, 3))
            radius = float(rng.uniform(0.8, 2.5))
            tube = Tube(np.stack([start, end]), np.array([radius, 0.7 * radius]))
            out.append(Layer(Intersect((tube, lung)), hu, name="pulmonary vessel"))
    return out


def _heart(
    case: PhantomCase, frame: Frame, geo: RootGeometry
) -> tuple[list[Painter], dict[str, Any]]:
    h, hu, rs = case.heart, case.hu, case.root
    c0 = frame.origin
    w = frame.normal
    # The LVOT enters the basal end of a prolate LV cavity; the apex points down-left-forward.
    axis = _unit(h.lv_axis)
    rot = _basis(axis)
    lvot_bottom = (
        c0 - (rs.lvot_length_mm + 6.0) * w + 0.5 * h.lv_base_back_mm * frame.direction(180.0)
    )
    lv_c = lvot_bottom + (0.5 * h.lv_length_mm - 6.0) * axis
    apex = lv_c + 0.5 * h.lv_length_mm * axis
    la_c = c0 + np.asarray(h.la_offset)
    ra_c = c0 + np.asarray(h.ra_offset)
    rv_c = lv_c + np.asarray(h.rv_offset)
    env_c = 0.45 * lv_c + 0.35 * c0 + 0.2 * ra_c
    r_s = 0.5 * max(rs.sinus_diameters_mm)
    pa_base = c0 + (r_s + 14.0) * frame.direction(h.pa_angle_deg)
    pa_pts = [
        pa_base - 20.0 * UP,
        pa_base + 8.0 * w,
        pa_base + 8.0 * w + 30.0 * _unit([0.45, 0.55, 0.7]),
        pa_base + 8.0 * w + 30.0 * _unit([0.45, 0.55, 0.7]) + 25.0 * _unit([0.7, 0.6, 0.1]),
    ]
    svc_xy = (ra_c[0] + h.svc_offset[0], ra_c[1] + h.svc_offset[1])
    svc_z0 = ra_c[2] + 0.5 * h.ra_semi[2]
    eye = np.eye(3)
    lv_semi = (h.lv_radius_mm, 0.9 * h.lv_radius_mm, 0.5 * h.lv_length_mm)
    # The cavity stays below the annulus: only the LVOT (drawn with the root) reaches it.
    lv_cavity = Intersect((Ellipsoid(lv_c, rot, lv_semi), HalfSpace(c0 - LV_ROOF_MM * w, -w)))
    myo_semi = _grow(lv_semi, h.lv_wall_mm)
    out: list[Painter] = [
        Layer(Ellipsoid(env_c, eye, h.envelope_semi), hu.fat, True, "pericardial fat"),
        Layer(Ellipsoid(rv_c, eye, _grow(h.rv_semi, 3.5)), hu.myocardium, True, "RV wall"),
        Layer(Ellipsoid(rv_c, eye, h.rv_semi), hu.right_heart, True, "RV"),
        Layer(Ellipsoid(ra_c, eye, _grow(h.ra_semi, 2.5)), hu.myocardium, True, "RA wall"),
        Layer(Ellipsoid(ra_c, eye, h.ra_semi), hu.right_heart, True, "RA"),
        Layer(
            Intersect((Prism(svc_xy, (h.svc_radius_mm,) * 2), ZBand(svc_z0, 1e4))),
            hu.svc,
            False,
            "SVC",
        ),
        Layer(Ellipsoid(la_c, eye, _grow(h.la_semi, 2.5)), hu.myocardium, True, "LA wall"),
        Layer(Ellipsoid(la_c, eye, h.la_semi), hu.blood, True, "LA"),
        Layer(_tube(pa_pts, h.pa_radius_mm + 2.0, h.pa_radius_mm + 2.0), hu.wall, True, "PA wall"),
        Layer(_tube(pa_pts, h.pa_radius_mm, h.pa_radius_mm), hu.pulmonary, True, "PA"),
        Layer(Ellipsoid(lv_c, rot, myo_semi), hu.myocardium, True, "LV myocardium"),
        Layer(lv_cavity, hu.blood, True, "LV"),
    ]
    facts = {"apex": apex, "lv_cavity": lv_cavity, "svc_xy": svc_xy, "svc_z0": svc_z0}
    return out, facts


def _coronaries(
    case: PhantomCase, frame: Frame, geo: RootGeometry, apex: F64
) -> tuple[list[Painter], list[Painter], tuple[F64, F64]]:
    cor = case.coronaries
    (left_l, th_l), (right_l, th_r) = _ostia(case, geo)
    o_l, o_r = frame.to_world(left_l), frame.to_world(right_l)
    rad_l = frame.direction(math.degrees(th_l))
    rad_r = frame.direction(math.degrees(th_r))
    lm_end = o_l + 3.0 * rad_l + cor.lm_length_mm * _unit(rad_l + np.array([0.7, 0.2, -0.1]))
    lm = [o_l - 2.5 * rad_l, o_l + 3.0 * rad_l, lm_end]
    lad1 = lm_end + 10.0 * np.asarray(cor.lad_dir)
    target = apex + np.array([0.0, -15.0, 0.0])
    lad2 = lad1 + 20.0 * _unit(_unit(target - lad1) + 0.5 * np.asarray(cor.lad_dir))
    lad3 = lad2 + 20.0 * _unit(target - lad2)
    lcx1 = lm_end + 10.0 * np.asarray(cor.lcx_dir)
    lcx2 = lcx1 + 22.0 * _unit(np.asarray(cor.lcx_dir) + np.array([0.0, 0.3, -0.6]))
    rca1 = o_r + 4.0 * rad_r
    rca2 = rca1 + 12.0 * np.asarray(cor.rca_dir)
    rca3 = rca2 + 22.0 * np.asarray(cor.rca_down)
    rca4 = rca3 + 20.0 * _unit(np.asarray(cor.rca_down) + np.array([0.2, 0.3, -0.3]))
    tubes = [
        (lm, cor.lm_radius_mm, cor.lm_radius_mm, "LM"),
        ([lm[-2], lm_end, lad1, lad2, lad3], cor.lad_radius_mm, 0.7 * cor.lad_radius_mm, "LAD"),
        ([lm[-2], lm_end, lcx1, lcx2], cor.lcx_radius_mm, 0.75 * cor.lcx_radius_mm, "LCx"),
        (
            [o_r - 2.5 * rad_r, rca1, rca2, rca3, rca4],
            cor.rca_radius_mm,
            0.8 * cor.rca_radius_mm,
            "RCA",
        ),
    ]
    sleeves: list[Painter] = []
    lumens: list[Painter] = []
    r_clear = geo.max_radius() + case.root.wall_mm + case.root.fat_sheath_mm + 4.0
    for pts, r0, r1, name in tubes:
        path = _keep_clear(
            chaikin(np.stack(pts), 3), frame, r_clear, case.root.sinus_height_mm + 8.0
        )
        sleeves.append(
            Layer(
                _tube(path, r0 + 2.5, r1 + 2.5, presmoothed=True), case.hu.fat, True, f"{name} fat"
            )
        )
        lumens.append(Layer(_tube(path, r0, r1, presmoothed=True), case.hu.blood, True, name))
    return sleeves, lumens, (o_l, o_r)


def _keep_clear(path: F64, frame: Frame, r_clear: float, h_top: float, skip_mm: float = 6.0) -> F64:
    """Push a vessel's path (beyond its first ``skip_mm``) out to ``r_clear`` from the root
    axis wherever it runs beside the root (-20 < h < h_top), so that it never touches the
    root's lumen except at its ostium."""
    local = frame.to_local(path)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    r = np.hypot(local[:, 0], local[:, 1])
    push = (arc > skip_mm) & (r < r_clear) & (local[:, 2] > -20.0) & (local[:, 2] < h_top)
    scale = np.where(push, r_clear / np.maximum(r, 1e-6), 1.0)
    local[:, :2] *= scale[:, None]
    return frame.to_world(local)


def _ascending(case: PhantomCase, frame: Frame) -> list[Painter]:
    rs, hu = case.root, case.hu
    w = frame.normal
    start = frame.origin + rs.sinus_height_mm * w
    p1 = start + rs.asc_straight_mm * w
    p2 = p1 + 30.0 * _unit(w + 1.5 * UP + np.asarray(rs.asc_bend))
    p3 = p2 + 90.0 * _unit(UP + np.array([-0.12, 0.08, 0.0]))
    pts = chaikin(np.stack([start, p1, p2, p3]), 3)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    r_stj, r_asc = rs.stj_diameter_mm / 2.0, rs.asc_diameter_mm / 2.0
    radii = r_stj + (r_asc - r_stj) * np.clip(s / 20.0, 0.0, 1.0)
    # The root's own layers reach 3 mm above the STJ; the lumen starts below the wall so that
    # no seam shows where the two overlap.
    return [
        Layer(
            Intersect((Tube(pts, radii + rs.wall_mm), HalfSpace(start + 3.0 * w, w))),
            hu.wall,
            True,
            "ascending aortic wall",
        ),
        Layer(
            Intersect((Tube(pts, radii), HalfSpace(start + 0.5 * w, w))),
            hu.blood,
            True,
            "ascending aorta",
        ),
    ]


def _streaks(case: PhantomCase, frame: Frame, facts: dict[str, Any]) -> list[Painter]:
    groups: dict[str, Streaks] = {}
    for st in case.scan.streaks:
        if st.anchor not in groups:
            if st.anchor == "svc":
                anchor = facts["svc_xy"]
                zr = (float(facts["svc_z0"]), 1e4)
            else:
                cal = case.calcium[int(st.anchor.split(":")[1])]
                p = frame.to_world(np.asarray(cal.center_local))
                anchor = (float(p[0]), float(p[1]))
                zr = (float(p[2]) - cal.radius_mm - 1.0, float(p[2]) + cal.radius_mm + 1.0)
            groups[st.anchor] = Streaks(anchor=anchor, z_range=zr)
        g = groups[st.anchor]
        g.angles_deg.append(st.angle_deg)
        g.widths.append(st.width_mm)
        g.amplitudes.append(st.amplitude_hu)
        g.lengths.append(st.length_mm)
    return list(groups.values())


def build_scene(case: PhantomCase, *, artefacts: bool = True) -> Scene:
    """All painters of a case in drawing order."""
    frame = root_frame(case.pose)
    geo = RootGeometry(case.root, case.valve)
    heart, facts = _heart(case, frame, geo)
    sleeves, lumens, _ = _coronaries(case, frame, geo, facts["apex"])
    calcium: list[Painter] = [
        Layer(Ball(frame.to_world(np.asarray(c.center_local)), c.radius_mm), c.hu, True, "calcium")
        for c in case.calcium
    ]
    painters: list[Painter] = [
        *_body(case),
        *heart,
        *sleeves,
        RootPainter(case, frame, geo, facts["lv_cavity"]),
        *_ascending(case, frame),
        *lumens,
        *calcium,
    ]
    if artefacts:
        painters += _streaks(case, frame, facts)
    (left, _), (right, _) = _ostia(case, geo)
    return Scene(painters=painters, frame=frame, geo=geo, ostia_local=(left, right))
