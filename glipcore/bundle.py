"""Model bundle: fold weights + model/preprocessing config + metadata, with checksums.

Layout of a bundle directory::

    bundle.json      format, name, landmarks (the network's channels, by name: the hinge
                     points and optionally the coronary ostia), model, preprocessing,
                     decoding, folds (file + sha256 each), metadata (training facts)
    fold0.pt ...     state dicts (fp16 storage allowed)

The model version is ``<name>-<first 12 hex digits of sha256(bundle.json)>``; since
bundle.json holds every weight file's checksum, the version pins the weights too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import glipcore
from glipcore.landmarks import check_landmarks
from glipcore.preprocess import Preprocessing
from glipcore.unet_config import UNetConfig

if TYPE_CHECKING:  # torch is imported by save_bundle / load_bundle only: reading a
    import torch  # manifest (read_manifest) stays light for the node's commands

    from glipcore.unet import UNet3D

BUNDLE_FORMAT = 1
MANIFEST_NAME = "bundle.json"


class BundleError(ValueError):
    """A bundle that is missing, corrupt, tampered with or made for other code."""


class FoldEntry(BaseModel):
    """One fold's weights file and its checksum."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics: dict[str, float] = Field(default_factory=dict)


class BundleManifest(BaseModel):
    """The content of bundle.json."""

    model_config = ConfigDict(extra="forbid")

    format: int = BUNDLE_FORMAT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    landmarks: tuple[str, ...] = glipcore.LANDMARKS
    model: UNetConfig
    preprocessing: Preprocessing
    sigma_mm: float = Field(gt=0)
    loss: str = "glip"
    refine: str = "hybrid"
    ensemble: Literal["heatmap", "coordinate"] = "heatmap"
    trained_on: Literal["phantom", "patients"]
    folds: list[FoldEntry]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("landmarks")
    @classmethod
    def _known_landmarks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_landmarks(v)

    @model_validator(mode="after")
    def _one_channel_per_landmark(self) -> BundleManifest:
        if self.model.out_channels != len(self.landmarks):
            raise ValueError(
                f"the model has {self.model.out_channels} output channels but the bundle "
                f"names {len(self.landmarks)} landmarks ({', '.join(self.landmarks)})"
            )
        return self


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, fold models (eval mode, fp32) and version."""

    path: Path
    manifest: BundleManifest
    models: tuple[UNet3D, ...]
    version: str

    @property
    def phantom_trained(self) -> bool:
        return self.manifest.trained_on == "phantom"


def save_bundle(
    out_dir: Path,
    *,
    name: str,
    landmarks: Sequence[str] = glipcore.LANDMARKS,
    model_cfg: UNetConfig,
    preprocessing: Preprocessing,
    sigma_mm: float,
    fold_states: Sequence[dict[str, torch.Tensor]],
    fold_metrics: Sequence[dict[str, float]] | None = None,
    trained_on: Literal["phantom", "patients"],
    metadata: dict[str, Any] | None = None,
    loss: str = "glip",
    refine: str = "hybrid",
    ensemble: Literal["heatmap", "coordinate"] = "heatmap",
    fp16: bool = True,
) -> Path:
    """Write a bundle directory (replacing an existing one) and return its path."""
    import torch

    if not fold_states:
        raise ValueError("a bundle needs at least one fold's weights")
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    folds = []
    for i, state in enumerate(fold_states):
        st = {
            k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in state.items()
        }
        f = tmp / f"fold{i}.pt"
        torch.save(st, f)
        m = dict(fold_metrics[i]) if fold_metrics else {}
        folds.append(FoldEntry(file=f.name, sha256=sha256_file(f), metrics=m))
    meta = dict(metadata or {})
    meta.setdefault("code_version", glipcore.__version__)
    manifest = BundleManifest(
        name=name,
        landmarks=tuple(landmarks),
        model=model_cfg,
        preprocessing=preprocessing,
        sigma_mm=sigma_mm,
        loss=loss,
        refine=refine,
        ensemble=ensemble,
        trained_on=trained_on,
        folds=folds,
        metadata=meta,
    )
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (tmp / MANIFEST_NAME).write_text(text)
    if out.exists():
        for f in [*out.glob("fold*.pt"), out / MANIFEST_NAME]:
            f.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


def read_manifest(path: Path) -> tuple[BundleManifest, str]:
    """Parse and validate bundle.json; returns it with the model version string."""
    mpath = Path(path) / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{path} is not a model bundle: {MANIFEST_NAME} is missing")
    raw = mpath.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: bundle format {fmt!r} does not match this code's format {BUNDLE_FORMAT}; "
            "use a glip-node version that matches the bundle, or retrain"
        )
    try:
        manifest = BundleManifest.model_validate(data)
    except ValidationError as e:
        raise BundleError(f"{mpath} does not match this code's bundle schema:\n{e}") from e
    version = f"{manifest.name}-{hashlib.sha256(raw).hexdigest()[:12]}"
    return manifest, version


def load_bundle(path: Path) -> Bundle:
    """Load and verify a bundle: schema, checksums, and that the weights fit the model."""
    import torch

    from glipcore.unet import build_unet

    path = Path(path)
    manifest, version = read_manifest(path)
    models = []
    for fold in manifest.folds:
        f = path / fold.file
        if not f.is_file():
            raise BundleError(f"{path}: weights file {fold.file} is missing")
        digest = sha256_file(f)
        if digest != fold.sha256:
            raise BundleError(
                f"{path}: checksum mismatch for {fold.file} (expected {fold.sha256[:12]}..., "
                f"found {digest[:12]}...): the bundle was modified or corrupted"
            )
        state = torch.load(f, map_location="cpu", weights_only=True)
        model = build_unet(manifest.model)
        try:
            model.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            )
        except RuntimeError as e:
            raise BundleError(f"{path}: {fold.file} does not fit the model config: {e}") from e
        model.eval()
        models.append(model)
    if not models:
        raise BundleError(f"{path}: the bundle lists no folds")
    return Bundle(path=path, manifest=manifest, models=tuple(models), version=version)
