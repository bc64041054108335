"""Training: one fold, k-fold cross-validation with a sigma x lambda grid, the fold
ensemble on the held-out test set, and the model bundle.

As the paper: Adam (lr 1e-3), cases split 4:1 into CV and test, k = 4 folds on the CV part,
the setting with the lowest CV median landmark error wins, and the test set is predicted
by the winning setting's fold ensemble. Validation runs every epoch on whole model-grid
volumes and keeps the checkpoint with the lowest median error in mm (not the lowest loss).

The model predicts the configuration's ``landmarks`` (the hinge points, optionally the
coronary ostia); a case without truth for a landmark is masked out of the loss and of the
errors (NaN, left out of medians).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

import glipcore
from glipcore.bundle import save_bundle
from glipcore.dataset import (
    Augment,
    BatchStream,
    Case,
    CropConfig,
    ModelGridCache,
    describe,
)
from glipcore.landmarks import check_landmarks, with_truth
from glipcore.losses import make_loss
from glipcore.manifest import read_manifest
from glipcore.metrics import euclidean_errors
from glipcore.phantom_cases import PhantomData, phantom_cases
from glipcore.predict import decode_ensemble, infer_heatmaps, pick_device, set_threads
from glipcore.preprocess import Preprocessing
from glipcore.unet import UNetConfig, build_unet
from glipcore.volume import Volume

# ---------------------------------------------------------------------------- config


class DataConfig(BaseModel):
    """Where the labelled cases come from: a manifest, or generated phantoms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Path | None = None
    phantom: PhantomData | None = None
    cache_dir: Path = Path("runs/cache")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.phantom is None):
            raise ValueError("data: give exactly one of 'manifest' or 'phantom'")
        return self


class LossConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "glip"
    variant: Literal["code", "paper"] = "code"


class GridConfig(BaseModel):
    """The hyper-parameter grid searched by cross-validation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sigma_mm: tuple[float, ...] = (1.0,)
    lam: tuple[float, ...] = (10.0,)


class OptimConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2, ge=1)
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    plateau_patience: int = Field(3, ge=0)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-5, ge=0)


class CVConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    test_fraction: float = Field(0.2, ge=0, lt=1)
    folds: int = Field(4, ge=2)
    train_folds: tuple[int, ...] | None = Field(
        None, description="fold indices to train (None: all); the shipped CPU model trains one"
    )
    val_max_cases: int | None = Field(None, ge=1, description="cap on validation cases/epoch")


class TrainConfig(BaseModel):
    """Everything ``glip train`` needs; loaded from YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("glip-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    landmarks: tuple[str, ...] = Field(
        glipcore.LANDMARKS,
        description="predicted landmarks in channel order: the hinge points RCC, LCC, NCC "
        "and optionally the coronary ostia LCO, RCO",
    )
    out_dir: Path = Path("runs/glip-model")
    bundle_dir: Path | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    init_from: Path | None = Field(
        None,
        description="a bundle folder whose weights (fold f, else its last fold) start each "
        "fold: fine-tuning; the model config must match the bundle's except the landmarks: "
        "landmarks the bundle predicts keep their output channel, new ones start fresh",
    )
    data: DataConfig
    preprocessing: Preprocessing = Preprocessing()
    model: UNetConfig = UNetConfig()
    loss: LossConfig = LossConfig()
    grid: GridConfig = GridConfig()
    crop: CropConfig = CropConfig()
    augment: Augment = Augment()
    optim: OptimConfig = OptimConfig()
    cv: CVConfig = CVConfig()

    @field_validator("landmarks")
    @classmethod
    def _known_landmarks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_landmarks(v)

    @model_validator(mode="before")
    @classmethod
    def _derive_out_channels(cls, data: Any) -> Any:
        """model.out_channels defaults to the number of landmarks when not given."""
        if not isinstance(data, dict) or "landmarks" not in data:
            return data
        model = data.get("model", {})
        if isinstance(model, dict) and "out_channels" not in model:
            data = {**data, "model": {**model, "out_channels": len(tuple(data["landmarks"]))}}
        return data

    @model_validator(mode="after")
    def _channels_match_landmarks(self) -> TrainConfig:
        if self.model.out_channels != len(self.landmarks):
            raise ValueError(
                f"model.out_channels is {self.model.out_channels} but {len(self.landmarks)} "
                f"landmarks are configured ({', '.join(self.landmarks)}): set out_channels to "
                f"{len(self.landmarks)} or leave it out"
            )
        return self


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config; relative paths resolve against the current directory."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping")
    for k, v in (overrides or {}).items():
        data[k] = v
    return TrainConfig.model_validate(data)


