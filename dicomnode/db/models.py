"""SQLAlchemy models of the node: audit, patients/studies/series/instances, jobs, results,
deliveries, model versions and a state-change log.

The schema is built by the alembic migrations in ``db/migrations``, never by create_all.
All timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID = String(64)
AE = String(16)


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the one clock of the database)."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamp stored as UTC; always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table (named constraints, so migrations can alter them)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class AssociationAudit(Base):
    """One row per association request: who, from where, what arrived, how it ended."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(255))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))  # released|aborted|rejected|error
    reason: Mapped[str | None] = mapped_column(Text)
    requests: Mapped[int] = mapped_column(Integer, default=0)  # C-STORE requests
    stored: Mapped[int] = mapped_column(Integer, default=0)  # new or replaced instances
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)


class Patient(Base):
    """A patient as identified by PatientID + IssuerOfPatientID (empty strings when absent)."""

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer", name="uq_patients_patient_id_issuer"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """A study (StudyInstanceUID)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None]  # archived images removed by retention

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series and its completeness/selection state.

    ``state``: receiving (instances arriving) or complete. ``decision`` (when complete):
    selected, not_selected or superseded, with ``decision_reason``.
    """

    __tablename__ = "series"
    __table_args__ = (Index("ix_series_state_last", "state", "last_received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    frame_of_reference_uid: Mapped[str | None] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    decision: Mapped[str | None] = mapped_column(String(16))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    burst_started_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    completion: Mapped[str | None] = mapped_column(String(16))  # quiet|forced

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """One archived SOP instance and the header facts selection needs."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_fk: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))  # relative to the archive folder
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime]
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str | None] = mapped_column(String(128))
    orientation: Mapped[list[Any] | None]  # 6 direction cosines
    slice_positions: Mapped[list[Any] | None]  # position(s) along the normal, mm, per frame
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    acquisition_number: Mapped[int | None] = mapped_column(Integer)
    temporal_position_index: Mapped[int | None] = mapped_column(Integer)
    trigger_time: Mapped[float | None] = mapped_column(Float)
    cardiac_phase_percent: Mapped[float | None] = mapped_column(Float)
    nominal_interval: Mapped[float | None] = mapped_column(Float)  # R-R interval, ms


class ModelVersion(Base):
    """A model bundle known to the node; ``version`` is name + first 12 hex of its sha256."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(160), unique=True)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    trained_on_phantom: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any] | None]
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]
    # A retrained candidate: the version it was trained from, the gate's decision
    # (passed|refused) with every reason, its comparison with the model active then and how
    # it was trained (configuration, dataset annotation ids + hash, code version).
    parent_version: Mapped[str | None] = mapped_column(String(160))
    decision: Mapped[str | None] = mapped_column(String(16))
    decision_reasons: Mapped[list[Any] | None]
    comparison: Mapped[dict[str, Any] | None]
    training: Mapped[dict[str, Any] | None]


class RetrainLease(Base):
    """The lease of the one running retrain (``name`` = "retrain"); an expired one may be
    taken over, so a crashed retrain does not block the next. ``stage`` is its progress."""

    __tablename__ = "retrain_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    token: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    stage: Mapped[str | None] = mapped_column(String(255))


class Job(Base):
    """Work for the worker: one selected series (and phase).

    ``state``: queued, held (late instances arriving), running, done, failed, superseded
    (a better series of the study took over) or cancelled (the series no longer qualifies).
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    phase_key: Mapped[str | None] = mapped_column(String(64))  # e.g. TemporalPositionIndex
    phase_value: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    model_version_fk: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class Result(Base):
    """What one job produced (landmarks in LPS mm, plane, measurements, confidence)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_version_fk: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16))  # ok|flagged|withheld
    landmarks_lps: Mapped[dict[str, Any] | None]
    plane: Mapped[dict[str, Any] | None]
    measurements: Mapped[dict[str, Any] | None]
    confidence: Mapped[dict[str, Any] | None]
    summary: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model_version: Mapped[str | None] = mapped_column(String(160))
    flags: Mapped[list[Any] | None]  # plausibility findings, readable sentences
    timings: Mapped[dict[str, Any] | None]  # seconds per stage
    outputs: Mapped[dict[str, Any] | None]  # kind -> {sop_instance_uid, series_uid, path}


class Delivery(Base):
    """One output object to one destination. ``state``: pending, sent, dead."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_next", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_fk: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # sr|seg|keyimage
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """One C-STORE attempt of a delivery."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_fk: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[int | None] = mapped_column(Integer)  # DIMSE status
    error: Mapped[str | None] = mapped_column(Text)


class Annotation(Base):
    """Reference landmarks of a study (e.g. drawn by a cardiologist), for retraining.

    ``landmarks_lps``: "RCC", "LCC", "NCC" and, when known, "LCO", "RCO" -> [x, y, z] in
    patient LPS mm. ``source``: csv, sr-file or sr-received (``manual`` for rows written
    by hand); ``source_ref`` names the file (and row) or the archived SR; ``source_uid`` is
    the SR's SOP Instance UID. ``quality``: 1, 2, 3-, 3+, 4 or None. Every version is kept:
    a new annotation of a study ``supersedes`` the study's newest one, which is the one
    used. A study with annotations is never purged by retention.
    """

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_fk: Mapped[int | None] = mapped_column(ForeignKey("series.id"))
    landmarks_lps: Mapped[dict[str, Any]]
    quality: Mapped[str | None] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(64), default="manual")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    annotator: Mapped[str | None] = mapped_column(String(64))
    annotated_at: Mapped[datetime | None]
    source_ref: Mapped[str | None] = mapped_column(String(1024))
    source_uid: Mapped[str | None] = mapped_column(UID, index=True)
    supersedes_fk: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), unique=True)


class Event(Base):
    """A state change (series completed, selected, superseded, job queued, ...)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    series_fk: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    detail: Mapped[str | None] = mapped_column(Text)
