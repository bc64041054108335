"""The node's DICOM result objects: Comprehensive 3D SR (TID 1500), BINARY SEG with a
sphere per hinge point, and Secondary Capture key images with PNG copies.

UIDs are deterministic per (input instances, model version, output recipe, kind)
(:mod:`.uids`, :mod:`.recipe`); dates and times come from the job;
SeriesDescription names the kind and model version and says "RUO" (and "phantom" for a
phantom-trained model); patient and study come from the CT. The worker calls
:func:`build_all` with an :class:`OutputContext`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import pydicom

from dicomnode.process.outputs.context import (
    LANDMARK_NAMES,
    OutputContext,
    OutputError,
    PriorResult,
)
from dicomnode.process.outputs.keyimage import KeyImage, build_key_images
from dicomnode.process.outputs.measurements import (
    CoplanarView,
    coplanar_view,
    hinge_distances_mm,
    measurements,
    plane_tilt_deg,
)
from dicomnode.process.outputs.recipe import output_recipe
from dicomnode.process.outputs.seg import build_seg
from dicomnode.process.outputs.sr import build_sr, report_uid
from dicomnode.process.outputs.uids import KINDS, ResultKey, inputs_digest, output_uid


@dataclass(frozen=True)
class OutputSet:
    """The objects built for one job. ``sr``/``seg`` are None when not asked for."""

    sr: pydicom.Dataset | None = None
    seg: pydicom.Dataset | None = None
    keyimages: tuple[KeyImage, ...] = ()
    measurements: dict[str, float] = field(default_factory=dict)

    def by_kind(self) -> dict[str, list[pydicom.Dataset]]:
        """Datasets per kind ("sr", "seg", "keyimage"), only the kinds built."""
        out: dict[str, list[pydicom.Dataset]] = {}
        if self.sr is not None:
            out["sr"] = [self.sr]
        if self.seg is not None:
            out["seg"] = [self.seg]
        if self.keyimages:
            out["keyimage"] = [k.dataset for k in self.keyimages]
        return out

    def datasets(self) -> list[pydicom.Dataset]:
        """Every dataset to store and send, SR first."""
        return [ds for group in self.by_kind().values() for ds in group]

    def items(self) -> list[tuple[str, list[tuple[pydicom.Dataset, str | None, bytes | None]]]]:
        """Per kind built: (kind, [(dataset, PNG name or None, PNG bytes or None), ...]);
        key images carry their view name (e.g. "annulus-plane") and PNG."""
        out: list[tuple[str, list[tuple[pydicom.Dataset, str | None, bytes | None]]]] = []
        if self.sr is not None:
            out.append(("sr", [(self.sr, None, None)]))
        if self.seg is not None:
            out.append(("seg", [(self.seg, None, None)]))
        if self.keyimages:
            out.append(("keyimage", [(k.dataset, k.name, k.png) for k in self.keyimages]))
        return out

    def pngs(self) -> dict[str, bytes]:
        """PNG copies of the key images by view name (e.g. "annulus-plane")."""
        return {k.name: k.png for k in self.keyimages}


def build_all(
    ctx: OutputContext,
    *,
    seg_radius_mm: float,
    keyimage_size_px: int,
    keyimage_fov_mm: float,
    kinds: Collection[str] = KINDS,
) -> OutputSet:
    """Build the requested kinds (any of "sr", "seg", "keyimage") for one job."""
    unknown = sorted(set(kinds) - set(KINDS))
    if isinstance(kinds, str) or unknown:
        raise OutputError(f"unknown output kinds {unknown or kinds!r}; known: {list(KINDS)}")
    return OutputSet(
        sr=build_sr(ctx) if "sr" in kinds else None,
        seg=build_seg(ctx, seg_radius_mm) if "seg" in kinds else None,
        keyimages=tuple(build_key_images(ctx, keyimage_size_px, keyimage_fov_mm))
        if "keyimage" in kinds
        else (),
        measurements=measurements(ctx),
    )


__all__ = [
    "KINDS",
    "LANDMARK_NAMES",
    "CoplanarView",
    "KeyImage",
    "OutputContext",
    "OutputError",
    "OutputSet",
    "PriorResult",
    "ResultKey",
    "build_all",
    "build_key_images",
    "build_seg",
    "build_sr",
    "coplanar_view",
    "hinge_distances_mm",
    "inputs_digest",
    "measurements",
    "output_recipe",
    "output_uid",
    "plane_tilt_deg",
    "report_uid",
]
