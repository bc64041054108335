"""Model listing: registered versions, the configuration bundle and the version in use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from dicomnode.config import NodeConfig
from dicomnode.db.models import ModelVersion
from dicomnode.db.session import session_factory
from dicomnode.learn.registry import known_versions
from dicomnode.operate.admin.common import from_attrs
from dicomnode.operate.admin.errors import AdminError


@dataclass(frozen=True)
class ModelRow:
    """A registered model version."""

    version: str
    name: str
    active: bool
    trained_on_phantom: bool
    path: str
    sha256: str
    metrics: dict[str, Any] | None
    created_at: datetime
    promoted_at: datetime | None
    parent_version: str | None
    decision: str | None


@dataclass(frozen=True)
class ModelDetail:
    """A model version with its retraining record: the gate's decision and reasons, the
    comparison with the model active when it was trained, and how it was trained."""

    model: ModelRow
    decision_reasons: list[Any] | None
    comparison: dict[str, Any] | None
    training: dict[str, Any] | None


@dataclass(frozen=True)
class ConfigBundle:
    """The configuration's model bundle (used while no version is active)."""

    path: str
    version: str | None
    registered: bool
    error: str | None


@dataclass(frozen=True)
class ModelList:
    """Registered versions, the configuration default and the version in use."""

    versions: list[ModelRow]
    config_default: ConfigBundle
    in_use: str | None


def list_models(engine: Engine, cfg: NodeConfig) -> ModelList:
    """Registered model versions (oldest first), the configuration's bundle and the version
    in use (the active one, else the configuration's). Reads bundle.json only."""
    from glipcore.bundle import BundleError, read_manifest

    with session_factory(engine)() as s:
        versions = [from_attrs(ModelRow, m) for m in known_versions(s)]
    version: str | None = None
    error: str | None = None
    try:
        version = read_manifest(cfg.bundle_path)[1]
    except BundleError as exc:
        error = str(exc).splitlines()[0]
    active = next((v.version for v in versions if v.active), None)
    return ModelList(
        versions=versions,
        config_default=ConfigBundle(
            path=str(cfg.bundle_path),
            version=version,
            registered=any(v.version == version for v in versions),
            error=error,
        ),
        in_use=active or version,
    )


def model_detail(engine: Engine, version: str) -> ModelDetail:
    """One registered version and its retraining record; :class:`AdminError` if unknown."""
    with session_factory(engine)() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one_or_none()
        if mv is None:
            raise AdminError(f"unknown model version {version!r} (see `dicomnode models list`)")
        return ModelDetail(
            model=from_attrs(ModelRow, mv),
            decision_reasons=mv.decision_reasons,
            comparison=mv.comparison,
            training=mv.training,
        )
