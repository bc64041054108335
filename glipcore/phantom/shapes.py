"""Smooth analytic shapes and the painters that put them into an image.

Every shape gives an occupancy in [0, 1] at LPS points: its indicator blurred by a
Gaussian of ``sigma`` mm, computed from an (approximate) signed depth as Phi(depth / sigma);
balls, slabs and streaks use the exact blurred profiles. Because the blur is analytic and in
millimetres, any grid samples the same continuous image.

Coordinates arrive as three broadcastable float32 arrays (x, y, z) so that a z-invariant
shape on an axial grid only costs a 2-D evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.special import erf

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Coords = tuple[Any, Any, Any]
BBox = tuple[F64, F64]
FAR = 1.0e5
_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))


def phi(x: Any) -> Any:
    """Standard normal CDF (keeps float32)."""
    return 0.5 + 0.5 * erf(x * _SQRT_HALF)


def npdf(x: Any) -> Any:
    """Standard normal density."""
    return np.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def box(lo: Sequence[float], hi: Sequence[float]) -> BBox:
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def local_coords(c: Coords, origin: F64, rot: F64) -> tuple[Any, Any, Any]:
    """Coordinates in a frame with ``origin`` and unit row vectors ``rot``."""
    dx = c[0] - np.float32(origin[0])
    dy = c[1] - np.float32(origin[1])
    dz = c[2] - np.float32(origin[2])
    r = rot.astype(np.float32)
    return (
        dx * r[0, 0] + dy * r[0, 1] + dz * r[0, 2],
        dx * r[1, 0] + dy * r[1, 1] + dz * r[1, 2],
        dx * r[2, 0] + dy * r[2, 1] + dz * r[2, 2],
    )


class Shape(Protocol):
    def bbox(self) -> BBox | None: ...

    def occupancy(self, c: Coords, sigma: float) -> Any: ...


class Painter(Protocol):
    cardiac: bool

    def bbox(self) -> BBox | None: ...

    def paint(self, img: F32, c: Coords, sigma: float) -> None: ...


def blend(img: F32, occ: Any, hu: float) -> None:
    """img <- img + occ * (hu - img), in place."""
    img += occ * (np.float32(hu) - img)


def _depth_ellipsoid(q: Sequence[Any], semi: Sequence[float]) -> Any:
    """Approximate signed depth (mm, > 0 inside) of an axis-aligned ellipsoid/ellipse:
    (1 - rho) / |grad rho| with rho the normalised radius."""
    s = sum((qi * np.float32(1.0 / a)) ** 2 for qi, a in zip(q, semi, strict=True))
    g2 = sum((qi * np.float32(1.0 / (a * a))) ** 2 for qi, a in zip(q, semi, strict=True))
    rho = np.sqrt(s)
    grad = np.sqrt(g2 / np.maximum(s, np.float32(1e-12)))
    grad = np.maximum(grad, np.float32(1.0 / max(semi)))
    return (1.0 - rho) / grad


def _rot_bbox(center: F64, rot: F64, semi: Sequence[float]) -> BBox:
    half = np.sqrt(((rot.T * np.asarray(semi)[None, :]) ** 2).sum(axis=1))
    return center - half, center + half


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with centre, principal directions (rows of ``rot``) and semi-axes."""

    center: F64
    rot: F64
    semi: tuple[float, float, float]

    def bbox(self) -> BBox | None:
        return _rot_bbox(self.center, self.rot, self.semi)

    def occupancy(self, c: Coords, sigma: float) -> Any:
        q = local_coords(c, self.center, self.rot)
        return phi(_depth_ellipsoid(q, self.semi) * np.float32(1.0 / sigma))


@dataclass(frozen=True)
class Prism:
    """Vertical elliptic cylinder (z-invariant) with semi-axes along x and y."""

    center: tuple[float, float]
    semi: tuple[float, float]

    def bbox(self) -> BBox | None:
        cx, cy = self.center
        a, b = self.semi
        return box((cx - a, cy - b, -FAR), (cx + a, cy + b, FAR))

    def occupancy(self, c: Coords, sigma: float) -> Any:
        q = (c[0] - np.float32(self.center[0]), c[1] - np.float32(self.center[1]))
        return phi(_depth_ellipsoid(q, self.semi) * np.float32(1.0 / sigma))


@dataclass(frozen=True)
class HalfSpace:
    """Points with (p - point) . normal > 0 (normal a unit vector)."""

    point: F64
    normal: F64

    def bbox(self) -> BBox | None:
        return None

    def occupancy(self, c: Coords, sigma: float) -> Any:
        n = self.normal.astype(np.float32) / np.float32(sigma)
        p = self.point.astype(np.float32)
        return phi((c[0] - p[0]) * n[0] + (c[1] - p[1]) * n[1] + (c[2] - p[2]) * n[2])


@dataclass(frozen=True)
class ZBand:
    """lo < z < hi."""

    lo: float
    hi: float

    def bbox(self) -> BBox | None:
        return box((-FAR, -FAR, self.lo), (FAR, FAR, self.hi))

    def occupancy(self, c: Coords, sigma: float) -> Any:
        s = np.float32(1.0 / sigma)
        return phi((c[2] - np.float32(self.lo)) * s) * phi((np.float32(self.hi) - c[2]) * s)


