"""The job worker: claim a job, run the model, gate, size the annulus, write SR/SEG/key
images, queue delivery.

Annulus sizing (:func:`glipcore.sizing.size_annulus`) runs on the full-resolution volume
on the predicted plane; the job's timings get its seconds (``sizing``) and the process's
CPU seconds meanwhile (``sizing_cpu``). A refusal (no closed, plausible contour) or a
sizing error is recorded with its reason (result measurement ``annulus_sizing_refusal``,
SR text, key-image caption) and never holds back the hinge points. The coronary ostia go
into the outputs when the bundle predicts them. A degenerate prediction (hinge points on
one spot or on a line: no plane) is withheld by the plausibility gate and stored without
result objects.

One :class:`Worker` loads the model bundle once (the active model version in the
database, else the configured one) and processes jobs until stopped. Every job write is
fenced by its lease token (:mod:`dicomnode.process.jobs`): a worker that lost its lease writes
no result and queues no delivery, and each claim writes its files into its own folder, so
a fenced-out worker's files are never referenced by a result or a delivery.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import Engine, select

from dicomnode.config import NodeConfig
from dicomnode.db.models import Job, ModelVersion, Result, Study
from dicomnode.db.session import session_factory
from dicomnode.operate.logs import register_phi
from dicomnode.process import plausibility
from dicomnode.process.jobs import (
    Claim,
    Heartbeat,
    JobState,
    LeaseLostError,
    claim_event,
    claim_job,
    fail_exhausted,
    fail_job,
    finish_job,
    requeue_attempt,
)
from dicomnode.process.lineage import job_created_at, prior_result
from dicomnode.process.outputs.frames import FrameGeometryError, position_along_normal
from dicomnode.process.result_keys import SIZING_REFUSAL_KEY
from dicomnode.process.series import SeriesLoadError, job_files, volume_of_files
from glipcore import LANDMARKS, OSTIA
from glipcore.predict import Prediction, Predictor
from glipcore.sizing import AnnulusSizing, size_annulus
from glipcore.volume import Volume

log = logging.getLogger(__name__)


class PermanentJobError(RuntimeError):
    """A job that cannot succeed by retrying (bad geometry, unusable series)."""


@dataclass(frozen=True)
class JobOutcome:
    """What happened to one claimed job."""

    job_id: int
    state: str  # done | failed | queued (retry) | lost
    result_id: int | None = None
    detail: str = ""


def default_torch_threads() -> int:
    """All cores but one (the SCP keeps a core), at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