# ---------------------------------------------------------------------------- data


def load_cases(cfg: TrainConfig, progress: bool = True) -> tuple[list[Case], dict[str, Any]]:
    """The labelled cases on the model grid, plus facts for the bundle metadata."""
    cache = ModelGridCache(cfg.data.cache_dir, cfg.preprocessing)
    if cfg.data.manifest is not None:
        rows = read_manifest(cfg.data.manifest)
        digest = hashlib.sha256(Path(cfg.data.manifest).read_bytes()).hexdigest()
        return cache.load_cases(rows, progress), {"manifest_sha256": digest, "source": "manifest"}
    if cfg.data.phantom is None:
        raise ValueError("training data: set data.manifest or data.phantom in the configuration")
    return phantom_cases(cfg.data.phantom, cfg.preprocessing, cfg.data.cache_dir, progress)


# ---------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Test ids and k (train ids, validation ids) folds, reproducible from the seed."""

    test: tuple[str, ...]
    folds: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]


def make_split(case_ids: Sequence[str], seed: int, test_fraction: float, k: int) -> Split:
    """Shuffle ids with ``seed``; the first ``test_fraction`` are the test set; the rest
    form k folds (fold f validates on the f-th chunk and trains on the others)."""
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case ids must be unique")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n_test = round(test_fraction * len(ids))
    test, cv = shuffled[:n_test], shuffled[n_test:]
    if len(cv) < k:
        raise ValueError(f"{len(cv)} cross-validation cases cannot make {k} folds")
    chunks = [cv[f::k] for f in range(k)]
    folds = tuple(
        (tuple(c for g, ch in enumerate(chunks) if g != f for c in ch), tuple(chunks[f]))
        for f in range(k)
    )
    return Split(tuple(test), folds)


# ---------------------------------------------------------------------------- one fold


