"""Key images any PACS viewer shows: reformats of the CT with the hinge points drawn.

Three views, each ``size_px`` square over ``fov_mm``, centred on the annulus plane origin,
window W 800 / L 200:

- ``annulus-plane``: the oblique plane through the predicted annulus, seen from the
  ventricle (cranially, like an axial slice seen from the feet): image right is the
  patient's left projected onto the plane, image down completes a right-handed frame
  (right x down = plane normal);
- ``root-long-axis-1`` / ``root-long-axis-2``: two orthogonal planes containing the root
  axis (the plane normal), image up = cranial along the axis; the first also contains the
  RCC hinge point, the second is perpendicular to it; image right leans to the patient's
  left resp. posterior, as coronal and sagittal images do. The annulus plane shows as a
  dashed line;
- ``ostium-LCO`` / ``ostium-RCO`` (when the model predicts the coronary ostia): a long-axis
  view containing the root axis and that ostium (image right towards the ostium, up =
  cranial), with the ostium, its height above the annulus plane drawn as a line along the
  plane normal, and the value.

The annulus lumen contour (when sized) is drawn on the annulus-plane view in cyan.

Hinge points are drawn in their SEG colours (RCC red, LCC green, NCC blue) and named; a
point more than 2 mm off a view's plane is drawn hollow with its distance. A caption band
below the image (so it never hides anatomy) is burned in: model and version, coplanar C-arm
view, the annulus sizing (or why it was refused), the ostium heights, "RESEARCH USE ONLY",
"PHANTOM-TRAINED MODEL" when so, and every plausibility warning.
Each view is stored as an RGB Secondary Capture image (BurnedInAnnotation YES) in the
key-image series, with a PNG copy.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from scipy.ndimage import map_coordinates

from dicomnode.process.outputs.common import (
    SERIES_NUMBERS,
    mark_node_output,
    series_description,
    software_versions,
)
from dicomnode.process.outputs.context import (
    LANDMARK_NAMES,
    OSTIUM_LABELS,
    OSTIUM_NAMES,
    OutputContext,
    OutputError,
)
from dicomnode.process.outputs.measurements import coplanar_view, ostium_heights_mm

KIND = "keyimage"
WINDOW_WIDTH = 800.0
WINDOW_LEVEL = 200.0
IN_PLANE_MM = 2.0
OUTSIDE_HU = -1024.0
COLOURS = {"RCC": "#e62828", "LCC": "#28c83c", "NCC": "#3c6ef0"}
OSTIUM_COLOUR = "#ff9a1f"
CONTOUR_COLOUR = "#00e5ff"
Vec = NDArray[np.float64]


@dataclass(frozen=True)
class KeyImage:
    """One key image: the DICOM object, a PNG copy and the view's name."""

    dataset: pydicom.Dataset
    png: bytes
    name: str


@dataclass(frozen=True)
class View:
    """An oblique view: pixel (row r, col c) lies at
    centre + (c - (n-1)/2) * spacing * right + (r - (n-1)/2) * spacing * down."""

    name: str
    title: str
    centre: Vec
    right: Vec
    down: Vec

    @property
    def normal(self) -> Vec:
        """Into-the-screen direction (right x down)."""
        return np.cross(self.right, self.down)


def _unit(v: Vec) -> Vec:
    return v / float(np.linalg.norm(v))


def _in_plane(v: Vec, n: Vec) -> Vec | None:
    p = v - float(v @ n) * n
    length = float(np.linalg.norm(p))
    return p / length if length > 1e-6 else None


def views(ctx: OutputContext) -> list[View]:
    """The views of a result: three, plus one per predicted ostium (see the module
    docstring)."""
    n, o = ctx.plane_normal, ctx.plane_origin
    e1 = _in_plane(np.array([1.0, 0.0, 0.0]), n)
    if e1 is None:  # a sagittal annulus: posterior is in the plane
        e1 = _unit(np.array([0.0, 1.0, 0.0]) - float(n[1]) * n)
    e2 = _unit(np.cross(n, e1))
    a = _in_plane(ctx.landmarks_lps["RCC"] - o, n)
    a = e1 if a is None else (a if a[0] >= 0 else -a)  # keep the patient's left on the right
    b = _unit(np.cross(n, a))
    b = b if b[1] >= 0 else -b  # keep posterior on the right, as sagittal images do
    out = [
        View("annulus-plane", "Annulus plane (from LV)", o, e1, e2),
        View("root-long-axis-1", "Root long axis via RCC", o, a, -n),
        View("root-long-axis-2", "Root long axis, orthogonal", o, b, -n),
    ]
    for name in OSTIUM_NAMES:
        if name in ctx.ostia_lps:
            r = _in_plane(ctx.ostia_lps[name] - o, n)
            title = f"Root long axis via {OSTIUM_LABELS[name]}"
            out.append(View(f"ostium-{name}", title, o, e1 if r is None else r, -n))
    return out