def sorted_headers(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """Headers (no pixels) of the series' files, sorted along the slice normal (a
    multi-frame CT's geometry is read from its functional groups). Their patient
    identifiers are registered with the log scrubber."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    register_phi(
        *{
            str(ds.get(k, ""))
            for ds in heads[:1]
            for k in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")
        }
    )

    try:
        return sorted(heads, key=position_along_normal)
    except FrameGeometryError as exc:
        raise PermanentJobError(f"series headers lack geometry: {exc}") from exc


class Worker:
    """Processes jobs from the database queue with one loaded model."""

    def __init__(
        self, cfg: NodeConfig, engine: Engine, *, index: int = 0, worker_id: str | None = None
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.index = index
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{index}"
        self.sessions = session_factory(engine)
        self.predictor: Predictor | None = None
        self.model_version_id: int | None = None

    # --- model ----------------------------------------------------------------------

    def load_model(self) -> str:
        """Load the active (or configured) bundle once; returns its model version."""
        from dicomnode.learn.registry import resolve_bundle

        with self.sessions() as s, s.begin():
            path = resolve_bundle(s, self.cfg)
        threads = self.cfg.worker.torch_threads or default_torch_threads()
        self.predictor = Predictor(
            path,
            threads=threads,
            device=self.cfg.worker.device,
            tta_passes=self.cfg.worker.tta_passes,
        )
        version = self.predictor.model_version
        with self.sessions() as s:
            self.model_version_id = s.scalars(
                select(ModelVersion.id).where(ModelVersion.version == version)
            ).first()
        log.info(
            "model %s loaded on %s (%d torch threads)",
            version,
            self.predictor.device,
            threads,
        )
        return version

    def _promoted_since(self) -> bool:
        """Whether another model version was promoted after this one was loaded."""
        from dicomnode.learn.registry import active_model

        loaded = self._model().model_version
        with self.sessions() as s:
            active = active_model(s)
            return active is not None and active.version != loaded

    def _model(self) -> Predictor:
        """The loaded model; :meth:`load_model` comes first."""
        if self.predictor is None:
            raise RuntimeError("worker: no model loaded (call load_model first)")
        return self.predictor

    # --- loop -----------------------------------------------------------------------

    def process_one(self) -> JobOutcome | None:
        """Claim and run one job; None when the queue is empty."""
        wc = self.cfg.worker
        # Before claiming, so that a bad bundle never strands a job: load the model, or
        # switch to a version promoted since (`dicomnode models promote`).
        if self.predictor is None or self._promoted_since():
            self.load_model()
        fail_exhausted(self.engine, wc.max_attempts)
        claim = claim_job(
            self.engine, self.worker_id, lease_s=wc.lease_s, max_attempts=wc.max_attempts
        )
        if claim is None:
            return None
        return self.run_job(claim)

    def run(self, stop: threading.Event) -> None:
        """Process jobs until ``stop`` is set (``worker.threads`` loops share the model)."""
        if self.predictor is None:
            self.load_model()
        loops = [
            threading.Thread(target=self._loop, args=(stop,), name=f"worker-{i}", daemon=True)
            for i in range(self.cfg.worker.threads)
        ]
        for t in loops:
            t.start()
        for t in loops:
            t.join()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                outcome = self.process_one()
            except Exception:  # database down etc.: keep the worker alive
                log.exception(
                    "worker loop error; retrying in %.0f s", self.cfg.worker.poll_interval_s
                )
                outcome = None
            if outcome is None:
                stop.wait(self.cfg.worker.poll_interval_s)

    # --- one job --------------------------------------------------------------------

    def run_job(self, claim: Claim) -> JobOutcome:
        """Run a claimed job to done, retry or failure (all writes fenced by the lease)."""
        try:
            with Heartbeat(self.engine, claim, self.cfg.worker.lease_s) as hb:
                return self._run(claim, hb)
        except LeaseLostError as exc:
            log.warning("%s", exc)
            return JobOutcome(claim.job_id, "lost", detail=str(exc))
        except PermanentJobError as exc:
            return self._finish_failed(claim, str(exc), retry=False)
        except Exception as exc:
            log.exception("job %d: attempt %d failed", claim.job_id, claim.attempt)
            return self._finish_failed(claim, f"{type(exc).__name__}: {exc}", retry=True)

    def _run(self, claim: Claim, hb: Heartbeat) -> JobOutcome:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            files = job_files(self.engine, self.cfg.archive_dir, claim.job_id)
            volume = volume_of_files(files)
        except SeriesLoadError as exc:
            raise PermanentJobError(str(exc)) from exc
        headers = sorted_headers(files)
        timings["load"] = time.perf_counter() - t0
        pred = self._model().predict(volume)
        timings.update(pred.timings_s)
        hb.check()
        verdict = self._gate(pred)
        if verdict.degenerate:  # no plane: nothing to size or draw; stored, withheld
            return self._commit(claim, pred, verdict, WrittenOutputs(measurements={}), timings)
        t_size, cpu_size = time.perf_counter(), time.process_time()
        sizing = annulus_sizing(volume, pred)
        timings["sizing"] = time.perf_counter() - t_size
        timings["sizing_cpu"] = time.process_time() - cpu_size  # all of the process's threads
        hb.check()
        t1 = time.perf_counter()
        from dicomnode.process.outputs import OutputError

        try:
            written = self._write_outputs(claim, headers, volume, pred, verdict, sizing)
        except OutputError as exc:  # the series or prediction cannot make valid objects
            raise PermanentJobError(f"outputs: {exc}") from exc
        timings["encode"] = time.perf_counter() - t1
        hb.check()
        return self._commit(claim, pred, verdict, written, timings)

    def _gate(self, pred: Prediction) -> plausibility.GateResult:
        lm = dict(zip(pred.names, pred.landmarks_lps, strict=True))
        spread = {n: c.fold_spread_mm for n, c in zip(pred.names, pred.confidence, strict=True)}
        score = {n: c.score for n, c in zip(pred.names, pred.confidence, strict=True)}
        normal = None if pred.hinge_plane is None else pred.hinge_plane.normal
        return plausibility.gate(lm, normal, spread, score, self.cfg.plausibility)

    def _write_outputs(
        self,
        claim: Claim,
        headers: Sequence[pydicom.Dataset],
        volume: Volume,
        pred: Prediction,
        verdict: plausibility.GateResult,
        sizing: AnnulusSizing | str,
    ) -> WrittenOutputs:
        from dicomnode.process.outputs import OutputContext, build_all, output_recipe, report_uid

        bundle = self._model().bundle
        cfg = self.cfg
        ctx = OutputContext(
            source=headers,
            volume=volume,
            landmarks_lps=pred.points_by_name(LANDMARKS),  # the hinge points, by name
            plane_origin=pred.plane.origin,
            plane_normal=pred.plane.normal,
            confidence={n: c.score for n, c in zip(pred.names, pred.confidence, strict=True)},
            model_name=bundle.manifest.name,
            model_version=bundle.version,
            trained_on_phantom=bundle.phantom_trained,
            warnings=list(verdict.findings),
            identity=self.cfg.identity,
            recipe=output_recipe(cfg.outputs, cfg.plausibility, cfg.identity),
            content_time=job_created_at(self.engine, claim.job_id),
            sizing=sizing if isinstance(sizing, AnnulusSizing) else None,
            sizing_refusal=None if isinstance(sizing, AnnulusSizing) else sizing,
            ostia_lps=pred.points_by_name([n for n in OSTIA if n in pred.names]),
        )
        prior = prior_result(self.engine, claim.series_fk, report_uid(ctx.key))
        if prior is not None:
            ctx = dataclasses.replace(ctx, prior=prior)
        oc = self.cfg.outputs
        objects = build_all(
            ctx,
            seg_radius_mm=oc.seg_sphere_radius_mm,
            keyimage_size_px=oc.keyimage_size_px,
            keyimage_fov_mm=oc.keyimage_fov_mm,
            kinds=("sr", "seg", "keyimage"),
        )
        study_uid = str(headers[0].StudyInstanceUID)
        written = WrittenOutputs(measurements=dict(objects.measurements))
        if isinstance(sizing, str):
            written.measurements[SIZING_REFUSAL_KEY] = sizing
        for kind, items in objects.items():
            for ds, png_name, png in items:
                path = self._result_path(study_uid, claim, ds)
                _atomic_write_dicom(ds, path)
                written.add(kind, ds, path)
                if png is not None:
                    _atomic_write_bytes(png, path.parent / f"{png_name}.png")
                    written.pngs.append(path.parent / f"{png_name}.png")
        return written

    def _result_path(self, study_uid: str, claim: Claim, ds: pydicom.Dataset) -> Path:
        """``<archive>/results/<study>/job<id>-<lease>/<series>/<sop>.dcm``: one folder per
        claim of the job, so a worker that lost its lease never overwrites the files that
        the winning claim's result row and deliveries point to."""
        return (
            self.cfg.archive_dir.resolve()
            / "results"
            / study_uid
            / f"job{claim.job_id}-{claim.token[:8]}"
            / str(ds.SeriesInstanceUID)
            / f"{ds.SOPInstanceUID}.dcm"
        )

    def _commit(
        self,
        claim: Claim,
        pred: Prediction,
        verdict: plausibility.GateResult,
        written: WrittenOutputs,
        timings: dict[str, float],
    ) -> JobOutcome:
        from dicomnode.deliver.plan import plan_deliveries

        d = pred.to_dict()
        plane = d["plane"]
        summary = _summary(pred, verdict)
        with self.sessions() as s, s.begin():
            result = Result(
                job_fk=claim.job_id,
                model_version_fk=self.model_version_id,
                model_version=pred.model_version,
                status=verdict.status,
                landmarks_lps=d["landmarks_lps_mm"],
                plane=None
                if plane is None
                else {"origin": plane["origin_lps_mm"], "normal": plane["normal"]},
                measurements={
                    k: v if isinstance(v, str) else round(float(v), 3)
                    for k, v in written.measurements.items()
                },
                confidence={n: c["score"] for n, c in d["confidence"].items()},
                flags=list(verdict.findings),
                timings={k: round(v, 3) for k, v in timings.items()},
                outputs=written.describe(),
                summary=summary,
            )
            s.add(result)
            s.flush()
            n_deliveries = 0
            if verdict.status != "withheld":
                n_deliveries = len(plan_deliveries(s, result.id, written.by_kind(), self.cfg))
            # Last in the transaction: a lost lease rolls back the result and its deliveries.
            finish_job(
                s,
                claim,
                summary,
                f"{verdict.status}; {n_deliveries} deliveries queued"
                + (f"; {'; '.join(verdict.findings)}" if verdict.findings else ""),
                self.model_version_id,
            )
            if verdict.status == "withheld":
                claim_event(s, claim, "result_withheld", "; ".join(verdict.findings))
            result_id = result.id
        log.info(
            "job %d done: %s in %.1f s (%s)",
            claim.job_id,
            verdict.status,
            sum(v for k, v in timings.items() if not k.endswith("_cpu")),
            ", ".join(f"{k} {v:.2f}" for k, v in timings.items()),
        )
        _observe_inference(timings)
        return JobOutcome(claim.job_id, JobState.DONE, result_id, summary)

    def _finish_failed(self, claim: Claim, reason: str, *, retry: bool) -> JobOutcome:
        again = retry and claim.attempt < self.cfg.worker.max_attempts
        text = f"attempt {claim.attempt}: {reason}" if again else reason
        try:
            with self.sessions() as s, s.begin():
                (requeue_attempt if again else fail_job)(s, claim, text)
        except LeaseLostError as exc:
            return JobOutcome(claim.job_id, "lost", detail=str(exc))
        log.warning("job %d %s: %s", claim.job_id, "requeued" if again else "failed", reason)
        state = JobState.QUEUED if again else JobState.FAILED
        return JobOutcome(claim.job_id, state, detail=text)


def annulus_sizing(volume: Volume, pred: Prediction) -> AnnulusSizing | str:
    """The annulus sized on the predicted plane, or why not ("<reason>: <detail>"). A
    sizing error is logged and becomes a refusal: it never holds back the hinge points."""
    try:
        result = size_annulus(volume, pred.plane, hinges_lps=pred.points(LANDMARKS))
    except Exception as exc:
        log.exception("annulus sizing failed")
        return f"error: {type(exc).__name__}: {exc}"
    if isinstance(result, AnnulusSizing):
        return result
    return f"{result.reason}: {result.detail}"


@dataclass
class WrittenOutputs:
    """Result files written for one job: (kind, SOP UID, series UID, path) and PNG copies;
    ``measurements``: numbers, and the sizing refusal's reason as text."""

    measurements: dict[str, float | str]
    objects: list[tuple[str, str, str, Path]] = field(default_factory=list)
    pngs: list[Path] = field(default_factory=list)

    def add(self, kind: str, ds: pydicom.Dataset, path: Path) -> None:
        self.objects.append((kind, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path))

    def by_kind(self) -> dict[str, list[tuple[str, Path]]]:
        out: dict[str, list[tuple[str, Path]]] = {}
        for kind, sop, _series, path in self.objects:
            out.setdefault(kind, []).append((sop, path))
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, sop, series, path in self.objects:
            out.setdefault(kind, []).append(
                {"sop_instance_uid": sop, "series_instance_uid": series, "path": str(path)}
            )
        out["png"] = [str(p) for p in self.pngs]
        return out


def _summary(pred: Prediction, verdict: plausibility.GateResult) -> str:
    pts = ", ".join(
        f"{n} ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f})"
        for n, p in zip(pred.names, pred.landmarks_lps, strict=True)
    )
    return f"{verdict.status}: {pts} mm LPS"


def _observe_inference(timings: dict[str, float]) -> None:
    from dicomnode.operate import metrics

    metrics.inference_seconds.observe(timings.get("inference", 0.0))


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_dicom(ds: pydicom.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def study_uid_of_job(engine: Engine, job_id: int) -> str | None:
    """The StudyInstanceUID of a job (for tools and tests)."""
    with session_factory(engine)() as s:
        return s.scalars(
            select(Study.study_instance_uid)
            .join(Job, Job.study_fk == Study.id)
            .where(Job.id == job_id)
        ).first()