@dataclass(frozen=True)
class PeriodicSlabs:
    """Horizontal slabs of ``thickness`` every ``period`` mm (centred at ``phase``)."""

    period: float
    phase: float
    thickness: float

    def bbox(self) -> BBox | None:
        return None

    def occupancy(self, c: Coords, sigma: float) -> Any:
        p = np.float32(self.period)
        d = np.abs(np.mod(c[2] - np.float32(self.phase) + 0.5 * p, p) - 0.5 * p)
        s = np.float32(1.0 / sigma)
        half = np.float32(self.thickness / 2.0)
        return phi((half - d) * s) - phi((-half - d) * s)


@dataclass(frozen=True)
class Intersect:
    """Product of occupancies (intersection); the bounding box of the bounded parts."""

    parts: tuple[Any, ...]

    def bbox(self) -> BBox | None:
        boxes = [b for b in (p.bbox() for p in self.parts) if b is not None]
        if not boxes:
            return None
        lo = np.max([b[0] for b in boxes], axis=0)
        hi = np.min([b[1] for b in boxes], axis=0)
        return lo, np.maximum(hi, lo)

    def occupancy(self, c: Coords, sigma: float) -> Any:
        out = self.parts[0].occupancy(c, sigma)
        for p in self.parts[1:]:
            out = out * p.occupancy(c, sigma)
        return out


def chaikin(points: F64, iterations: int = 3) -> F64:
    """Corner-cutting smoothing of a polyline; keeps its end points."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        mid = np.empty((2 * len(q), 3))
        mid[0::2], mid[1::2] = q, r
        p = np.concatenate([p[:1], mid, p[-1:]])
    return p


@dataclass(frozen=True)
class Tube:
    """A tube around a polyline with radius interpolated along each segment."""

    points: F64
    radii: F64

    def bbox(self) -> BBox | None:
        r = float(self.radii.max())
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r

    def depth(self, c: Coords) -> Any:
        best: Any = None
        p = self.points.astype(np.float32)
        for s in range(len(p) - 1):
            a, b = p[s], p[s + 1]
            ab = b - a
            ab2 = float(ab @ ab)
            if ab2 < 1e-12:
                continue
            dx, dy, dz = c[0] - a[0], c[1] - a[1], c[2] - a[2]
            t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) * np.float32(1.0 / ab2), 0.0, 1.0)
            ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
            dist = np.sqrt(ex * ex + ey * ey + ez * ez)
            r0, r1 = np.float32(self.radii[s]), np.float32(self.radii[s + 1])
            d = r0 + (r1 - r0) * t - dist
            best = d if best is None else np.maximum(best, d)
        return best

    def occupancy(self, c: Coords, sigma: float) -> Any:
        return phi(self.depth(c) * np.float32(1.0 / sigma))


@dataclass(frozen=True)
class Ball:
    """A ball; its occupancy is the exact Gaussian-blurred indicator."""

    center: F64
    radius: float

    def bbox(self) -> BBox | None:
        return self.center - self.radius, self.center + self.radius

    def occupancy(self, c: Coords, sigma: float) -> Any:
        x = np.asarray(c[0], np.float64) - self.center[0]
        y = np.asarray(c[1], np.float64) - self.center[1]
        z = np.asarray(c[2], np.float64) - self.center[2]
        r = np.maximum(np.sqrt(x * x + y * y + z * z), 1e-2 * sigma)
        a, b = (self.radius - r) / sigma, (self.radius + r) / sigma
        out = phi(a) + phi(b) - 1.0 - (sigma / r) * (npdf(a) - npdf(b))
        return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass
class Layer:
    """Paint a shape with one intensity."""

    shape: Any
    hu: float
    cardiac: bool = False
    name: str = ""

    def bbox(self) -> BBox | None:
        return self.shape.bbox()  # type: ignore[no-any-return]

    def paint(self, img: F32, c: Coords, sigma: float) -> None:
        blend(img, self.shape.occupancy(c, sigma), self.hu)


@dataclass
class Streaks:
    """Additive streaks in axial planes through an anchor (x, y), present in the slices
    lo < z < hi: a Gaussian ridge across, an exponential decay along."""

    anchor: tuple[float, float]
    z_range: tuple[float, float]
    angles_deg: list[float] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    amplitudes: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)
    cardiac: bool = False

    def bbox(self) -> BBox | None:
        reach = 3.0 * max(self.lengths, default=0.0)
        ax, ay = self.anchor
        return box(
            (ax - reach, ay - reach, self.z_range[0]), (ax + reach, ay + reach, self.z_range[1])
        )

    def paint(self, img: F32, c: Coords, sigma: float) -> None:
        dx = c[0] - np.float32(self.anchor[0])
        dy = c[1] - np.float32(self.anchor[1])
        field_: Any = 0.0
        for ang, w, amp, length in zip(
            self.angles_deg, self.widths, self.amplitudes, self.lengths, strict=True
        ):
            t = math.radians(ang)
            ct, st = np.float32(math.cos(t)), np.float32(math.sin(t))
            across = -st * dx + ct * dy
            along = np.abs(ct * dx + st * dy)
            w_eff = math.sqrt(w * w + sigma * sigma)
            ridge = np.exp(across * across * np.float32(-0.5 / (w_eff * w_eff)))
            field_ = field_ + np.float32(amp * w / w_eff) * ridge * np.exp(
                along * np.float32(-1.0 / length)
            )
        band = ZBand(*self.z_range).occupancy(c, max(sigma, 0.5))
        img += field_ * band
