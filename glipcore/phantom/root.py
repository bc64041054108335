"""Aortic-root geometry in root-local cylindrical coordinates (r, theta, h).

h is the height above the annulus plane (along the normal), theta the polar angle in that
plane (see :mod:`glipcore.phantom.frame`), r the distance from the root axis.

- The lumen wall is at radius ``R(h, theta)``: the annulus ellipse at h = 0; a slightly
  narrowing LVOT below; above, a blend from the ellipse to the sinotubular junction circle
  plus one bulge per sinus of Valsalva. A sinus's bulge starts on the leaflet's attachment
  line, a U-shaped crown whose lowest point (h = 0, the cusp's centre angle) is the hinge
  point, and fades out at the commissures and the STJ.
- Closed leaflets are thin sheets from the attachment line to the central coaptation
  point; their mid-surface is ``L(rho, dn)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from glipcore.phantom.params import ellipse_axes

if TYPE_CHECKING:
    from glipcore.phantom.params import RootShape, Valve

F = NDArray[np.floating[Any]]
ONSET_EXPONENT = 0.75
"""Sinus bulge profile sin(pi x^q): q < 1 puts the widest point low and makes the nadir a
corner (x is the relative height between the attachment line and the STJ)."""
LVOT_NARROW_MM = 6.0


def _wrap(a: F) -> F:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


class RootGeometry:
    """The analytic root of one case (all lengths mm, angles radians inside)."""

    def __init__(self, root: RootShape, valve: Valve) -> None:
        self.root, self.valve = root, valve
        self.a, self.b = ellipse_axes(root.perimeter_mm, root.axis_ratio)
        self.phi_major = math.radians(root.major_angle_deg)
        c = np.radians(np.asarray(root.cusp_angles_deg, dtype=np.float64))
        if not (c[0] < c[1] < c[2] < c[0] + 2.0 * np.pi):
            raise ValueError(f"cusp angles must increase RCC < LCC < NCC, got {c}")
        self.centers = c
        nxt = np.array([c[1], c[2], c[0] + 2.0 * np.pi])
        prv = np.array([c[2] - 2.0 * np.pi, c[0], c[1]])
        self.hw_plus = (nxt - c) / 2.0
        self.hw_minus = (c - prv) / 2.0
        self.H = root.sinus_height_mm
        self.Hc = root.commissure_height_mm
        self.r_stj = root.stj_diameter_mm / 2.0
        # A sinus diameter runs from the sinus's deepest point to the opposite commissure
        # (the clinical double-oblique measurement), at the height where the bulge peaks.
        h_peak = 0.5 ** (1.0 / ONSET_EXPONENT) * self.H
        opposite = np.array(
            [c[1] + self.hw_plus[1], c[2] + self.hw_plus[2], c[0] + self.hw_plus[0]]
        )
        base_cusp = np.array([float(self.base_r(h_peak, ck)) for ck in c])
        base_opp = np.array([float(self.base_r(h_peak, ck)) for ck in opposite])
        diam = np.asarray(root.sinus_diameters_mm)
        self.bmax = np.maximum(diam - base_opp - base_cusp, 1.5)

    # -- annulus and walls ------------------------------------------------------------

    def annulus_r(self, theta: Any) -> Any:
        """Radius of the annulus ellipse at polar angle theta."""
        psi = theta - self.phi_major
        return self.a * self.b / np.sqrt((self.b * np.cos(psi)) ** 2 + (self.a * np.sin(psi)) ** 2)

    def base_r(self, h: Any, theta: Any) -> Any:
        """Wall radius without the sinus bulges."""
        ra = self.annulus_r(theta)
        t = np.clip(h / self.H, 0.0, 1.0)
        up = ra + (self.r_stj - ra) * (t * t * (3.0 - 2.0 * t))
        tn = np.clip(-h / LVOT_NARROW_MM, 0.0, 1.0)
        down = ra * (1.0 - self.root.lvot_narrowing * tn * tn * (3.0 - 2.0 * tn))
        return np.where(h < 0.0, down, up)

    def sector(self, theta: Any) -> tuple[Any, Any, Any]:
        """For each angle: normalised offset dn in [-1, 1] from its cusp's centre (+-1 at
        the commissures), that side's half-width (rad) and the cusp's bulge amplitude."""
        # Constants take the angles' dtype so that float32 grids stay float32.
        t = (
            np.asarray(theta).dtype.type
            if np.issubdtype(np.asarray(theta).dtype, np.floating)
            else float
        )

        def pick(v: NDArray[np.float64], s1: Any, s2: Any) -> Any:
            return np.where(s2, t(v[2]), np.where(s1, t(v[1]), t(v[0])))

        d = [_wrap(theta - t(ck)) for ck in self.centers]
        a0, a1, a2 = (np.abs(x) for x in d)
        s1 = (a1 < a0) & (a1 <= a2)
        s2 = (a2 < a0) & (a2 < a1)
        dd = np.where(s2, d[2], np.where(s1, d[1], d[0]))
        hw = np.where(dd >= 0.0, pick(self.hw_plus, s1, s2), pick(self.hw_minus, s1, s2))
        bmax = pick(self.bmax, s1, s2)
        return dd / hw, hw, bmax

    def attach_h(self, dn: Any) -> Any:
        """Height of the leaflet attachment line (0 at the nadir, Hc at the commissures)."""
        return self.Hc * np.abs(dn) ** self.root.attach_exponent

    def radius(self, h: Any, theta: Any, sec: tuple[Any, Any, Any] | None = None) -> Any:
        """Lumen wall radius R(h, theta)."""
        return self.radius_and_slope(h, theta, sec)[0]

    def radius_and_slope(
        self, h: Any, theta: Any, sec: tuple[Any, Any, Any] | None = None, step: float = 0.3
    ) -> tuple[Any, Any]:
        """R(h, theta) and its secant slope dR/dh over +-step mm (finite everywhere, unlike
        the derivative at the nadir's corner)."""
        sec = self.sector(theta) if sec is None else sec
        dn, _hw, bmax = sec
        att = self.attach_h(dn)
        inv_span = 1.0 / (self.H - att)
        amp = bmax * np.cos(0.5 * np.pi * dn) ** 2

        def rad(hh: Any) -> Any:
            x = np.clip((hh - att) * inv_span, 0.0, 1.0)
            return self.base_r(hh, theta) + amp * np.sin(np.pi * x**ONSET_EXPONENT)

        r = rad(h)
        slope = (rad(h + step) - rad(h - step)) * (0.5 / step)
        return r, slope

    # -- leaflets ------------------------------------------------------------------

    def leaflet(self, r: Any, theta: Any, sec: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        """Leaflet mid-surface height L, the gradient norm of (h - L) and the radius R_att of
        the attachment line at this angle."""
        dn, hw, _ = sec
        v = self.valve
        att = self.attach_h(dn)
        r_att = self.base_r(att, theta)
        rho = r / r_att
        rc = np.clip(rho, 0.0, 1.0)
        g = np.cos(0.5 * np.pi * dn) ** 2
        sag = v.belly_sag_mm * g
        q = 1.0 - rc
        gam = v.base_exponent
        # Cup-shaped: steep along the wall at the attachment, flatter towards the centre.
        height = att + (v.coaptation_height_mm - att) * q**gam - sag * rc * q
        qs = np.maximum(q, 0.02)
        d_rho = -gam * (v.coaptation_height_mm - att) * qs ** (gam - 1.0) - sag * (1.0 - 2.0 * rc)
        p = self.root.attach_exponent
        d_att = self.Hc * p * np.abs(dn) ** (p - 1.0) * np.sign(dn)
        d_g = -0.5 * np.pi * np.sin(np.pi * dn)
        d_dn = d_att * (1.0 - q**gam) - v.belly_sag_mm * d_g * rc * q
        grad = np.sqrt(1.0 + (d_rho / r_att) ** 2 + (d_dn / (hw * np.maximum(r, 1.0))) ** 2)
        grad = np.minimum(grad, 8.0)
        return height, grad, r_att

    # -- landmarks and placement helpers ------------------------------------------------

    def hinges_local(self) -> NDArray[np.float64]:
        """Hinge points (3, 3) in root-local Cartesian mm, RCC, LCC, NCC."""
        r = self.annulus_r(self.centers)
        return np.stack([r * np.cos(self.centers), r * np.sin(self.centers), 0.0 * r], axis=1)

    def point(self, r: float, theta: float, h: float) -> NDArray[np.float64]:
        return np.array([r * math.cos(theta), r * math.sin(theta), h])

    def wall_point(self, cusp: int, offset: float, h: float) -> tuple[NDArray[np.float64], float]:
        """Point on the lumen wall in cusp ``cusp``'s sinus at ``offset`` (fraction of the
        half-width, signed) and height h; also returns its polar angle."""
        hw = self.hw_plus[cusp] if offset >= 0 else self.hw_minus[cusp]
        theta = float(self.centers[cusp] + offset * hw)
        r = float(self.radius(np.float64(h), np.float64(theta)))
        return self.point(r, theta, h), theta

    def near_hinge_point(
        self, cusp: int, rng: np.random.Generator, degrees: tuple[float, float] = (8.0, 25.0)
    ) -> NDArray[np.float64]:
        """A random calcium site on the annulus beside a hinge, ``degrees`` from it."""
        sign = 1.0 if rng.random() < 0.5 else -1.0
        theta = float(self.centers[cusp] + sign * math.radians(rng.uniform(*degrees)))
        h = float(rng.uniform(-1.5, 2.5))
        r = float(self.radius(np.float64(h), np.float64(theta))) + float(rng.uniform(-0.5, 1.0))
        return self.point(r, theta, h)

    def leaflet_point(self, cusp: int, rng: np.random.Generator) -> NDArray[np.float64]:
        """A random calcium site on the aortic side of a leaflet, biased towards its base."""
        dn = float(rng.uniform(-0.8, 0.8))
        hw = self.hw_plus[cusp] if dn >= 0 else self.hw_minus[cusp]
        theta = float(self.centers[cusp] + dn * hw)
        rho = 1.0 - 0.65 * float(rng.random()) ** 2
        r_att = float(self.base_r(np.float64(self.attach_h(dn)), np.float64(theta)))
        r = rho * r_att
        sec = (np.float64(dn), np.float64(hw), np.float64(self.bmax[cusp]))
        height, _, _ = self.leaflet(np.float64(r), np.float64(theta), sec)
        h = float(height) + 0.5 * self.valve.thickness_mm + float(rng.uniform(0.0, 0.6))
        return self.point(r, theta, h)

    def max_radius(self) -> float:
        """An upper bound of R over the whole root."""
        return float(max(self.a, self.r_stj) + self.bmax.max() + 1.0)
