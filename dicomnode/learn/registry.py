"""Model versions known to the node, and which one is active.

The active model version lives in the database (``model_versions.active``, exactly one or
none); the configuration's bundle (``model.bundle``, default: the shipped phantom model) is
the embedded default used while none is active. Registering a bundle loads it with
:func:`glipcore.bundle.load_bundle`, which verifies its schema and weight checksums, so a
modified or corrupted bundle is never registered or promoted.

The functions take a session and do not commit: the caller's transaction does.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.db.models import Event, ModelVersion, utcnow

if TYPE_CHECKING:
    from glipcore.bundle import BundleManifest

# glipcore.bundle imports torch (about a second): it is imported where a bundle is read, so
# that `dicomnode` commands that never read one start quickly.

__all__ = [
    "RegistryError",
    "active_model",
    "known_versions",
    "previous_version",
    "promote",
    "register_bundle",
    "resolve_bundle",
    "rollback",
]

# Keys of a bundle's training metadata copied into ModelVersion.metrics when present.
_METRIC_KEYS = ("cv_median_mm", "test", "phantom_generator_version", "phantom_cases", "source")


class RegistryError(ValueError):
    """A model version that is unknown, or whose bundle is missing or has changed."""


def _metrics(manifest: BundleManifest) -> dict[str, Any] | None:
    meta = manifest.metadata
    out: dict[str, Any] = {k: meta[k] for k in _METRIC_KEYS if k in meta}
    folds = [dict(f.metrics) for f in manifest.folds if f.metrics]
    if folds:
        out["folds"] = folds
    return out or None


def register_bundle(session: Session, path: Path) -> ModelVersion:
    """Verify the bundle at ``path`` and record its model version (idempotent by version).

    Raises :class:`glipcore.bundle.BundleError` when the bundle is missing, malformed or
    fails its checksums. A known version whose recorded folder no longer exists takes the
    new path.
    """
    from glipcore.bundle import MANIFEST_NAME, load_bundle

    path = Path(path).expanduser().resolve()
    bundle = load_bundle(path)
    existing = session.scalars(
        select(ModelVersion).where(ModelVersion.version == bundle.version)
    ).one_or_none()
    if existing is not None:
        if existing.path != str(path) and not Path(existing.path).is_dir():
            existing.path = str(path)
            session.flush()
        return existing
    sha = hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest()
    mv = ModelVersion(
        name=bundle.manifest.name,
        version=bundle.version,
        path=str(path),
        sha256=sha,
        trained_on_phantom=bundle.phantom_trained,
        active=False,
        metrics=_metrics(bundle.manifest),
        created_at=utcnow(),
    )
    session.add(mv)
    session.flush()
    session.add(
        Event(
            at=mv.created_at,
            kind="model_registered",
            detail=f"{mv.version} registered from {path}",
        )
    )
    return mv


def known_versions(session: Session) -> list[ModelVersion]:
    """Every registered model version, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def active_model(session: Session) -> ModelVersion | None:
    """The active model version, or None when the configuration's bundle is used."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.active.is_(True)).order_by(ModelVersion.id)
    ).first()


def _verify(mv: ModelVersion) -> None:
    """Raise :class:`RegistryError` unless ``mv``'s folder still holds exactly that version."""
    from glipcore.bundle import BundleError, load_bundle

    path = Path(mv.path)
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise RegistryError(f"model version {mv.version} cannot be used: {exc}") from None
    if bundle.version != mv.version:
        raise RegistryError(
            f"the bundle at {path} is now version {bundle.version}, not {mv.version}: it was "
            "replaced after registration; register it again (`dicomnode models register`)"
        )


def promote(
    session: Session, version: str, *, verify: bool = True, now: datetime | None = None
) -> ModelVersion:
    """Make ``version`` the one active model version; records an Event ``model_promoted``.

    With ``verify`` (the default) the bundle is loaded again first, so a bundle changed or
    removed since registration is refused. Unknown versions raise :class:`RegistryError`
    naming the known ones.
    """
    now = now or utcnow()
    mv = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).one_or_none()
    if mv is None:
        known = [m.version for m in known_versions(session)]
        listed = (
            ", ".join(known) if known else "none (register one with `dicomnode models register`)"
        )
        raise RegistryError(f"unknown model version {version!r}; known versions: {listed}")
    if verify:
        _verify(mv)
    previous = active_model(session)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.id != mv.id, ModelVersion.active.is_(True))
        .values(active=False)
        .execution_options(synchronize_session="fetch")
    )
    mv.active = True
    mv.promoted_at = now
    was = previous.version if previous is not None and previous.id != mv.id else None
    detail = f"{mv.version} promoted" + (f" (replaces {was})" if was else "")
    session.add(Event(at=now, kind="model_promoted", detail=detail))
    session.flush()
    return mv


def previous_version(session: Session) -> ModelVersion | None:
    """The version promoted most recently before the active one (None when none was)."""
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.active.is_(False), ModelVersion.promoted_at.is_not(None))
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
    ).first()


def rollback(session: Session, *, now: datetime | None = None) -> ModelVersion | None:
    """Promote :func:`previous_version` again (verified). When no other version was ever
    active, the active one is deactivated: the configuration's bundle is used again (None
    is returned). :class:`RegistryError` when nothing is active. A second rollback returns
    to the version rolled back from."""
    now = now or utcnow()
    current = active_model(session)
    if current is None:
        raise RegistryError("no active model version: the configuration's bundle is in use")
    previous = previous_version(session)
    if previous is not None:
        return promote(session, previous.version, now=now)
    current.active = False
    detail = f"{current.version} rolled back to the configuration's bundle"
    session.add(Event(at=now, kind="model_promoted", detail=detail))
    session.flush()
    return None


def resolve_bundle(session: Session, cfg: NodeConfig) -> Path:
    """The bundle folder inference uses: the active model version's, else the configured
    bundle (``cfg.bundle_path``), which is registered (not promoted) on the way."""
    from glipcore.bundle import MANIFEST_NAME

    mv = active_model(session)
    if mv is not None:
        path = Path(mv.path)
        if not (path / MANIFEST_NAME).is_file():
            raise RegistryError(
                f"the active model version {mv.version} points at {path}, which holds no "
                "bundle; restore it or promote another version (`dicomnode models promote`)"
            )
        return path
    return Path(register_bundle(session, cfg.bundle_path).path)
