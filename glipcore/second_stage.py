"""The second stage (paper 4.5.3, Fig. 9-10): a local network on high-resolution patches
around each first-stage prediction.

A patch is ``patch_vox``^3 voxels at ``spacing_mm`` isotropic (the paper: 32 voxels at
0.4 mm), LPS-aligned and centred on the first-stage prediction of one landmark. For
training, a region ``patch_vox + 2 disturbance_vox`` wide is cut and a patch taken at a
uniformly random integer offset in [0, 2 disturbance]^3, so the network cannot learn to
answer "the centre". The patch's target is the heatmap of its own landmark in that
landmark's output channel (the other channels are masked out of the loss).

Phantom patches are rendered straight from the analytic phantom on the patch grid (blur
and noise for that grid), which is what resampling the full 0.4 mm phantom CT gives,
without generating 335 MB volumes; they are cached as small .npz files. A training
patch's centre is the first-stage model's prediction on that training case, moved to
within reach of the truth when the first stage missed by more than the patch can hold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from glipcore import LANDMARKS
from glipcore.dataset import Case
from glipcore.decode import refine_ijk
from glipcore.geometry import ijk_to_lps, make_affine
from glipcore.heatmap import gaussian_heatmaps
from glipcore.losses import make_loss
from glipcore.preprocess import Preprocessing
from glipcore.unet import UNetConfig, build_unet

SDR_THRESHOLDS_MM: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
"""The thresholds of the paper's Fig. 9-10."""
MARGIN_VOX = 2
"""A training target stays this far inside every patch it can fall in."""