def reformat(ctx: OutputContext, view: View, size_px: int, fov_mm: float) -> NDArray[np.float64]:
    """HU image (size_px x size_px) of ``view``, trilinear; outside the CT is air."""
    spacing = fov_mm / size_px
    offsets = (np.arange(size_px) - (size_px - 1) / 2.0) * spacing
    grid = (
        view.centre[None, None, :]
        + offsets[None, :, None] * view.right[None, None, :]
        + offsets[:, None, None] * view.down[None, None, :]
    )
    ijk = ctx.volume.to_ijk(grid.reshape(-1, 3))
    coords = ijk[:, ::-1].T  # (k, j, i) rows for the (Z, Y, X) array
    values = map_coordinates(
        np.asarray(ctx.volume.array), coords, order=1, mode="constant", cval=OUTSIDE_HU
    )
    return np.asarray(values, dtype=np.float64).reshape(size_px, size_px)


def orientation_letters(direction: Vec) -> str:
    """Patient-orientation letters of a direction, strongest first (e.g. "LP", "FA")."""
    letters: list[str] = []
    for axis in np.argsort(-np.abs(direction)):
        value = float(direction[axis])
        if abs(value) >= 0.25 or not letters:
            letters.append(("RL", "AP", "FH")[axis][value > 0])
    return "".join(letters[:3])


def caption_lines(ctx: OutputContext) -> list[str]:
    """Burned-in caption: model, coplanar view, annulus sizing, ostium heights, research
    use, phantom, warnings."""
    lines = [
        f"Model {ctx.model_name} {ctx.model_version}",
        f"Coplanar view {coplanar_view(ctx.plane_normal).label()}",
    ]
    s = ctx.sizing
    if s is not None:
        lines.append(
            f"Annulus area {s.area_mm2:.0f} mm² perimeter {s.perimeter_mm:.1f} mm; "
            f"D area {s.area_diameter_mm:.1f} / perim {s.perimeter_diameter_mm:.1f} / "
            f"min {s.min_diameter_mm:.1f} / max {s.max_diameter_mm:.1f} mm; "
            f"eccentricity {s.eccentricity:.2f}"
        )
    elif ctx.sizing_refusal is not None:
        lines.append(f"Annulus sizing refused: {ctx.sizing_refusal}")
    heights = ostium_heights_mm(ctx.ostia_lps, ctx.plane_origin, ctx.plane_normal)
    if heights:
        lines.append(
            "Ostium height above annulus (to its centre): "
            + ", ".join(f"{n} {h:.1f} mm" for n, h in heights.items())
        )
    lines.append("RESEARCH USE ONLY")
    if ctx.trained_on_phantom:
        lines.append("PHANTOM-TRAINED MODEL")
    lines += [f"WARNING: {w}" for w in ctx.warnings]
    return lines


def _to_pixel(view: View, point: Vec, size_px: int, fov_mm: float) -> tuple[float, float, float]:
    """(column, row, out-of-plane mm) of an LPS point in ``view``."""
    d = point - view.centre
    scale = size_px / fov_mm
    half = (size_px - 1) / 2.0
    return (
        half + float(d @ view.right) * scale,
        half + float(d @ view.down) * scale,
        float(d @ view.normal),
    )


def _label_offsets(
    view: View, pix: dict[str, tuple[float, float, float]], scale: float
) -> dict[str, tuple[float, float]]:
    """Label offsets in points: away from the ring's centre in the annulus view; stacked
    above the (edge-on) annulus line in the long-axis views, where the points share a row."""
    if view.name == "annulus-plane":
        centre = np.mean([p[:2] for p in pix.values()], axis=0)
        out = {}
        for name, (col, row, _) in pix.items():
            d = np.array([col, row]) - centre
            d = d / max(float(np.linalg.norm(d)), 1e-6)
            out[name] = (16 * scale * float(d[0]), -16 * scale * float(d[1]))
        return out
    order = sorted(pix, key=lambda k: pix[k][0])
    return {name: (4 * scale, (14 + 14 * i) * scale) for i, name in enumerate(order)}


