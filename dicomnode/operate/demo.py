"""``dicomnode demo``: the whole flow on one machine, with the embedded defaults.

A phantom CT study (ground truth known) is generated in a temporary folder and sent by
C-STORE to the node running on loopback (SCP, assembler, worker, delivery) with the
configured database and archive (default: SQLite and a local archive under ./var) and the
shipped phantom model. Results go to a local PACS (Orthanc when installed, else a
built-in storage SCP); the demo then prints predicted vs true hinge points, and the
annulus sizing and coronary ostium heights next to the phantom's truth (the ostia when the
model predicts them).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.config import NodeConfig
from dicomnode.db.models import Delivery, Result, Study
from dicomnode.db.session import session_factory
from dicomnode.deliver.states import DeliveryState
from dicomnode.operate.embedded import EmbeddedNode
from dicomnode.operate.localpacs import dcmtk_tool, start_local_pacs
from dicomnode.process.jobs import JobState, latest_study_job
from dicomnode.process.result_keys import OSTIUM_NAMES, height_key
from glipcore import LANDMARKS, phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors, plane_angle
from glipcore.phantom import PhantomTruth

DEMO_CALLING_AE = "GLIPDEMO"
DEMO_DESTINATION = "demo-pacs"
DEFAULT_SEED = 20_261_124  # a cohort never used to train or evaluate the shipped model


class DemoError(RuntimeError):
    """The demo could not finish; the message says where it stopped."""


@dataclass
class DemoResult:
    """What the demo measured and where its files are."""

    workdir: Path
    pacs_kind: str
    study_uid: str
    names: tuple[str, ...]
    predicted: np.ndarray
    truth: np.ndarray
    errors_mm: np.ndarray
    plane_angle_deg: float
    result: dict[str, Any]
    delivered: list[str]
    pngs: list[str]
    sr_path: str | None
    stage_s: dict[str, float] = field(default_factory=dict)
    truth_measurements: dict[str, float] = field(default_factory=dict)
    """The phantom's annulus sizing and ostium heights, keyed like the result's
    measurements (:func:`truth_measurements`)."""
    ostia_errors_mm: dict[str, float] = field(default_factory=dict)
    """Distance of each predicted ostium from the phantom's (mm); empty without ostia."""


def truth_measurements(truth: PhantomTruth) -> dict[str, float]:
    """The phantom's analytic annulus (ellipse) measured like the node measures its
    contour, and its ostium heights (ostium centre above the annulus plane, along the
    normal), keyed like a result's measurements."""
    major, minor = truth.annulus_major_mm, truth.annulus_minor_mm
    area, perimeter = truth.annulus_area_mm2, truth.annulus_perimeter_mm
    return {
        "annulus_area_mm2": area,
        "annulus_perimeter_mm": perimeter,
        "annulus_area_diameter_mm": 2.0 * math.sqrt(area / math.pi),
        "annulus_perimeter_diameter_mm": perimeter / math.pi,
        "annulus_min_diameter_mm": minor,
        "annulus_max_diameter_mm": major,
        "annulus_eccentricity": math.sqrt(max(0.0, 1.0 - (minor / major) ** 2)),
        height_key("LCO"): float(truth.measurements["left_ostium_height_mm"]),
        height_key("RCO"): float(truth.measurements["right_ostium_height_mm"]),
    }


def ostia_errors(landmarks: dict[str, Any], truth: PhantomTruth) -> dict[str, float]:
    """Distance (mm) of each predicted coronary ostium from the phantom's."""
    out = {}
    for i, name in enumerate(OSTIUM_NAMES):  # truth.ostia_lps rows: left, right
        if name in landmarks:
            got = np.asarray(landmarks[name], dtype=float)
            out[name] = float(np.linalg.norm(got - truth.ostia_lps[i]))
    return out


def demo_config(base: NodeConfig, pacs_ae: str, pacs_port: int) -> NodeConfig:
    """``base`` (the user's configuration, by default the embedded one) with a free port,
    the demo caller allowed, a short quiet time and the local PACS as the only destination."""
    allowed = [*base.access.model_dump()["allowed"], {"ae_title": DEMO_CALLING_AE, "host": None}]
    data = base.model_dump()
    data["network"].update(port=0, bind_address="127.0.0.1")
    data["access"]["allowed"] = allowed
    data["assembler"].update(quiet_time_s=2.0, sweep_interval_s=0.5)
    data["destinations"] = [
        {
            "name": DEMO_DESTINATION,
            "ae_title": pacs_ae,
            "host": "127.0.0.1",
            "port": pacs_port,
            "kinds": ["sr", "seg", "keyimage"],
        }
    ]
    data["delivery"].update(backoff_initial_s=1.0, backoff_max_s=5.0, poll_interval_s=0.5)
    data["worker"].update(poll_interval_s=0.5)
    data["metrics"]["enabled"] = False
    return NodeConfig(**data)


