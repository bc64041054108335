"""Training data: manifest -> cached model-grid volumes -> augmented crops with heatmaps.

Crops are sampled straight from the cached model-grid volume through one trilinear
``grid_sample`` whose sampling grid carries the random shift and the small rotation, so
the crop's own affine is exact and its heatmaps are built on the fly from the landmarks in
LPS mm. Mirroring is never used: it would swap the left and right coronary cusps.

Samples follow a landmark list (channel order, see :mod:`glipcore.landmarks`); a landmark
a case has no truth for gets an all-zero heatmap and ``known`` False, which the losses
mask out.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from glipcore import LANDMARKS
from glipcore.geometry import FloatArray, lps_to_ijk
from glipcore.heatmap import gaussian_heatmaps
from glipcore.landmarks import named_points
from glipcore.manifest import ManifestRow
from glipcore.preprocess import Preprocessing, to_model_grid
from glipcore.volume import Volume
from glipcore.volume_io import load_volume


@dataclass(frozen=True)
class Case:
    """One labelled case on the model grid: hinge points (3, 3) LPS mm in RCC, LCC, NCC
    order and, when known, the coronary ostia (2, 3) in LCO, RCO order (NaN rows for an
    unknown one)."""

    case_id: str
    volume: Volume
    landmarks_lps: FloatArray
    quality: str
    ostia_lps: FloatArray | None = None

    def points(self, names: Sequence[str] = LANDMARKS) -> FloatArray:
        """(L, 3) LPS mm of the named landmarks, a row of NaN for one the case lacks."""
        return named_points(self.landmarks_lps, self.ostia_lps, names)


class Augment(BaseModel):
    """Anatomy-preserving augmentation (no mirroring, ever)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rotate_deg: float = Field(10.0, ge=0, le=45, description="max rotation about each axis")
    intensity_scale: float = Field(0.1, ge=0, le=0.5, description="x (1 +- this)")
    intensity_shift: float = Field(0.05, ge=0, le=0.5, description="+- this (scaled units)")
    noise_sd: float = Field(0.02, ge=0, le=0.5, description="max Gaussian noise sd")


class CropConfig(BaseModel):
    """Training crop on the model grid, sizes in voxels (Z, Y, X)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_zyx: tuple[int, int, int] = (48, 64, 64)
    margin_vox: int = Field(6, ge=0, description="landmarks stay this far inside the crop")


# ---------------------------------------------------------------------------- cache


def _cache_key(path: Path, prep: Preprocessing) -> str:
    st = path.stat()
    parts = [str(path.resolve()), str(st.st_mtime_ns), str(st.st_size), prep.model_dump_json()]
    if path.is_dir():
        for f in sorted(path.iterdir()):
            fs = f.stat()
            parts.append(f"{f.name}:{fs.st_size}:{fs.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def save_grid_npz(path: Path, vol: Volume, **extra: Any) -> None:
    """Store a model-grid volume (float16 array + affine) and extra arrays atomically."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, array=vol.array.astype(np.float16), affine=vol.affine, **extra)
    tmp.replace(path)


def load_grid_npz(path: Path) -> tuple[Volume, dict[str, Any]]:
    """Read what :func:`save_grid_npz` wrote: the volume (float32) and the extra arrays.

    Callers always read back through here, so a case is the same float16-rounded volume
    whether it was just computed or came from the cache."""
    with np.load(path) as z:
        extra = {k: z[k] for k in z.files if k not in ("array", "affine")}
        return Volume(z["array"].astype(np.float32), z["affine"]), extra