class StageTwoConfig(BaseModel):
    """The local network's patches, size, loss and training length."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_vox: int = Field(32, ge=8)
    disturbance_vox: int = Field(4, ge=0)
    spacing_mm: float = Field(0.4, gt=0)
    widths: tuple[int, ...] = (8, 16, 32)
    loss: str = "glip"
    variant: str = "code"
    sigma_mm: float = Field(1.0, gt=0)
    lam: float = Field(10.0, ge=0)
    steps: int = Field(1500, ge=1)
    eval_every: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0

    @property
    def region_vox(self) -> int:
        return self.patch_vox + 2 * self.disturbance_vox

    @property
    def reach_mm(self) -> float:
        """How far (per axis) a training centre may sit from the truth."""
        return (self.patch_vox / 2 - self.disturbance_vox - MARGIN_VOX) * self.spacing_mm


# ---------------------------------------------------------------------------- patches


def patch_affine(center_lps: NDArray[np.float64], size_vox: int, spacing_mm: float) -> Any:
    """LPS-aligned affine of a cube of ``size_vox`` voxels whose centre is ``center_lps``."""
    origin = np.asarray(center_lps, dtype=np.float64) - (size_vox - 1) / 2 * spacing_mm
    return make_affine(origin, (spacing_mm,) * 3)


def phantom_ref(case_id: str) -> tuple[int, int]:
    """(seed, index) of a phantom case id such as ``phantom-515151-0042``."""
    parts = case_id.split("-")
    if len(parts) != 3 or parts[0] != "phantom":
        raise ValueError(f"{case_id!r} is not a phantom case id (phantom-SEED-INDEX)")
    return int(parts[1]), int(parts[2])


@dataclass(frozen=True)
class PatchJob:
    """One patch to render (picklable)."""

    case_id: str
    center_lps: tuple[float, float, float]
    size_vox: int
    spacing_mm: float
    prep: Preprocessing
    cache_dir: Path


def render_patch(job: PatchJob) -> NDArray[np.float32]:
    """The patch (Z, Y, X), preprocessed like model input (HU window scaled to [0, 1]),
    rendered from the phantom and cached."""
    from glipcore.phantom import GENERATOR_VERSION, random_case, render

    seed, index = phantom_ref(job.case_id)
    center = tuple(round(float(c), 3) for c in job.center_lps)
    key = hashlib.sha256(
        f"{GENERATOR_VERSION}|{seed}|{index}|{center}|{job.size_vox}|{job.spacing_mm}|"
        f"{job.prep.model_dump_json()}".encode()
    ).hexdigest()[:24]
    f = Path(job.cache_dir) / f"patch-{key}.npz"
    if f.exists():
        with np.load(f) as z:
            return np.asarray(z["array"], dtype=np.float32)
    affine = patch_affine(np.array(center), job.size_vox, job.spacing_mm)
    hu = render(random_case(seed, index), affine, (job.size_vox,) * 3, noise=True)
    array = job.prep.scale(hu)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, array=array.astype(np.float16))
    tmp.replace(f)
    return np.asarray(array.astype(np.float16), dtype=np.float32)


@dataclass(frozen=True)
class Patch:
    """A rendered region around one landmark's centre, with that landmark's truth."""

    case_id: str
    landmark: int
    center_lps: NDArray[np.float64]
    truth_lps: NDArray[np.float64]
    array: NDArray[np.float32]
    spacing_mm: float

    def affine(self) -> Any:
        return patch_affine(self.center_lps, self.array.shape[0], self.spacing_mm)


def training_centres(
    truth: NDArray[np.float64], first: NDArray[np.float64], reach_mm: float
) -> NDArray[np.float64]:
    """First-stage predictions (N, L, 3) moved, per axis, to within ``reach_mm`` of the
    truth, so every training patch holds its target."""
    return np.asarray(truth + np.clip(first - truth, -reach_mm, reach_mm), dtype=np.float64)


def make_patches(
    cases: Sequence[Case],
    centres: NDArray[np.float64],
    size_vox: int,
    spacing_mm: float,
    prep: Preprocessing,
    cache_dir: Path,
    progress: bool = True,
) -> list[Patch]:
    """Render (or read from the cache) one patch per case and landmark around ``centres``
    (N, L, 3) LPS mm, on two processes."""
    jobs = [
        PatchJob(
            c.case_id,
            (float(centres[n, i, 0]), float(centres[n, i, 1]), float(centres[n, i, 2])),
            size_vox,
            spacing_mm,
            prep,
            Path(cache_dir),
        )
        for n, c in enumerate(cases)
        for i in range(len(LANDMARKS))
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        arrays = list(
            tqdm(
                pool.map(render_patch, jobs),
                total=len(jobs),
                desc="patches",
                unit="patch",
                disable=not progress,
            )
        )
    out: list[Patch] = []
    where = [(n, i) for n in range(len(cases)) for i in range(len(LANDMARKS))]
    for (n, i), job, array in zip(where, jobs, arrays, strict=True):
        truth = cases[n].points(LANDMARKS)[i]
        out.append(Patch(job.case_id, i, np.array(job.center_lps), truth, array, spacing_mm))
    return out


# ---------------------------------------------------------------------------- training


def _sample(
    patch: Patch, cfg: StageTwoConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A disturbed patch crop (1, P, P, P), its heatmaps (L, P, P, P), known mask (L,)."""
    p, d = cfg.patch_vox, cfg.disturbance_vox
    u = rng.integers(0, 2 * d + 1, size=3) if d > 0 else np.zeros(3, dtype=int)  # (k, j, i)
    crop = patch.array[u[0] : u[0] + p, u[1] : u[1] + p, u[2] : u[2] + p]
    affine = np.array(patch.affine(), dtype=np.float64)
    affine[:3, 3] += affine[:3, :3] @ u[::-1].astype(np.float64)
    heat = torch.zeros((len(LANDMARKS), p, p, p), dtype=torch.float32)
    heat[patch.landmark] = gaussian_heatmaps(
        (p, p, p), affine, patch.truth_lps[None], cfg.sigma_mm
    )[0]
    known = torch.zeros(len(LANDMARKS), dtype=torch.bool)
    known[patch.landmark] = True
    return torch.from_numpy(np.ascontiguousarray(crop))[None], heat, known


