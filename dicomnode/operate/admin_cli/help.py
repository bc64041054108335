"""Help texts of the admin command groups (shown by ``--help``)."""

from __future__ import annotations

JOBS_HELP = """Jobs: one per selected series (and cardiac phase).

States:
  queued      waiting for a worker (the queue depth in `dicomnode status`)
  held        its series is receiving late instances; it queues again when the series completes
  running     a worker holds its lease (renewed by heartbeats); an expired lease is taken over
  done        results stored; their deliveries to PACS are listed by `dicomnode deliveries list`
  failed      given up: bad input, or worker.max_attempts attempts used; the reason says why
  superseded  a better series of the same study is processed instead
  cancelled   the series no longer qualifies, or an operator cancelled it

`jobs retry` queues a failed, cancelled or done job again; `jobs cancel` stops a queued,
held or running one (a running job's results are then discarded)."""


SERIES_HELP = """Series received by the node and what was decided about them.

States:
  receiving   instances are arriving; the series completes after assembler.quiet_time_s of quiet
  complete    no instance for the quiet time (or the forced deadline passed), then a decision:
    selected      it is the study's best series and has a job
    not_selected  it does not qualify (modality, slices, thickness, coverage, ...; see reason)
    superseded    another series of the study is better (the reason names it)"""


DELIVERIES_HELP = """Result objects (SR, SEG, key images) sent to the configured destinations.

States:
  pending     to be sent (again) at next_attempt_at; retried with exponential backoff
              (a failed attempt stays pending, with its error and attempt count)
  sent        the destination answered Success
  dead        refused for good, or delivery.max_attempts used: nothing retries it until an
              operator runs `dicomnode deliveries requeue`"""


RESULTS_HELP = """Results for researchers (hinge points in patient LPS mm, plane, angles)."""


MODELS_HELP = """Model versions: which model bundle the workers use.

The active version lives in the database (exactly one, or none); without one, the
configuration's model.bundle (default: the shipped phantom model) is used. A version is
the bundle's name plus the first 12 hex digits of the sha256 of its bundle.json, which
holds every weight file's checksum: a bundle that was modified is refused."""