def _caption_band(lines: list[str], size: int) -> int:
    """Height in pixels of the caption band for ``lines``."""
    line_px = 9.0 * size / 512.0 * 100.0 / 72.0 * 1.3
    return math.ceil(len(lines) * line_px + 0.03 * size)


def render(
    ctx: OutputContext, view: View, hu: NDArray[np.float64], fov_mm: float
) -> NDArray[np.uint8]:
    """RGB image: ``hu`` (size x size) with hinge points, names and orientation drawn, over
    a caption band; the result has size columns and size + band rows."""
    size = hu.shape[0]
    scale = size / 512.0
    font = 9.0 * scale
    wrap = max(20, int(size / (0.62 * font * 100.0 / 72.0)))
    lines = [w for line in caption_lines(ctx) for w in textwrap.wrap(line, wrap) or [""]]
    band = _caption_band(lines, size)
    height = size + band
    fig = Figure(figsize=(size / 100.0, height / 100.0), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, band / height, 1.0, size / height))
    ax.set_axis_off()
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2.0
    ax.imshow(hu, cmap="gray", vmin=low, vmax=low + WINDOW_WIDTH, interpolation="nearest")
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    pix = {n: _to_pixel(view, ctx.landmarks_lps[n], size, fov_mm) for n in LANDMARK_NAMES}
    line = {"ls": "--", "lw": 1.0 * scale, "color": "yellow", "alpha": 0.7}
    if view.name == "annulus-plane":
        ring = [pix[n][:2] for n in (*LANDMARK_NAMES, LANDMARK_NAMES[0])]
        ax.plot(*zip(*ring, strict=True), **line)
        _draw_contour(ax, ctx, view, size, fov_mm, scale)
    else:  # the annulus plane seen edge-on: the row through the centre
        half = (size - 1) / 2.0
        ax.plot([0, size - 1], [half, half], **line)
    if view.name.startswith("ostium-"):
        _draw_ostium(ax, ctx, view, view.name.removeprefix("ostium-"), size, fov_mm, scale)
    offsets = _label_offsets(view, pix, scale)
    for name, (col, row, off) in pix.items():
        inside = abs(off) <= IN_PLANE_MM
        colour = COLOURS[name]
        ax.plot(col, row, marker="o", ms=7 * scale, mew=1.8 * scale, color=colour,
                mfc=colour if inside else "none")  # fmt: skip
        ax.annotate(
            name if inside else f"{name} ({off:+.0f} mm)",
            (col, row),
            xytext=offsets[name],
            textcoords="offset points",
            color=colour,
            fontsize=font * 1.1,
            fontweight="bold",
            ha="center" if view.name == "annulus-plane" else "left",
            va="center" if view.name == "annulus-plane" else "bottom",
            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.8 * scale, "alpha": 0.8},
        )
    _orientation(ax, view, size, font)
    box = {"facecolor": "black", "alpha": 0.6, "pad": 2.0 * scale, "edgecolor": "none"}
    ax.text(
        0.01 * size, 0.01 * size, f"{view.title}\nW {WINDOW_WIDTH:g} L {WINDOW_LEVEL:g}",
        color="white", fontsize=font, va="top", ha="left", bbox=box,
    )  # fmt: skip
    fig.text(
        0.01, (band - 0.015 * size) / height, "\n".join(lines),
        color="yellow", fontsize=font, va="top", ha="left", linespacing=1.2,
    )  # fmt: skip
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def _draw_contour(
    ax: Any, ctx: OutputContext, view: View, size: int, fov_mm: float, scale: float
) -> None:
    """The annulus lumen contour (closed), when sized."""
    if ctx.sizing is None:
        return
    pts = [_to_pixel(view, p, size, fov_mm)[:2] for p in ctx.sizing.contour_lps]
    cols, rows = zip(*[*pts, pts[0]], strict=True)
    ax.plot(cols, rows, "-", lw=1.4 * max(scale, 0.75), color=CONTOUR_COLOUR, alpha=0.9)


