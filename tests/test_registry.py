"""Model versions: registering bundles (verified), promotion, resolving the bundle in use."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.config import SHIPPED_BUNDLE, NodeConfig
from dicomnode.db import migrate
from dicomnode.db.models import Event, ModelVersion
from dicomnode.db.session import make_engine, session_factory, session_scope
from dicomnode.learn.registry import (
    RegistryError,
    active_model,
    promote,
    register_bundle,
    resolve_bundle,
    rollback,
)
from glipcore.bundle import BundleError, read_manifest


def copy_bundle(dst: Path, *, rename: str | None = None) -> Path:
    """A copy of the shipped bundle (weights and bundle.json only); ``rename`` changes its
    name, hence its version, while its checksums stay valid."""
    dst.mkdir(parents=True)
    for f in ("bundle.json", *(fold.file for fold in read_manifest(SHIPPED_BUNDLE)[0].folds)):
        shutil.copy2(SHIPPED_BUNDLE / f, dst / f)
    if rename is not None:
        data = json.loads((dst / "bundle.json").read_text())
        data["name"] = rename
        (dst / "bundle.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return dst


def tamper(bundle: Path) -> None:
    """Flip one byte near the end of the weights file."""
    f = bundle / "fold0.pt"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    migrate.upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_scope(session_factory(engine)) as s:
        yield s


def test_register_shipped_bundle_is_verified_and_idempotent(session: Session) -> None:
    _, version = read_manifest(SHIPPED_BUNDLE)
    mv = register_bundle(session, SHIPPED_BUNDLE)
    assert mv.version == version
    name = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text())["name"]
    assert name.startswith("phantom-glip") and mv.version == f"{name}-{mv.sha256[:12]}"
    assert mv.sha256.startswith(version.rsplit("-", 1)[1]) and len(mv.sha256) == 64
    assert mv.trained_on_phantom is True
    assert mv.active is False
    assert mv.path == str(SHIPPED_BUNDLE.resolve())
    assert mv.metrics is not None
    manifest = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text())
    meta = manifest["metadata"]
    assert mv.metrics["cv_median_mm"] == pytest.approx(meta["cv_median_mm"])
    assert mv.metrics["test"]["cases"] == meta["test"]["cases"]
    assert mv.metrics["folds"] == [f["metrics"] for f in manifest["folds"]]
    again = register_bundle(session, SHIPPED_BUNDLE)
    assert again.id == mv.id
    assert len(session.scalars(select(ModelVersion)).all()) == 1


def test_tampered_bundle_is_refused(session: Session, tmp_path: Path) -> None:
    bad = copy_bundle(tmp_path / "bad")
    tamper(bad)
    with pytest.raises(BundleError, match="checksum mismatch"):
        register_bundle(session, bad)
    assert session.scalars(select(ModelVersion)).all() == []
    with pytest.raises(BundleError, match="not a model bundle"):
        register_bundle(session, tmp_path / "nowhere")


def test_promote_keeps_exactly_one_active(session: Session, tmp_path: Path) -> None:
    a = register_bundle(session, SHIPPED_BUNDLE)
    b = register_bundle(session, copy_bundle(tmp_path / "b", rename="phantom-glip-b"))
    assert a.version != b.version
    assert active_model(session) is None
    promote(session, a.version)
    assert active_model(session) is not None
    assert active_model(session).version == a.version  # type: ignore[union-attr]
    promoted = promote(session, b.version)
    assert promoted.promoted_at is not None
    session.expire_all()
    active = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
    assert [m.version for m in active] == [b.version]
    events = session.scalars(select(Event).where(Event.kind == "model_promoted")).all()
    assert len(events) == 2
    assert events[1].detail is not None and f"replaces {a.version}" in events[1].detail


def test_rollback_returns_to_the_previous_version(session: Session, tmp_path: Path) -> None:
    from datetime import timedelta

    from dicomnode.db.models import utcnow

    with pytest.raises(RegistryError, match="no active model version"):
        rollback(session)
    a = register_bundle(session, SHIPPED_BUNDLE)
    b = register_bundle(session, copy_bundle(tmp_path / "b", rename="phantom-glip-b"))
    t0 = utcnow()
    promote(session, a.version, now=t0)
    promote(session, b.version, now=t0 + timedelta(seconds=1))
    back = rollback(session, now=t0 + timedelta(seconds=2))
    assert back is not None and back.version == a.version
    assert active_model(session).version == a.version  # type: ignore[union-attr]
    again = rollback(session, now=t0 + timedelta(seconds=3))
    assert again is not None and again.version == b.version


def test_rollback_of_the_first_promotion_returns_to_the_configuration(
    session: Session, tmp_path: Path
) -> None:
    b = register_bundle(session, copy_bundle(tmp_path / "b", rename="phantom-glip-b"))
    promote(session, b.version)
    assert rollback(session) is None
    assert active_model(session) is None


def test_promote_unknown_version_lists_known(session: Session) -> None:
    mv = register_bundle(session, SHIPPED_BUNDLE)
    with pytest.raises(RegistryError, match="unknown model version 'nope'") as info:
        promote(session, "nope")
    assert mv.version in str(info.value)


def test_promote_refuses_a_bundle_changed_after_registration(
    session: Session, tmp_path: Path
) -> None:
    copy = copy_bundle(tmp_path / "c", rename="phantom-glip-c")
    mv = register_bundle(session, copy)
    tamper(copy)
    with pytest.raises(RegistryError, match="checksum mismatch"):
        promote(session, mv.version)
    assert active_model(session) is None


def test_resolve_bundle_prefers_the_active_version(session: Session, tmp_path: Path) -> None:
    cfg = NodeConfig(var_dir=tmp_path / "var")
    assert resolve_bundle(session, cfg) == SHIPPED_BUNDLE.resolve()
    registered = session.scalars(select(ModelVersion)).all()
    assert [m.path for m in registered] == [str(SHIPPED_BUNDLE.resolve())]
    assert active_model(session) is None  # registered, not promoted
    other = register_bundle(session, copy_bundle(tmp_path / "d", rename="phantom-glip-d"))
    promote(session, other.version)
    assert resolve_bundle(session, cfg) == tmp_path / "d"
    shutil.rmtree(tmp_path / "d")
    with pytest.raises(RegistryError, match="holds no bundle"):
        resolve_bundle(session, cfg)