def send_series(files: list[Path], port: int, called_ae: str) -> str:
    """C-STORE the files to the node: dcmtk's storescu when installed, else pynetdicom."""
    storescu = dcmtk_tool("storescu")
    if storescu is not None:
        cmd = [storescu, "-aet", DEMO_CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        r = subprocess.run(
            [*cmd, *map(str, files)], capture_output=True, text=True, timeout=600, env=env
        )
        if r.returncode != 0:
            raise DemoError(f"storescu failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return "dcmtk storescu"
    ae = AE(ae_title=DEMO_CALLING_AE)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoError("the node refused the demo's association")
    try:
        for f in files:
            status = assoc.send_c_store(dcmread(f))
            if getattr(status, "Status", None) != 0:
                raise DemoError(f"C-STORE of {f.name} failed: {status}")
    finally:
        assoc.release()
    return "pynetdicom"


def wait_delivered(
    engine: Any,
    study_uid: str,
    timeout_s: float,
    tick: Callable[[str], None] = lambda _msg: None,
    poll_s: float = 0.3,
) -> int:
    """Wait until the study's latest job is done and all its deliveries are sent (or its
    result withheld); the result id. A failed job or dead delivery raises DemoError."""
    sessions = session_factory(engine)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as s:
            job = latest_study_job(s, study_uid)
            if job is None:
                tick("waiting for the series to complete (quiet time)")
            elif job.state in (JobState.FAILED, JobState.CANCELLED, JobState.SUPERSEDED):
                raise DemoError(f"job {job.id} {job.state}: {job.reason}")
            elif job.state != JobState.DONE:
                tick(f"job {job.id} {job.state}")
            else:
                result = s.scalars(select(Result).where(Result.job_fk == job.id)).one()
                states = list(
                    s.scalars(select(Delivery.state).where(Delivery.result_fk == result.id))
                )
                if result.status == "withheld":
                    return result.id
                dead = [x for x in states if x == DeliveryState.DEAD]
                if dead:
                    raise DemoError(
                        f"{len(dead)} deliveries failed; see `dicomnode deliveries list`"
                    )
                if states and all(x == DeliveryState.SENT for x in states):
                    return result.id
                tick(f"delivering: {states.count(DeliveryState.SENT)}/{len(states)} objects sent")
        time.sleep(poll_s)
    raise DemoError(f"no result within {timeout_s:.0f} s; see `dicomnode status`")


def _fresh_case(cfg: NodeConfig, seed: int) -> int:
    """The first case index whose study the node's database does not hold yet, so that
    running the demo again processes (and delivers) a new study."""
    from dicomnode.db.session import engine_from_config

    engine = engine_from_config(cfg)
    try:
        with session_factory(engine)() as s:
            known = set(s.scalars(select(Study.study_instance_uid)))
    except Exception:  # no database or no schema yet: the first case
        known = set()
    finally:
        engine.dispose()
    index = 0
    while SeriesMeta.synthetic(seed, f"demo-{index}").study_instance_uid in known:
        index += 1
    return index


def run_demo(
    base: NodeConfig,
    *,
    workdir: Path | None = None,
    seed: int = DEFAULT_SEED,
    preset: str = "full",
    prefer_orthanc: bool = True,
    progress: Callable[[str], None] = lambda _msg: None,
    timeout_s: float = 600.0,
) -> DemoResult:
    """Run the demo; ``progress`` receives one line per step."""
    work = workdir or Path(tempfile.mkdtemp(prefix="glip-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    progress("starting the local PACS")
    pacs = start_local_pacs(work / "pacs", prefer_orthanc=prefer_orthanc)
    try:
        cfg = demo_config(base, pacs.ae_title, pacs.port)
        index = _fresh_case(cfg, seed)
        progress(f"generating a phantom CT (preset {preset}, seed {seed}, case {index})")
        vol, truth = phantom.generate(seed, index, preset, workers=os.cpu_count() or 1)
        meta = SeriesMeta.synthetic(seed, f"demo-{index}")
        files = write_ct_series(vol, work / f"ct-{index}", meta)
        study_uid = meta.study_instance_uid
        stages["phantom"] = time.perf_counter() - t
        progress("starting the node (SCP, assembler, worker with the model, delivery)")
        t = time.perf_counter()
        with EmbeddedNode(cfg) as node:
            stages["start"] = time.perf_counter() - t
            progress(f"sending {len(files)} CT images to {cfg.ae_title} on port {node.port}")
            t = time.perf_counter()
            sender = send_series(files, node.port, cfg.ae_title)
            stages["send"] = time.perf_counter() - t
            t = time.perf_counter()
            result_id = wait_delivered(node.engine, study_uid, timeout_s, progress)
            stages["process"] = time.perf_counter() - t
            with session_factory(node.engine)() as s:
                row = s.get(Result, result_id)
                if row is None:
                    raise DemoError(f"result {result_id} is no longer in the database")
                result = {c.name: getattr(row, c.name) for c in Result.__table__.columns}
        progress(f"sent with {sender}; results delivered")
        names = LANDMARKS  # the hinge points (a five-landmark model adds the ostia)
        pred = np.array([result["landmarks_lps"][n] for n in names], dtype=float)
        errors = euclidean_errors(pred, truth.landmarks_lps)
        outputs = result.get("outputs") or {}
        sr = outputs.get("sr") or []
        delivered = sorted(pacs.sop_instance_uids())
        return DemoResult(
            workdir=work,
            pacs_kind=pacs.kind,
            study_uid=study_uid,
            names=names,
            predicted=pred,
            truth=np.asarray(truth.landmarks_lps, dtype=float),
            errors_mm=errors,
            plane_angle_deg=plane_angle(pred, truth.landmarks_lps),
            result=result,
            delivered=delivered,
            pngs=list(outputs.get("png") or []),
            sr_path=sr[0]["path"] if sr else None,
            stage_s=stages,
            truth_measurements=truth_measurements(truth),
            ostia_errors_mm=ostia_errors(result["landmarks_lps"] or {}, truth),
        )
    finally:
        pacs.stop()


__all__ = [
    "DemoError",
    "DemoResult",
    "demo_config",
    "ostia_errors",
    "run_demo",
    "send_series",
    "truth_measurements",
    "wait_delivered",
]