def _draw_ostium(
    ax: Any, ctx: OutputContext, view: View, name: str, size: int, fov_mm: float, scale: float
) -> None:
    """The ostium, and its height above the annulus plane as a line along the normal."""
    point = ctx.ostia_lps[name]
    height = ostium_heights_mm({name: point}, ctx.plane_origin, ctx.plane_normal)[name]
    foot = point - height * ctx.plane_normal
    (c0, r0, off), (c1, r1, _) = (_to_pixel(view, p, size, fov_mm) for p in (point, foot))
    ax.plot([c0, c1], [r0, r1], "-", lw=1.2 * scale, color=OSTIUM_COLOUR)
    inside = abs(off) <= IN_PLANE_MM
    ax.plot(c0, r0, marker="s", ms=7 * scale, mew=1.8 * scale, color=OSTIUM_COLOUR,
            mfc=OSTIUM_COLOUR if inside else "none")  # fmt: skip
    ax.annotate(
        f"{name} {height:.1f} mm" + ("" if inside else f" ({off:+.0f} mm off)"),
        (c0, r0),
        xytext=(6 * scale, 8 * scale),
        textcoords="offset points",
        color=OSTIUM_COLOUR,
        fontsize=9.0 * scale * 1.1,
        fontweight="bold",
        ha="left",
        va="bottom",
    )


def _orientation(ax: Any, view: View, size: int, font: float) -> None:
    edge, mid = 0.03 * size, size / 2.0
    style = {"color": "#80e0ff", "fontsize": font, "va": "center"}
    ax.text(size - edge, mid, orientation_letters(view.right), ha="right", **style)
    ax.text(edge, mid, orientation_letters(-view.right), ha="left", **style)
    ax.text(mid, size - edge, orientation_letters(view.down), ha="center", **style)
    ax.text(mid, edge, orientation_letters(-view.down), ha="center", **style)


def png_bytes(rgb: NDArray[np.uint8]) -> bytes:
    """PNG encoding of an RGB image."""
    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def _source_refs(ctx: OutputContext) -> list[Dataset]:
    """Source Image Sequence: the CT image planes (instances, or frames of a multi-frame
    instance) nearest each hinge point."""
    k_of_point = np.rint(ctx.volume.to_ijk(ctx.points())[:, 2]).astype(int)
    refs, seen = [], set()
    for k in k_of_point:
        if k not in ctx.slice_index or k in seen:
            continue
        seen.add(int(k))
        refs.append(ctx.frames[ctx.slice_index.index(int(k))].reference())
    return refs


def _dataset(
    ctx: OutputContext, view: View, number: int, rgb: NDArray[np.uint8], fov_mm: float
) -> pydicom.Dataset:
    key, src = ctx.key, ctx.source[0]
    spacing = fov_mm / rgb.shape[1]
    right, down = orientation_letters(view.right), orientation_letters(view.down)
    ds = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=src.StudyInstanceUID,
        series_instance_uid=key.series_uid(KIND),
        series_number=SERIES_NUMBERS[KIND],
        sop_instance_uid=key.instance_uid(KIND, view.name),
        instance_number=number,
        manufacturer=ctx.identity.manufacturer,
        pixel_spacing=(spacing, spacing),
        patient_orientation=(right[0], down[0]),
        series_description=series_description(ctx, KIND),
        manufacturer_model_name=ctx.model_name[:64],
        software_versions=software_versions(ctx),
    )
    mark_node_output(ds, ctx, KIND)
    ds.PatientOrientation = [right, down]
    ds.BurnedInAnnotation = "YES"
    ds.BodyPartExamined = "HEART"  # unpaired: Laterality (Type 2C) must then be absent
    ds.ImageComments = f"{view.title}; research use only"[:10240]
    ds.DerivationDescription = (
        f"Oblique reformat of CT series {ctx.series_uid} ({view.name}), trilinear, "
        f"{fov_mm:g} mm field of view; hinge points of {ctx.model_name} {ctx.model_version}"
    )[:1024]
    refs = _source_refs(ctx)
    if refs:
        ds.SourceImageSequence = refs
    return ds


def build_key_images(
    ctx: OutputContext, size_px: int = 512, fov_mm: float = 90.0
) -> list[KeyImage]:
    """The key images of a result (three, plus one per predicted ostium), as Secondary
    Capture datasets and PNGs."""
    if not (isinstance(size_px, int) and 64 <= size_px <= 4096):
        raise OutputError(f"key-image size must be 64..4096 pixels, got {size_px!r}")
    if not (math.isfinite(fov_mm) and fov_mm > 0):
        raise OutputError(f"key-image field of view must be positive mm, got {fov_mm!r}")
    out = []
    for number, view in enumerate(views(ctx), start=1):
        rgb = render(ctx, view, reformat(ctx, view, size_px, fov_mm), fov_mm)
        out.append(KeyImage(_dataset(ctx, view, number, rgb, fov_mm), png_bytes(rgb), view.name))
    return out


__all__ = [
    "KeyImage",
    "View",
    "build_key_images",
    "caption_lines",
    "orientation_letters",
    "reformat",
    "render",
    "views",
]
