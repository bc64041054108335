"""Predictor: Volume -> model grid -> fold heatmaps -> ensemble -> sub-voxel decode ->
the bundle's landmarks in LPS mm (the hinge points, and the coronary ostia when the bundle
has them), the annulus plane through the hinge points, per-landmark confidence and timings.

Inference is fully convolutional on the whole model-grid volume. Memory stays bounded on
long scans (a CT angiogram down to the pelvis) by running the network on overlapping
z-slabs and keeping only each slab's centre.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from glipcore import LANDMARKS
from glipcore import confidence as tta
from glipcore.bundle import Bundle, load_bundle
from glipcore.decode import argmax_ijk, peak_coherence, peak_sharpness, refine_ijk
from glipcore.geometry import FloatArray, Plane, ijk_to_lps, plane_or_none
from glipcore.landmarks import pick
from glipcore.preprocess import to_model_grid
from glipcore.unet import crop_pads, pad_to_multiple, required_multiple
from glipcore.volume import Volume

DEFAULT_SLAB_Z = 96
"""Model-grid slices per inference slab (before the halo): about 150 mm of z."""
DEFAULT_HALO_Z = 24
"""Extra slices on each side of a slab so its kept centre sees full context."""


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None or 0: all cores); returns the number set."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _levels(model: nn.Module) -> int:
    lv = getattr(model, "levels", None)
    if not isinstance(lv, int):
        raise TypeError("model has no integer 'levels' attribute (expected a UNet3D)")
    return lv


@torch.no_grad()
def infer_heatmaps(
    model: nn.Module,
    image: torch.Tensor,
    *,
    slab_z: int = DEFAULT_SLAB_Z,
    halo_z: int = DEFAULT_HALO_Z,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Raw network output (L, Z, Y, X) for a model-grid image (Z, Y, X).

    ``channels_last``: feed the network channels_last_3d tensors (the model must have been
    converted too; faster on CPU, see ``bench.predict_cpu --layout both``).

    Volumes taller than ``slab_z + 2 halo_z`` run in overlapping z-slabs, so peak memory
    depends on the in-plane size and the slab height, not on the scan length.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, Y, X), got shape {tuple(image.shape)}")
    dev = device or next(model.parameters()).device
    mult = required_multiple(_levels(model))
    # Slab edges sit on the pooling lattice of the padded volume, so slabs see the same
    # pooling grid as a whole-volume pass would.
    slab = -(-slab_z // mult) * mult
    halo = -(-halo_z // mult) * mult
    xp, pads = pad_to_multiple(image[None, None].float(), mult, mode="replicate")
    z = xp.shape[2]
    if z <= slab + 2 * halo:
        return crop_pads(_run(model, xp, dev, channels_last), pads)[0]
    outs = []
    for start in range(0, z, slab):
        stop = min(z, start + slab)
        lo, hi = max(0, start - halo), min(z, stop + halo)
        y = _run(model, xp[:, :, lo:hi], dev, channels_last)
        outs.append(y[:, :, start - lo : stop - lo])
    return crop_pads(torch.cat(outs, dim=2), pads)[0]


def _run(model: nn.Module, x: torch.Tensor, dev: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(device_type=dev.type, enabled=dev.type == "cuda"):
        y: torch.Tensor = model(x)
    return y.float().cpu().contiguous()


@dataclass(frozen=True)
class LandmarkConfidence:
    """Measured confidence of one landmark.

    ``fold_spread_mm``: RMS distance of the fold models' predictions from the ensemble's
    (0 with a single fold); ``sharpness``: the ensemble peak's height above its
    neighbourhood in robust-spread units; ``coherence``: how cleanly the values fall off
    around the peak (1 = one clean peak; reported, not scored); ``tta_spread_mm``: RMS
    distance of the test-time-augmentation passes' predictions from the final one
    (``tta_passes`` of them; see :mod:`glipcore.confidence`); ``score`` in [0, 1]: the
    calibrated probability that the landmark is within 2 mm (:func:`confidence.score`);
    ``peak_score``: the former score, exp(-fold spread / 2 mm) * min(1, sharpness /
    sharpness_ref), kept for comparison.
    """

    fold_spread_mm: float
    sharpness: float
    coherence: float
    score: float
    tta_spread_mm: float = 0.0
    tta_passes: int = 0
    peak_score: float | None = None


class DegeneratePredictionError(ValueError):
    """The predicted hinge points are collinear (e.g. two on one spot): no annulus plane."""


@dataclass(frozen=True)
class Prediction:
    """The bundle's landmarks (LPS mm, in ``names`` order; pick them by name with
    :meth:`points`), the annulus plane through the hinge points, confidence.

    ``hinge_plane`` is None for a degenerate prediction (collinear hinge points); the
    :attr:`plane` property then raises :class:`DegeneratePredictionError`."""

    names: tuple[str, ...]
    landmarks_lps: FloatArray
    landmarks_argmax_lps: FloatArray
    fold_landmarks_lps: FloatArray
    hinge_plane: Plane | None
    confidence: tuple[LandmarkConfidence, ...]
    model_version: str
    timings_s: dict[str, float] = field(default_factory=dict)

    def points(self, names: Sequence[str] = LANDMARKS) -> FloatArray:
        """(len(names), 3) LPS mm of the named landmarks (default: the hinge points)."""
        return pick(self.names, self.landmarks_lps, names)

    def points_by_name(self, names: Sequence[str] | None = None) -> dict[str, FloatArray]:
        """{name: (3,) LPS mm} for ``names`` (default: every predicted landmark)."""
        wanted = self.names if names is None else tuple(names)
        return dict(zip(wanted, self.points(wanted), strict=True))

    @property
    def degenerate(self) -> bool:
        """True when the hinge points are collinear: no annulus plane."""
        return self.hinge_plane is None

    @property
    def plane(self) -> Plane:
        """The annulus plane through the hinge points (right-hand normal RCC -> LCC -> NCC).
        Raises DegeneratePredictionError when they are collinear."""
        if self.hinge_plane is None:
            raise DegeneratePredictionError(
                "the predicted hinge points are collinear: no annulus plane"
            )
        return self.hinge_plane

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict ("plane" is None for a degenerate prediction)."""
        plane = self.hinge_plane
        return {
            "model_version": self.model_version,
            "landmarks_lps_mm": {
                n: [round(float(v), 3) for v in p]
                for n, p in zip(self.names, self.landmarks_lps, strict=True)
            },
            "plane": None
            if plane is None
            else {
                "origin_lps_mm": [round(float(v), 3) for v in plane.origin],
                "normal": [round(float(v), 6) for v in plane.normal],
            },
            "confidence": {
                n: {
                    "score": round(c.score, 3),
                    "fold_spread_mm": round(c.fold_spread_mm, 3),
                    "sharpness": round(c.sharpness, 3),
                    "coherence": round(c.coherence, 3),
                    "tta_spread_mm": round(c.tta_spread_mm, 3),
                    "tta_passes": c.tta_passes,
                    "peak_score": None if c.peak_score is None else round(c.peak_score, 3),
                }
                for n, c in zip(self.names, self.confidence, strict=True)
            },
            "landmarks_argmax_lps_mm": {
                n: [round(float(v), 3) for v in p]
                for n, p in zip(self.names, self.landmarks_argmax_lps, strict=True)
            },
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


SHARPNESS_REF = 300.0
"""Peak sharpness at and above which a peak counts as fully sharp in the confidence score.

Measured with ``python -m bench.decode_real`` on 30 held-out phantoms: with the first
shipped model (phantom-glip-1908a769c7ca) the median sharpness was 638 and its one gross
miss (LCC, 5.95 mm, a blunt dome with no second peak) had 83, the lowest of all 90
landmarks; sharpness tracked the error (Spearman rho -0.30), coherence did not (+0.15), so
coherence is reported but not scored. The current model's sharpness: median 629, lowest
316; 300 is about half the median. ``glip train`` writes half the median sharpness on
its CV test set into the bundle's ``metadata["sharpness_ref"]``, which then wins."""


def _confidence(
    spread_mm: float,
    sharpness: float,
    coherence: float,
    *,
    sharpness_ref: float = SHARPNESS_REF,
    spread_scale_mm: float = 2.0,
    n_folds: int = 1,
) -> LandmarkConfidence:
    """Confidence without TTA: the calibrated score from fold spread and sharpness (the
    sharpness-only calibration when there is one fold), and the former peak score."""
    sharp = max(0.0, min(1.0, sharpness / sharpness_ref))
    peak = float(np.exp(-spread_mm / spread_scale_mm) * sharp)
    score = tta.score(spread_mm, 0.0, sharpness, sharpness_ref=sharpness_ref, n_folds=n_folds)
    return LandmarkConfidence(spread_mm, sharpness, coherence, score, peak_score=peak)


def with_tta(
    conf: LandmarkConfidence, tta_spread_mm: float, passes: int, *, sharpness_ref: float
) -> LandmarkConfidence:
    """``conf`` with the TTA spread of ``passes`` passes and the score recomputed."""
    s = tta.score(
        conf.fold_spread_mm,
        tta_spread_mm,
        conf.sharpness,
        sharpness_ref=sharpness_ref,
        tta_passes=passes,
    )
    return LandmarkConfidence(
        conf.fold_spread_mm,
        conf.sharpness,
        conf.coherence,
        s,
        tta_spread_mm=tta_spread_mm,
        tta_passes=passes,
        peak_score=conf.peak_score,
    )


def decode_ensemble(
    fold_maps: Sequence[torch.Tensor],
    affine: FloatArray,
    *,
    ensemble: Literal["heatmap", "coordinate"] = "heatmap",
    refine: str = "hybrid",
    sharpness_ref: float = SHARPNESS_REF,
) -> tuple[FloatArray, FloatArray, FloatArray, list[LandmarkConfidence]]:
    """Fold outputs [(L, Z, Y, X)] on a grid with ``affine`` -> (refined LPS (L, 3),
    argmax LPS (L, 3), per-fold refined LPS (F, L, 3), confidences)."""
    stack = torch.stack(list(fold_maps))  # (F, L, Z, Y, X)
    per_fold = ijk_to_lps(affine, refine_ijk(stack, method=refine).numpy())  # type: ignore[arg-type]
    mean_map = stack.mean(dim=0)
    if ensemble == "heatmap":
        final = ijk_to_lps(affine, refine_ijk(mean_map, method=refine).numpy())  # type: ignore[arg-type]
    else:
        final = per_fold.mean(axis=0)
    arg = ijk_to_lps(affine, argmax_ijk(mean_map).numpy())
    spread = np.sqrt(((per_fold - final[None]) ** 2).sum(-1).mean(0))  # (L,)
    sharp = peak_sharpness(mean_map).numpy()
    coh = peak_coherence(mean_map).numpy()
    conf = [
        _confidence(
            float(s), float(h), float(c), sharpness_ref=sharpness_ref, n_folds=stack.shape[0]
        )
        for s, h, c in zip(spread, sharp, coh, strict=True)
    ]
    return final, arg, per_fold, conf


class Predictor:
    """Loads a model bundle once and predicts its landmarks on any CT ``Volume`` (HU)."""

    def __init__(
        self,
        bundle: Bundle | Path | str,
        *,
        threads: int | None = None,
        device: str = "auto",
        slab_z: int = DEFAULT_SLAB_Z,
        halo_z: int = DEFAULT_HALO_Z,
        channels_last: bool | None = None,
        tta_passes: int = tta.DEFAULT_TTA_PASSES,
        tta_box: bool = False,
    ) -> None:
        """``tta_passes``: extra network runs (0 to 4) on augmented copies of the model-grid
        volume, for the confidence only (they never move the landmarks); ``tta_box``: run
        them on a box around the predicted landmarks instead (cheaper on long scans, but a
        weaker signal on the phantoms). ``python -m bench.confidence`` measures both."""
        if not 0 <= tta_passes <= len(tta.TTA_PASSES):
            raise ValueError(f"tta_passes must be 0..{len(tta.TTA_PASSES)}, got {tta_passes}")
        self.tta_passes = tta_passes
        self.tta_box = tta_box
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        self.device = pick_device(device)
        if self.device.type == "cpu":
            set_threads(threads)
        # channels_last_3d: ~15-20% faster convolutions on CPU (bench.predict_cpu); the
        # default on CPU only.
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.models = [
            m.to(self.device).to(memory_format=fmt).eval()  # type: ignore[call-overload]
            for m in self.bundle.models
        ]
        self.slab_z = slab_z
        self.halo_z = halo_z

    @property
    def model_version(self) -> str:
        return self.bundle.version

    def predict(self, volume: Volume) -> Prediction:
        """Landmarks, annulus plane and confidence for a CT volume in HU."""
        t0 = time.perf_counter()
        grid = to_model_grid(volume, self.bundle.manifest.preprocessing)
        pred = self.predict_grid(grid)
        pred.timings_s["resample"] = time.perf_counter() - t0 - sum(pred.timings_s.values())
        return pred

    def predict_grid(self, grid: Volume) -> Prediction:
        """Like :meth:`predict` for a volume already on the model grid (preprocessed)."""
        m = self.bundle.manifest
        t1 = time.perf_counter()
        image = torch.from_numpy(np.ascontiguousarray(grid.array, dtype=np.float32))
        maps = [self._fold_heatmaps(image, f) for f in range(len(self.models))]
        t2 = time.perf_counter()
        final, arg, per_fold, conf = decode_ensemble(
            maps,
            grid.affine,
            ensemble=m.ensemble,
            refine=m.refine,
            sharpness_ref=float(m.metadata.get("sharpness_ref", SHARPNESS_REF)),
        )
        t3 = time.perf_counter()
        timings = {"inference": t2 - t1, "decode": t3 - t2}
        if self.tta_passes:
            ref = float(m.metadata.get("sharpness_ref", SHARPNESS_REF))
            pts = tta.tta_points(
                grid,
                self._fold_heatmaps,
                tta.TTA_PASSES[: self.tta_passes],
                n_folds=len(self.models),
                refine=m.refine,
                around_lps=final if self.tta_box else None,
            )
            spread = tta.rms_spread_mm(pts, final)
            conf = [
                with_tta(c, float(s), self.tta_passes, sharpness_ref=ref)
                for c, s in zip(conf, spread, strict=True)
            ]
            timings["confidence_tta"] = time.perf_counter() - t3
        names = tuple(m.landmarks)
        return Prediction(
            names=names,
            landmarks_lps=final,
            landmarks_argmax_lps=arg,
            fold_landmarks_lps=per_fold,
            hinge_plane=plane_or_none(pick(names, final, LANDMARKS)),
            confidence=tuple(conf),
            model_version=self.bundle.version,
            timings_s=timings,
        )

    def _fold_heatmaps(self, image: torch.Tensor, fold: int) -> torch.Tensor:
        return infer_heatmaps(
            self.models[fold],
            image,
            slab_z=self.slab_z,
            halo_z=self.halo_z,
            device=self.device,
            channels_last=self.channels_last,
        )