def predict_patches(
    model: torch.nn.Module, patches: Sequence[Patch], cfg: StageTwoConfig, device: torch.device
) -> NDArray[np.float64]:
    """Second-stage position (K, 3) LPS mm of each patch's landmark (the central
    ``patch_vox`` crop of each patch; patches are rendered that size for inference)."""
    out: list[NDArray[np.float64]] = []
    p = cfg.patch_vox
    model.eval()
    with torch.no_grad():
        for patch in patches:
            off = (patch.array.shape[0] - p) // 2
            arr = patch.array[off : off + p, off : off + p, off : off + p]
            x = torch.from_numpy(np.ascontiguousarray(arr))[None, None].to(device)
            y = model(x)[0, patch.landmark].float().cpu()
            ijk = refine_ijk(y).numpy()
            affine = np.array(patch.affine(), dtype=np.float64)
            affine[:3, 3] += affine[:3, :3] @ np.full(3, float(off))
            out.append(ijk_to_lps(affine, ijk))
    return np.stack(out)


def patch_errors(
    model: torch.nn.Module, patches: Sequence[Patch], cfg: StageTwoConfig, device: torch.device
) -> NDArray[np.float64]:
    """Second-stage error (K,) mm of each patch."""
    pred = predict_patches(model, patches, cfg, device)
    truth = np.stack([p.truth_lps for p in patches])
    return np.asarray(np.linalg.norm(pred - truth, axis=1), dtype=np.float64)


@dataclass(frozen=True)
class StageTwoResult:
    """The trained local network (best validation checkpoint) and its learning curve."""

    model: torch.nn.Module
    history: list[dict[str, float]]


def train_stage_two(
    cfg: StageTwoConfig,
    train: Sequence[Patch],
    val: Sequence[Patch],
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> StageTwoResult:
    """Train the local network; validate every ``eval_every`` steps (median error of the
    validation patches, centred on first-stage predictions); keep the best; resume from
    ``out_dir/last.pt``."""
    if not train or not val:
        raise ValueError("second stage: no training or validation patches")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_unet(UNetConfig(widths=cfg.widths, out_channels=len(LANDMARKS))).to(device)
    loss_fn = make_loss(cfg.loss, lam=cfg.lam, variant=cfg.variant)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict[str, float]] = []
    best_med, best_state = (
        math.inf,
        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    )
    start = 0
    last = out_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        history, start, best_med, best_state = (
            ck["history"],
            ck["step"],
            ck["best_med"],
            ck["best_state"],
        )
    rng = np.random.default_rng([cfg.seed, start])
    bar = tqdm(
        total=cfg.steps, initial=start, desc="second stage", unit="step", disable=not progress
    )
    losses: list[float] = []
    for step in range(start + 1, cfg.steps + 1):
        model.train()
        batch = [
            _sample(train[int(k)], cfg, rng) for k in rng.integers(len(train), size=cfg.batch_size)
        ]
        x = torch.stack([b[0] for b in batch]).to(device)
        h = torch.stack([b[1] for b in batch]).to(device)
        known = torch.stack([b[2] for b in batch]).to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), h, known)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            err = patch_errors(model, val, cfg, device)
            med = float(np.median(err))
            history.append(
                {
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "val_median_mm": med,
                    "val_worst_mm": float(np.max(err)),
                }
            )
            losses = []
            if med < best_med:
                best_med = med
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            tmp = last.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optim": opt.state_dict(),
                    "history": history,
                    "step": step,
                    "best_med": best_med,
                    "best_state": best_state,
                },
                tmp,
            )
            tmp.replace(last)
            bar.set_postfix(val_median=f"{med:.2f} mm")
    bar.close()
    model.load_state_dict(best_state)
    return StageTwoResult(model.eval(), history)


def sdr(
    errors_mm: NDArray[np.float64], thresholds: Sequence[float] = SDR_THRESHOLDS_MM
) -> dict[str, float]:
    """Share of errors strictly below each threshold, keyed by the threshold ("0.5")."""
    e = np.asarray(errors_mm, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    return {f"{t:g}": float(np.mean(e < t)) if e.size else math.nan for t in thresholds}
