"""BINARY Segmentation: a small sphere per hinge point on the CT's own geometry.

One segment per hinge point (1 RCC, 2 LCC, 3 NCC), each frame derived from (and
referencing) the CT image plane it lies on: a single-frame instance, or a frame of a
multi-frame (Enhanced) CT; empty frames are omitted. A voxel belongs to a
sphere when its centre lies within ``radius_mm`` of the point; where two spheres overlap
(a radius above half an inter-hinge distance) the voxel goes to the nearer point. Segment
tracking UIDs equal the SR's, so a viewer can link the two.
"""

from __future__ import annotations

import math
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.sr.codedict import codes

from dicomnode.process.outputs import codes as c
from dicomnode.process.outputs.common import SERIES_NUMBERS, mark_node_output, software_versions
from dicomnode.process.outputs.context import LANDMARK_NAMES, OutputContext, OutputError
from dicomnode.process.outputs.sr import tracking_uid

KIND = "seg"
_RGB = {  # display colours (sRGB; stored as CIELab): RCC red, LCC green, NCC blue
    "RCC": (230, 40, 40),
    "LCC": (40, 200, 60),
    "NCC": (60, 110, 240),
}


def sphere_labels(ctx: OutputContext, radius_mm: float) -> NDArray[np.uint8]:
    """Label map in volume order (Z, Y, X): 0 background, n+1 for landmark n."""
    if not (math.isfinite(radius_mm) and radius_mm > 0):
        raise OutputError(f"sphere radius must be a positive number of mm, got {radius_mm!r}")
    vol = ctx.volume
    labels = np.zeros(vol.shape_zyx, dtype=np.uint8)
    points = ctx.points()
    reach = radius_mm / float(np.min(vol.spacing)) + 1.0
    hi = np.array(vol.shape_zyx[::-1]) - 1  # (i, j, k) maxima
    for n, point in enumerate(points):
        centre = vol.to_ijk(point)
        lo_ijk = np.maximum(np.floor(centre - reach), 0).astype(int)
        hi_ijk = np.minimum(np.ceil(centre + reach), hi).astype(int)
        if np.any(hi_ijk < lo_ijk):
            continue  # sphere entirely outside the volume
        axes = [np.arange(lo_ijk[a], hi_ijk[a] + 1) for a in range(3)]
        kk, jj, ii = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        ijk = np.stack([ii, jj, kk], axis=-1).astype(np.float64)
        lps = vol.to_lps(ijk)
        dist = np.linalg.norm(lps - point, axis=-1)
        box = labels[kk, jj, ii]
        inside = dist <= radius_mm
        taken = inside & (box > 0)
        if np.any(taken):
            other = points[box[taken].astype(int) - 1]
            closer = dist[taken] < np.linalg.norm(lps[taken] - other, axis=-1)
            inside[taken] = closer
        box[inside] = n + 1
        labels[kk, jj, ii] = box
    return labels


def _segment(ctx: OutputContext, number: int, name: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"{name} hinge point",
        segmented_property_category=c.ANATOMICAL_STRUCTURE,
        segmented_property_type=c.HINGE[name],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ctx.model_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=ctx.model_version,
        ),
        tracking_uid=tracking_uid(ctx, name),
        tracking_id=f"{name} hinge point",
        anatomic_regions=[c.AORTIC_VALVE],
        primary_anatomic_structures=[c.SINUS[name]],
        display_color=hd.color.CIELabColor.from_rgb(*_RGB[name]),
    )


def build_seg(ctx: OutputContext, radius_mm: float) -> pydicom.Dataset:
    """BINARY SEG with a sphere of ``radius_mm`` per hinge point (see module docstring)."""
    labels = sphere_labels(ctx, radius_mm)
    present = [n + 1 for n in range(len(LANDMARK_NAMES)) if np.any(labels == n + 1)]
    if not present:
        raise OutputError("no hinge-point sphere intersects the CT volume: nothing to segment")
    # Frames in source plane order (instances, or a multi-frame CT's frame numbers);
    # highdicom drops the empty ones.
    frames: NDArray[Any] = labels[list(ctx.slice_index)]
    key = ctx.key
    seg = hd.seg.Segmentation(
        source_images=list(ctx.source),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(ctx, n, LANDMARK_NAMES[n - 1]) for n in range(1, len(LANDMARK_NAMES) + 1)
        ],
        series_instance_uid=key.series_uid(KIND),
        series_number=SERIES_NUMBERS[KIND],
        sop_instance_uid=key.instance_uid(KIND, "spheres"),
        instance_number=1,
        manufacturer=ctx.identity.manufacturer,
        manufacturer_model_name=ctx.model_name[:64],
        software_versions=software_versions(ctx),
        device_serial_number="0",
        content_description=f"Hinge points, {radius_mm:g} mm spheres"[:64],
        content_label="HINGES",
        omit_empty_frames=True,
        coding_schemes=[c.local_coding_scheme()],
    )
    mark_node_output(seg, ctx, KIND)
    _fix_dimension_organization(seg, key.uid(KIND, "dimension-organization"))
    return seg


def _fix_dimension_organization(seg: pydicom.Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID with a derived one, so that
    encoding the same job again gives the same bytes."""
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uid


__all__ = ["build_seg", "sphere_labels"]
