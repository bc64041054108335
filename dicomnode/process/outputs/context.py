"""Inputs of the result objects: one job's CT series, its prediction and the node identity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from dicomnode.config import Identity
from dicomnode.process.outputs.frames import (
    FrameGeometryError,
    SourceFrame,
    is_multiframe,
    source_frames,
)
from dicomnode.process.outputs.uids import ResultKey, inputs_digest
from dicomnode.process.result_keys import OSTIUM_NAMES
from glipcore.sizing import AnnulusSizing
from glipcore.volume import Volume

LANDMARK_NAMES: tuple[str, str, str] = ("RCC", "LCC", "NCC")
"""The hinge points, in the order every output lists them."""
OSTIUM_LABELS = {"LCO": "left coronary ostium", "RCO": "right coronary ostium"}

_REQUIRED_HEADER = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
)
_NORMAL_TOL = 1e-3  # |norm - 1| allowed before the normal is renormalised
_GRID_TOL_VOXELS = 0.1  # how far a slice's ImagePositionPatient may sit off the volume's grid


class OutputError(ValueError):
    """The inputs cannot make a trustworthy result object; the message says why."""


def _vector(name: str, value: Any) -> NDArray[np.float64]:
    v = np.asarray(value, dtype=np.float64)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise OutputError(f"{name} must be a finite 3-vector in LPS mm, got {value!r}")
    return v


@dataclass(frozen=True)
class PriorResult:
    """An earlier result of the same series that a new one replaces: its SR's UIDs and a
    few words on where it came from (e.g. "job 12 of 2025-03-01 10:02 UTC, 142 instances")."""

    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    description: str


@dataclass(frozen=True, eq=False)
class OutputContext:
    """Everything the SR, SEG and key-image builders need for one job.

    ``source``: headers of the job's CT instances, single-frame ones or one multi-frame
    (Enhanced) CT (pixel data not needed);
    ``volume``: the same series in HU on the grid those headers define; ``landmarks_lps``:
    "RCC", "LCC", "NCC" -> (3,) LPS mm; ``plane_normal``: unit (turned to point cranially);
    ``confidence``: 0..1 per landmark; ``warnings``: plausibility findings (empty when
    fine); ``recipe``: the output recipe version (:mod:`.recipe`); ``content_time``: when
    the job was made (timezone-aware), the one date/time every object carries, so that
    encoding the same job again gives the same bytes; ``prior``: the earlier result of the
    series this one replaces, if any; ``sizing``: the annulus lumen measured on the plane
    (:func:`glipcore.sizing.size_annulus`), or None with ``sizing_refusal`` saying why
    (None and None: sizing not attempted); ``ostia_lps``: "LCO" and/or "RCO" -> (3,) LPS
    mm when the model predicts the coronary ostia (their confidence, when given, is kept
    with the hinge points'). Validated on construction (:class:`OutputError`);
    arrays are stored as float64 copies; ``frames`` are the source's image planes
    (:mod:`.frames`) and ``slice_index[n]`` is the volume slice k of ``frames[n]``.
    """

    source: Sequence[pydicom.Dataset]
    volume: Volume
    landmarks_lps: Mapping[str, NDArray[Any]]
    plane_origin: NDArray[Any]
    plane_normal: NDArray[Any]
    confidence: Mapping[str, float]
    model_name: str
    model_version: str
    trained_on_phantom: bool
    warnings: Sequence[str]
    identity: Identity
    recipe: str
    content_time: datetime
    prior: PriorResult | None = None
    sizing: AnnulusSizing | None = None
    sizing_refusal: str | None = None
    ostia_lps: Mapping[str, NDArray[Any]] = field(default_factory=dict)
    frames: tuple[SourceFrame, ...] = field(init=False, repr=False, compare=False)
    slice_index: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_landmarks()
        set_ = object.__setattr__
        set_(self, "plane_origin", _vector("plane_origin", self.plane_origin))
        normal = _vector("plane_normal", self.plane_normal)
        norm = float(np.linalg.norm(normal))
        if abs(norm - 1.0) > _NORMAL_TOL:
            raise OutputError(f"plane_normal must be a unit vector, its length is {norm:.6g}")
        # The plane is unoriented: a caudal normal (e.g. from swapped cusps, which the
        # plausibility gate reports) is flipped so that every output sees it cranially.
        set_(self, "plane_normal", (normal if normal[2] >= 0 else -normal) / norm)
        self._check_ostia()
        self._check_confidence()
        self._check_sizing()
        for name in ("model_name", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or "\\" in value:
                raise OutputError(f"{name} must be a non-empty string without backslash")
        if isinstance(self.warnings, str) or not all(isinstance(w, str) for w in self.warnings):
            raise OutputError("warnings must be a sequence of strings")
        set_(self, "warnings", tuple(self.warnings))
        if not isinstance(self.recipe, str) or not self.recipe:
            raise OutputError("recipe must be a non-empty string (the output recipe version)")
        if self.content_time.tzinfo is None:
            raise OutputError("content_time must be timezone-aware")
        self._check_source()
        set_(self, "slice_index", self._map_slices())

    # ------------------------------------------------------------------ checks

    def _check_landmarks(self) -> None:
        names = set(self.landmarks_lps)
        missing = [n for n in LANDMARK_NAMES if n not in names]
        extra = sorted(names - set(LANDMARK_NAMES))
        if missing or extra:
            raise OutputError(
                f"landmarks_lps must have exactly {list(LANDMARK_NAMES)}; "
                f"missing {missing}, unexpected {extra}"
            )
        points = {n: _vector(f"landmark {n}", self.landmarks_lps[n]) for n in LANDMARK_NAMES}
        a, b, c = (points[n] for n in LANDMARK_NAMES)
        if float(np.linalg.norm(np.cross(b - a, c - a))) < 1e-6:
            raise OutputError("the three hinge points are collinear or coincide: no plane")
        object.__setattr__(self, "landmarks_lps", points)

    def _check_ostia(self) -> None:
        extra = sorted(set(self.ostia_lps) - set(OSTIUM_NAMES))
        if extra:
            raise OutputError(f"ostia_lps may name {list(OSTIUM_NAMES)} only; unexpected {extra}")
        points = {
            n: _vector(f"ostium {n}", self.ostia_lps[n])
            for n in OSTIUM_NAMES
            if n in self.ostia_lps
        }
        object.__setattr__(self, "ostia_lps", points)

    def _check_sizing(self) -> None:
        if self.sizing is not None and self.sizing_refusal is not None:
            raise OutputError("sizing and sizing_refusal exclude each other")
        if self.sizing_refusal is not None and not str(self.sizing_refusal).strip():
            raise OutputError("sizing_refusal must say why (a non-empty string)")
        if self.sizing is not None:
            contour = np.asarray(self.sizing.contour_lps, dtype=np.float64)
            if contour.ndim != 2 or contour.shape[1] != 3 or len(contour) < 3:
                raise OutputError(f"annulus contour must be (K >= 3, 3), got {contour.shape}")
            if not np.all(np.isfinite(contour)):
                raise OutputError("annulus contour has non-finite points")

    def _check_confidence(self) -> None:
        clean: dict[str, float] = {}
        for n in (*LANDMARK_NAMES, *OSTIUM_NAMES):
            if n not in self.confidence:
                if n in OSTIUM_NAMES:
                    continue
                raise OutputError(f"confidence has no score for {n}")
            value = float(self.confidence[n])
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise OutputError(f"confidence of {n} must be within 0..1, got {value!r}")
            clean[n] = value
        object.__setattr__(self, "confidence", clean)

    def _check_source(self) -> None:
        if len(self.source) == 0:
            raise OutputError("source is empty: the CT headers of the job are needed")
        for n, ds in enumerate(self.source):
            absent = [k for k in _REQUIRED_HEADER if k not in ds]
            if absent:
                raise OutputError(f"source instance {n} lacks {', '.join(absent)}")
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            values = {str(ds[key].value) for ds in self.source}
            if len(values) != 1:
                raise OutputError(f"source instances disagree on {key}: {sorted(values)}")
        uids = [str(ds.SOPInstanceUID) for ds in self.source]
        if len(set(uids)) != len(uids):
            raise OutputError("source holds the same SOPInstanceUID twice")
        if len(self.source) > 1 and any(is_multiframe(ds) for ds in self.source):
            raise OutputError(
                "source mixes instances with a multi-frame one: one multi-frame CT, or "
                "single-frame CT instances, are needed"
            )
        try:
            object.__setattr__(self, "frames", tuple(source_frames(self.source)))
        except FrameGeometryError as exc:
            raise OutputError(str(exc)) from exc

    def _map_slices(self) -> tuple[int, ...]:
        """Volume slice k of each source frame (checks the frames match the grid)."""
        n_z, rows, cols = self.volume.shape_zyx
        if len(self.frames) != n_z:
            raise OutputError(f"source has {len(self.frames)} image planes, volume {n_z} slices")
        first = self.source[0]
        if (int(first.Rows), int(first.Columns)) != (rows, cols):
            raise OutputError(
                f"source images are {first.Rows}x{first.Columns}, volume slices {rows}x{cols}"
            )
        positions = np.array([f.position for f in self.frames])
        ijk = self.volume.to_ijk(positions)
        k = np.rint(ijk[:, 2])
        off = np.abs(ijk - np.column_stack([np.zeros((len(k), 2)), k]))
        if np.any(off > _GRID_TOL_VOXELS) or np.any(k < 0) or np.any(k >= n_z):
            raise OutputError("source ImagePositionPatient values do not lie on the volume grid")
        ks = tuple(int(x) for x in k)
        if len(set(ks)) != len(ks):
            raise OutputError("two source image planes lie on the same volume slice")
        return ks

    # ------------------------------------------------------------------ facts

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID of the source CT."""
        return str(self.source[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        """FrameOfReferenceUID of the source CT (every coordinate refers to it)."""
        return str(self.source[0].FrameOfReferenceUID)

    @property
    def key(self) -> ResultKey:
        """What this result's UIDs derive from: input set, model version and recipe."""
        return ResultKey(
            uid_root=self.identity.uid_root,
            inputs=inputs_digest(str(ds.SOPInstanceUID) for ds in self.source),
            model_version=self.model_version,
            recipe=self.recipe,
        )

    def points(self) -> NDArray[np.float64]:
        """(3, 3) hinge points in RCC, LCC, NCC order, LPS mm."""
        return np.stack([self.landmarks_lps[n] for n in LANDMARK_NAMES])


__all__ = [
    "LANDMARK_NAMES",
    "OSTIUM_LABELS",
    "OSTIUM_NAMES",
    "OutputContext",
    "OutputError",
    "PriorResult",
]
