"""The typed parts of the status snapshot (`dicomnode status`); JSON-ready."""

from __future__ import annotations

from typing import TypedDict


class TodayCounts(TypedDict):
    since: str
    associations: int
    associations_by_outcome: dict[str, int]
    instances: int
    bytes_received: int


class SeriesCounts(TypedDict):
    receiving: int
    complete: int
    by_decision: dict[str, int]


class JobCounts(TypedDict):
    by_state: dict[str, int]
    queue_depth: int
    oldest_queued_age_s: float | None


class RunningJob(TypedDict):
    id: int
    series_instance_uid: str
    worker_id: str | None
    attempts: int
    started_at: str | None
    age_s: float | None
    heartbeat_age_s: float | None
    lease_expires_in_s: float | None
    lease_expired: bool


class FailedJob(TypedDict):
    id: int
    series_instance_uid: str
    reason: str | None
    attempts: int
    finished_at: str | None


class Failures(TypedDict):
    total: int
    today: int
    recent: list[FailedJob]


class DeadDelivery(TypedDict):
    id: int
    destination: str
    kind: str
    attempts: int
    last_error: str | None
    updated_at: str | None


class DeliveryCounts(TypedDict):
    by_state: dict[str, int]
    pending: int
    dead: int
    due_now: int
    oldest_pending_age_s: float | None
    by_destination: dict[str, dict[str, int]]
    dead_recent: list[DeadDelivery]


class DiskStatus(TypedDict):
    path: str
    free_bytes: int | None
    total_bytes: int | None
    min_free_bytes: int | None
    below_watermark: bool
    error: str | None


class ModelStatus(TypedDict):
    source: str  # "database" (an active version) or "config" (the embedded default)
    version: str | None
    name: str | None
    path: str
    trained_on_phantom: bool | None
    promoted_at: str | None
    error: str | None


class RetrainStatus(TypedDict):
    running: bool  # a retrain holds an unexpired lease
    holder: str | None
    started_at: str | None
    stage: str | None
    last_candidate: str | None  # the newest retrained candidate
    last_decision: str | None  # passed | refused
    last_at: str | None
    last_active: bool | None  # the candidate is the active model


class SchemaStatus(TypedDict):
    current: str | None
    head: str
    ok: bool


class NodeInfo(TypedDict):
    ae_title: str
    database: str
    archive_dir: str


class RecentResult(TypedDict):
    """One of the latest results and how far its delivery got."""

    result_id: int
    job_id: int
    at: str
    study_instance_uid: str
    status: str  # ok | flagged | withheld
    model_version: str | None
    sent: int
    deliveries: int
    outcome: str  # delivered | delivering | delivery failed | withheld | no destinations


class StatusSnapshot(TypedDict):
    """Everything `dicomnode status` shows; JSON-ready (no patient data)."""

    generated_at: str
    node: NodeInfo
    schema: SchemaStatus
    today: TodayCounts
    series: SeriesCounts
    jobs: JobCounts
    running: list[RunningJob]
    failures: Failures
    deliveries: DeliveryCounts
    disk: DiskStatus
    model: ModelStatus
    retrain: RetrainStatus
    recent_results: list[RecentResult]
    problems: list[str]