class ModelGridCache:
    """Preprocessed model-grid volumes on disk (``.npz``: float16 array + affine), keyed by
    the source path, its size and mtime, and the preprocessing settings."""

    def __init__(self, cache_dir: Path, prep: Preprocessing) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prep = prep

    def get(self, source: Path) -> Volume:
        """The model-grid volume of ``source`` (DICOM folder, NIfTI), computed once."""
        f = self.dir / f"{_cache_key(Path(source), self.prep)}.npz"
        if not f.exists():
            save_grid_npz(f, to_model_grid(load_volume(Path(source)), self.prep))
        return load_grid_npz(f)[0]

    def load_cases(self, rows: Sequence[ManifestRow], progress: bool = True) -> list[Case]:
        """Load (and cache) every manifest row's model-grid volume."""
        from tqdm import tqdm

        out = []
        for row in tqdm(rows, desc="preprocess", unit="case", disable=not progress):
            vol = self.get(row.path)
            out.append(
                Case(row.case_id, vol, np.asarray(row.landmarks, float), row.quality, row.ostia)
            )
        return out


# ---------------------------------------------------------------------------- crops


def _rotation(rng: np.random.Generator, max_deg: float) -> FloatArray:
    """A random rotation with each Euler angle uniform in +-max_deg."""
    a, b, c = np.radians(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def crop_transform(
    case: Case,
    crop: CropConfig,
    rng: np.random.Generator,
    rotate_deg: float,
    landmarks: Sequence[str] = LANDMARKS,
) -> FloatArray:
    """A 4x4 map from crop voxel ijk to source-volume voxel ijk: a rotation about the crop
    centre and a random shift that keeps the case's known ``landmarks`` ``margin_vox``
    inside the crop."""
    size_ijk = np.array(crop.size_zyx[::-1], dtype=np.float64)
    centre_out = (size_ijk - 1) / 2
    r = _rotation(rng, rotate_deg) if rotate_deg > 0 else np.eye(3)
    points = case.points(landmarks)
    points = points[np.isfinite(points).all(axis=1)]
    lm_src = lps_to_ijk(case.volume.affine, points)  # (L, 3)
    # Where the landmarks land in the crop if the crop centre sits at source position c:
    # out = R^T (src - c) + centre_out. Keep them inside [margin, size-1-margin].
    rel = (lm_src - lm_src.mean(axis=0)) @ r  # (L, 3) rotated offsets from their centroid
    lo = crop.margin_vox - centre_out - rel.min(axis=0)
    hi = size_ijk - 1 - crop.margin_vox - centre_out - rel.max(axis=0)
    if np.any(hi < lo):
        raise ValueError(
            f"crop {crop.size_zyx} (Z, Y, X) is too small to hold the landmarks of case "
            f"{case.case_id} with a margin of {crop.margin_vox} voxels"
        )
    shift = rng.uniform(lo, hi)  # offset of the landmarks' centroid from the crop centre
    c = lm_src.mean(axis=0) - r @ shift
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = c - r @ centre_out
    return t


def sample_crop(
    case: Case, transform: FloatArray, size_zyx: tuple[int, int, int], pad_value: float
) -> torch.Tensor:
    """Trilinear resample of ``case.volume`` on the crop grid given by ``transform``
    (crop ijk -> source ijk); outside the volume ``pad_value``. Returns (1, Z, Y, X)."""
    z, y, x = size_zyx
    src = torch.from_numpy(np.ascontiguousarray(case.volume.array, dtype=np.float32))
    sz, sy, sx = src.shape
    kk, jj, ii = torch.meshgrid(
        torch.arange(z, dtype=torch.float32),
        torch.arange(y, dtype=torch.float32),
        torch.arange(x, dtype=torch.float32),
        indexing="ij",
    )
    ijk = torch.stack([ii, jj, kk], dim=-1)  # (Z, Y, X, 3)
    t = torch.from_numpy(transform.astype(np.float32))
    p = ijk @ t[:3, :3].T + t[:3, 3]
    size = torch.tensor([sx, sy, sz], dtype=torch.float32)
    grid = (2 * p + 1) / size - 1  # align_corners=False normalisation
    out = F.grid_sample(
        (src - pad_value)[None, None],
        grid[None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[0] + pad_value


@dataclass(frozen=True)
class Sample:
    """One training example: image (1, Z, Y, X), heatmaps (L, Z, Y, X), crop affine and
    which landmarks the case knows (L,) bool (an unknown one's heatmap is all zero)."""

    image: torch.Tensor
    heatmaps: torch.Tensor
    affine: FloatArray
    case_id: str
    known: torch.Tensor


def make_sample(
    case: Case,
    crop: CropConfig,
    sigma_mm: float,
    rng: np.random.Generator,
    augment: Augment | None,
    pad_value: float,
    landmarks: Sequence[str] = LANDMARKS,
) -> Sample:
    """A random crop of ``case`` with the heatmaps of ``landmarks`` (channel order),
    augmented when ``augment`` is given."""
    rot = augment.rotate_deg if augment else 0.0
    t = crop_transform(case, crop, rng, rot, landmarks)
    image = sample_crop(case, t, crop.size_zyx, pad_value)
    if augment is not None:
        scale = 1 + rng.uniform(-augment.intensity_scale, augment.intensity_scale)
        shift = rng.uniform(-augment.intensity_shift, augment.intensity_shift)
        image = image * float(scale) + float(shift)
        sd = rng.uniform(0, augment.noise_sd)
        if sd > 0:
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            image = image + float(sd) * torch.randn(image.shape, generator=g)
    affine = case.volume.affine @ t
    points = case.points(landmarks)
    known = np.isfinite(points).all(axis=1)
    heat = torch.zeros((len(points), *crop.size_zyx), dtype=torch.float32)
    heat[torch.from_numpy(known)] = gaussian_heatmaps(
        crop.size_zyx, affine, points[known], sigma_mm
    )
    return Sample(image.contiguous(), heat, affine, case.case_id, torch.from_numpy(known))


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(B, 1, Z, Y, X) images, (B, L, Z, Y, X) heatmaps, (B, L) bool known landmarks."""


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :data:`Batch`."""
    return (
        torch.stack([s.image for s in samples]),
        torch.stack([s.heatmaps for s in samples]),
        torch.stack([s.known for s in samples]),
    )


class BatchStream:
    """Endless random batches made on a background thread, so the training step never
    waits for data (cropping is cheap; this overlaps it with the step anyway)."""

    def __init__(
        self,
        cases: Sequence[Case],
        crop: CropConfig,
        sigma_mm: float,
        batch_size: int,
        seed: int,
        augment: Augment | None,
        pad_value: float,
        prefetch: int = 4,
        landmarks: Sequence[str] = LANDMARKS,
    ) -> None:
        if not cases:
            raise ValueError("no training cases")
        self._cases = list(cases)
        self._args = (crop, sigma_mm, augment, pad_value)
        self._landmarks = tuple(landmarks)
        self._batch = batch_size
        self._rng = np.random.default_rng(seed)
        self._q: queue.Queue[Batch | BaseException] = queue.Queue(prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="batches")
        self._thread.start()

    def _run(self) -> None:
        crop, sigma, augment, pad = self._args
        while not self._stop.is_set():
            idx = self._rng.integers(len(self._cases), size=self._batch)
            batch: Batch | BaseException
            try:
                batch = collate(
                    [
                        make_sample(
                            self._cases[i], crop, sigma, self._rng, augment, pad, self._landmarks
                        )
                        for i in idx
                    ]
                )
            except Exception as e:  # handed to the consumer, which re-raises it
                batch = e
            while not self._stop.is_set():
                try:
                    self._q.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(batch, BaseException):
                return

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._q.get()
            if isinstance(item, BaseException):
                self.close()
                raise item
            yield item

    def close(self) -> None:
        """Stop the producer thread."""
        self._stop.set()
        self._thread.join(timeout=5)


def describe(cases: Sequence[Case]) -> dict[str, Any]:
    """Small JSON-able summary of a case list (for logs and bundle metadata)."""
    shapes = [c.volume.shape_zyx for c in cases]
    return {
        "cases": len(cases),
        "case_ids_sha256": hashlib.sha256(
            json.dumps(sorted(c.case_id for c in cases)).encode()
        ).hexdigest(),
        "max_shape_zyx": [int(max(s[i] for s in shapes)) for i in range(3)] if shapes else [],
    }
