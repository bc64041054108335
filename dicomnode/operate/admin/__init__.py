"""Operator queries and actions on the node's database (the `dicomnode` admin commands).

Nothing here prints: every function returns typed rows (frozen dataclasses; TypedDicts for
the status snapshot) that :func:`jsonable` turns into JSON-ready values. Refused actions
and unknown ids raise :class:`AdminError` with a message and a hint for the operator.
"""

from __future__ import annotations

from dicomnode.operate.admin.common import (
    DELIVERY_STATES,
    JOB_STATES,
    SERIES_DECISIONS,
    SERIES_STATES,
    jsonable,
    safe_url,
)
from dicomnode.operate.admin.deliveries import DeliveryRow, list_deliveries, requeue_deliveries
from dicomnode.operate.admin.errors import AdminError
from dicomnode.operate.admin.export import LANDMARK_ORDER, export_results_csv
from dicomnode.operate.admin.job_actions import (
    CANCELLABLE_JOB_STATES,
    RETRYABLE_JOB_STATES,
    cancel_job,
    retry_job,
)
from dicomnode.operate.admin.jobs import (
    EventRow,
    JobDetail,
    JobRow,
    ResultRow,
    job_detail,
    list_jobs,
)
from dicomnode.operate.admin.models import ConfigBundle, ModelList, ModelRow, list_models
from dicomnode.operate.admin.series import (
    InstanceStats,
    SeriesDetail,
    SeriesRow,
    list_series,
    series_detail,
)
from dicomnode.operate.admin.status import status_snapshot
from dicomnode.operate.admin.status_counts import STATUS_LIST_LIMIT
from dicomnode.operate.admin.status_types import (
    DeadDelivery,
    DeliveryCounts,
    DiskStatus,
    FailedJob,
    Failures,
    JobCounts,
    ModelStatus,
    NodeInfo,
    RecentResult,
    RunningJob,
    SchemaStatus,
    SeriesCounts,
    StatusSnapshot,
    TodayCounts,
)

__all__ = [
    "CANCELLABLE_JOB_STATES",
    "DELIVERY_STATES",
    "JOB_STATES",
    "LANDMARK_ORDER",
    "RETRYABLE_JOB_STATES",
    "SERIES_DECISIONS",
    "SERIES_STATES",
    "STATUS_LIST_LIMIT",
    "AdminError",
    "ConfigBundle",
    "DeadDelivery",
    "DeliveryCounts",
    "DeliveryRow",
    "DiskStatus",
    "EventRow",
    "FailedJob",
    "Failures",
    "InstanceStats",
    "JobCounts",
    "JobDetail",
    "JobRow",
    "ModelList",
    "ModelRow",
    "ModelStatus",
    "NodeInfo",
    "RecentResult",
    "ResultRow",
    "RunningJob",
    "SchemaStatus",
    "SeriesCounts",
    "SeriesDetail",
    "SeriesRow",
    "StatusSnapshot",
    "TodayCounts",
    "cancel_job",
    "export_results_csv",
    "job_detail",
    "jsonable",
    "list_deliveries",
    "list_jobs",
    "list_models",
    "list_series",
    "requeue_deliveries",
    "retry_job",
    "safe_url",
    "series_detail",
    "status_snapshot",
]