def predict_cases(
    models: Sequence[torch.nn.Module],
    cases: Sequence[Case],
    device: torch.device,
    refine: str = "hybrid",
    sharpness: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble-predict (refined, argmax) landmarks (N, L, 3) in LPS mm for model-grid
    cases (their arrays are already preprocessed). ``sharpness``, when given, receives
    each case's per-landmark peak sharpness (L,)."""
    refined, argmax = [], []
    for case in cases:
        image = torch.from_numpy(np.ascontiguousarray(case.volume.array, dtype=np.float32))
        maps = [infer_heatmaps(m, image, device=device) for m in models]
        final, arg, _, conf = decode_ensemble(maps, case.volume.affine, refine=refine)
        refined.append(final)
        argmax.append(arg)
        if sharpness is not None:
            sharpness.append(np.array([c.sharpness for c in conf]))
    return np.stack(refined), np.stack(argmax)


@dataclass(frozen=True)
class FoldResult:
    """The best checkpoint of one fold and its validation errors (N, L) in mm."""

    fold: int
    best_epoch: int
    best_median_mm: float
    best_state: dict[str, torch.Tensor]
    val_errors_mm: np.ndarray
    history: list[dict[str, float]]


def _checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train_fold(
    cfg: TrainConfig,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    sigma_mm: float,
    lam: float,
    fold: int,
    out_dir: Path,
    resume: bool = True,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FoldResult:
    """Train one fold; validate every epoch by median landmark error (mm) on whole
    model-grid volumes; keep the best checkpoint; resume from ``last.pt`` if present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        set_threads(cfg.threads)
    seed = cfg.seed * 1000 + fold
    torch.manual_seed(seed)
    model = build_unet(cfg.model)
    if cfg.init_from is not None:
        model.load_state_dict(
            initial_weights(cfg.init_from, fold, cfg.landmarks, model.state_dict())
        )
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    loss_fn = make_loss(cfg.loss.name, lam=lam, variant=cfg.loss.variant)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=cfg.optim.plateau_factor,
        patience=cfg.optim.plateau_patience,
        min_lr=cfg.optim.min_lr,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    history: list[dict[str, float]] = []
    best = (math.inf, -1)
    best_state: dict[str, torch.Tensor] = {}
    best_errors = np.zeros((0, len(cfg.landmarks)))
    start = 0
    last = out_dir / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        history, start = ck["history"], ck["epoch"] + 1
        best, best_state, best_errors = tuple(ck["best"]), ck["best_state"], ck["best_errors"]
    pad = 0.0  # scaled value of hu_min: air
    val = list(val_cases)[: cfg.cv.val_max_cases] if cfg.cv.val_max_cases else list(val_cases)
    for epoch in range(start, cfg.optim.epochs):
        t0 = time.perf_counter()
        model.train()
        stream = BatchStream(
            train_cases,
            cfg.crop,
            sigma_mm,
            cfg.optim.batch_size,
            seed=seed * 10_000 + epoch,
            augment=cfg.augment,
            pad_value=pad,
            landmarks=cfg.landmarks,
        )
        losses = []
        bar = tqdm(
            zip(range(cfg.optim.steps_per_epoch), stream, strict=False),
            total=cfg.optim.steps_per_epoch,
            desc=f"fold {fold} epoch {epoch + 1}/{cfg.optim.epochs}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        try:
            for _, (x, h, known) in bar:
                x, h, known = x.to(device), h.to(device), known.to(device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
                    out = model(x)
                loss = loss_fn(out.float(), h, known)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        finally:
            stream.close()
        t_train = time.perf_counter() - t0
        model.eval()
        refined, argmax = predict_cases([model], val, device)
        truth = np.stack([c.points(cfg.landmarks) for c in val])
        err = euclidean_errors(refined, truth)  # NaN where a case lacks the landmark
        err_arg = euclidean_errors(argmax, truth)
        med = float(np.nanmedian(err))
        sched.step(med)
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "val_median_mm": med,
            "val_mean_mm": float(np.nanmean(err)),
            "val_worst_mm": float(np.nanmax(err)),
            "val_median_argmax_mm": float(np.nanmedian(err_arg)),
            "lr": float(opt.param_groups[0]["lr"]),
            "train_s": t_train,
            "steps_per_s": cfg.optim.steps_per_epoch / t_train,
            "val_s": time.perf_counter() - t0 - t_train,
        }
        history.append(row)
        if med < best[0]:
            best = (med, epoch + 1)
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_errors = err
        _checkpoint(
            last,
            {
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "sched": sched.state_dict(),
                "history": history,
                "epoch": epoch,
                "best": list(best),
                "best_state": best_state,
                "best_errors": best_errors,
            },
        )
        _write_log(out_dir, history)
        if progress:
            tqdm.write(
                f"fold {fold} epoch {epoch + 1}: loss {row['loss']:.4f}  val median "
                f"{med:.2f} mm (argmax {row['val_median_argmax_mm']:.2f})  worst "
                f"{row['val_worst_mm']:.2f} mm  {row['steps_per_s']:.2f} steps/s"
            )
        if on_epoch:
            on_epoch(row)
    return FoldResult(fold, best[1], best[0], best_state, best_errors, history)


def initial_weights(
    bundle_dir: Path,
    fold: int,
    landmarks: Sequence[str] | None = None,
    fresh: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Fold ``fold``'s weights of a verified bundle (its last fold when it has fewer).

    With ``landmarks`` (the new model's channel order) that differ from the bundle's, the
    output head is remapped by name: a landmark the bundle predicts keeps its head row, a
    new one takes its row from ``fresh`` (the new model's own initial weights). This is how
    a five-landmark model starts from a three-landmark one: its hinge channels begin where
    the old model ended instead of competing from scratch with the new ones.
    """
    from glipcore.bundle import load_bundle

    bundle = load_bundle(Path(bundle_dir))
    state = dict(bundle.models[min(fold, len(bundle.models) - 1)].state_dict())
    old = tuple(bundle.manifest.landmarks)
    if landmarks is None or tuple(landmarks) == old:
        return state
    if fresh is None:
        raise ValueError("remapping the head to new landmarks needs the new model's weights")
    for key in _HEAD_KEYS:
        rows = [
            state[key][old.index(n)] if n in old else fresh[key][i] for i, n in enumerate(landmarks)
        ]
        state[key] = torch.stack(rows).clone()
    return state


_HEAD_KEYS = ("head.weight", "head.bias")


def _write_log(out_dir: Path, history: list[dict[str, float]]) -> None:
    (out_dir / "log.json").write_text(json.dumps(history, indent=1))
    with open(out_dir / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


# ---------------------------------------------------------------------------- CV


def naive_offsets(
    cases: Sequence[Case], prep: Preprocessing, landmarks: Sequence[str] = glipcore.LANDMARKS
) -> np.ndarray:
    """Mean offset (L, 3) mm of each landmark from the contrast-blood centroid, over the
    cases that know it: the naive baseline adds these to a test case's blood centroid (see
    :func:`naive_predict`)."""
    check_coverage(cases, landmarks)
    diffs = [c.points(landmarks) - blood_centroid(c.volume, prep) for c in cases]
    return np.asarray(np.nanmean(diffs, axis=0), dtype=np.float64)


def check_coverage(cases: Sequence[Case], landmarks: Sequence[str]) -> None:
    """ValueError naming the landmarks that no case has truth for (nothing to learn)."""
    known = with_truth(landmarks, (c.points(landmarks) for c in cases))
    missing = [n for n in landmarks if n not in known]
    if missing:
        raise ValueError(f"no training case has truth for {missing}")


def blood_centroid(vol: Volume, prep: Preprocessing, hu: tuple[float, float] = (200, 600)) -> Any:
    """LPS centroid of voxels in the contrast-blood HU range (model-grid volume)."""
    v = prep.unscale(vol.array)
    zyx = np.argwhere((v >= hu[0]) & (v <= hu[1]))
    if len(zyx) == 0:
        raise ValueError("no contrast-filled voxels found")
    return vol.to_lps(zyx.mean(axis=0)[::-1].copy())


def naive_predict(vol: Volume, prep: Preprocessing, offsets: np.ndarray) -> np.ndarray:
    """The naive baseline: blood centroid + the training set's mean offsets."""
    return np.asarray(blood_centroid(vol, prep) + offsets)


@dataclass(frozen=True)
class RunResult:
    """What ``glip train`` produced."""

    bundle_dir: Path
    summary: dict[str, Any]


def run(cfg: TrainConfig, *, resume: bool = True, progress: bool = True) -> RunResult:
    """Cross-validate the grid, pick the setting by CV median error, evaluate the fold
    ensemble on the test set, and write the bundle."""
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    cases, data_meta = load_cases(cfg, progress)
    check_coverage(cases, cfg.landmarks)
    by_id = {c.case_id: c for c in cases}
    split = make_split(list(by_id), cfg.seed, cfg.cv.test_fraction, cfg.cv.folds)
    folds = cfg.cv.train_folds if cfg.cv.train_folds is not None else range(cfg.cv.folds)
    results: dict[tuple[float, float], list[FoldResult]] = {}
    for sigma, lam in itertools.product(cfg.grid.sigma_mm, cfg.grid.lam):
        for f in folds:
            tr, va = split.folds[f]
            results.setdefault((sigma, lam), []).append(
                train_fold(
                    cfg,
                    [by_id[i] for i in tr],
                    [by_id[i] for i in va],
                    sigma_mm=sigma,
                    lam=lam,
                    fold=f,
                    out_dir=out / f"sigma{sigma:g}-lambda{lam:g}" / f"fold{f}",
                    resume=resume,
                    progress=progress,
                )
            )
    cv_scores = {
        k: float(np.nanmedian(np.concatenate([r.val_errors_mm.ravel() for r in v])))
        for k, v in results.items()
    }
    (sigma, lam), cv_median = min(cv_scores.items(), key=lambda kv: kv[1])
    chosen = results[(sigma, lam)]
    device = pick_device(cfg.device)
    models = []
    for r in chosen:
        m = build_unet(cfg.model)
        m.load_state_dict(r.best_state)
        models.append(m.to(device).eval())
    test_cases = [by_id[i] for i in split.test]
    train_ids = {i for i in by_id if i not in set(split.test)}
    test_metrics: dict[str, Any] = {}
    if test_cases:
        sharp: list[np.ndarray] = []
        refined, argmax = predict_cases(models, test_cases, device, sharpness=sharp)
        truth = np.stack([c.points(cfg.landmarks) for c in test_cases])
        err, err_arg = euclidean_errors(refined, truth), euclidean_errors(argmax, truth)
        test_metrics = {
            "cases": len(test_cases),
            "median_mm": float(np.nanmedian(err)),
            "worst_mm": float(np.nanmax(err)),
            "median_argmax_mm": float(np.nanmedian(err_arg)),
            "median_per_landmark_mm": _per_landmark_medians(err),
            "median_sharpness": float(np.median(np.stack(sharp))),
        }
    offsets = naive_offsets([by_id[i] for i in sorted(train_ids)], cfg.preprocessing, cfg.landmarks)
    summary = {
        "name": cfg.name,
        "chosen": {"sigma_mm": sigma, "lambda": lam, "cv_median_mm": cv_median},
        "cv_scores": [
            {"sigma_mm": s, "lambda": la, "cv_median_mm": v} for (s, la), v in cv_scores.items()
        ],
        "folds": [
            {"fold": r.fold, "best_epoch": r.best_epoch, "val_median_mm": r.best_median_mm}
            for r in chosen
        ],
        "test": test_metrics,
        "train_wall_s": time.perf_counter() - t_start,
        "data": {**data_meta, **describe(cases)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    bundle_dir = cfg.bundle_dir or out / "bundle"
    save_bundle(
        bundle_dir,
        name=cfg.name,
        landmarks=cfg.landmarks,
        model_cfg=cfg.model,
        preprocessing=cfg.preprocessing,
        sigma_mm=sigma,
        fold_states=[r.best_state for r in chosen],
        fold_metrics=[{"val_median_mm": r.best_median_mm} for r in chosen],
        trained_on="patients" if data_meta.get("source") == "manifest" else "phantom",
        loss=cfg.loss.name,
        metadata={
            **data_meta,
            "seed": cfg.seed,
            "lambda": lam,
            "loss_variant": cfg.loss.variant,
            "crop_size_zyx": list(cfg.crop.size_zyx),
            "optim": cfg.optim.model_dump(mode="json"),
            "cv_median_mm": cv_median,
            "test": test_metrics,
            # Half the median peak sharpness on the CV test set: the confidence score's
            # reference (glipcore.predict.SHARPNESS_REF is the fallback).
            **(
                {"sharpness_ref": round(0.5 * test_metrics["median_sharpness"], 1)}
                if test_metrics
                else {}
            ),
            "split_test_ids_sha256": hashlib.sha256(
                json.dumps(list(split.test)).encode()
            ).hexdigest(),
            "naive_offsets_mm": offsets.round(4).tolist(),
            "train_wall_s": round(time.perf_counter() - t_start, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "glipcore": glipcore.__version__,
        },
    )
    return RunResult(Path(bundle_dir), summary)


def _per_landmark_medians(err: np.ndarray) -> list[float | None]:
    """Median error (mm) of each landmark column of (N, L); None where no case knows it."""
    return [round(float(np.nanmedian(col)), 3) if np.isfinite(col).any() else None for col in err.T]
