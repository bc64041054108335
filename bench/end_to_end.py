"""End-to-end latency of the node on a full-size phantom series: from the last CT
instance received to the last result object acknowledged by the PACS, quiet time
excluded, with the breakdown (load, resample, inference, decode, encode, send).

The peer measured in the same run is the bare Predictor on the same files (load +
resample + inference + decode): the ratio says what the node adds (outputs, delivery,
queueing) on top of the science.

    python -m bench.end_to_end [--repeats 2] [--threads N] [--builtin-pacs]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from dicomnode.config import LoggingConfig, NodeConfig
from dicomnode.db.models import Delivery, DeliveryAttempt, Instance, Job, Result, Series
from dicomnode.db.session import session_factory
from dicomnode.operate.demo import DEMO_CALLING_AE, demo_config, send_series, wait_delivered
from dicomnode.operate.embedded import EmbeddedNode
from dicomnode.operate.localpacs import start_local_pacs
from dicomnode.operate.logs import setup_logging
from dicomnode.process.worker import default_torch_threads
from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors
from glipcore.predict import Predictor
from glipcore.volume_io import load_volume

GOAL_S = 20.0
QUIET_S = 2.0
WORK = ("load", "resample", "inference", "decode", "encode")
STAGES = ("assemble", "queue", *WORK, "other", "wait_send", "send")


def _node_config(var: Path, pacs_ae: str, pacs_port: int, threads: int | None) -> NodeConfig:
    base = NodeConfig(var_dir=var, archive={"min_free": "0"})
    cfg = demo_config(base, pacs_ae, pacs_port)
    data = cfg.model_dump()
    data["assembler"]["quiet_time_s"] = QUIET_S
    data["assembler"]["sweep_interval_s"] = 0.2
    data["worker"]["poll_interval_s"] = 0.2
    data["delivery"]["poll_interval_s"] = 0.2
    if threads:
        data["worker"]["torch_threads"] = threads
    return NodeConfig(**data)


def _measure(node: EmbeddedNode) -> dict[str, float]:
    with session_factory(node.engine)() as s:
        last_rx = s.scalar(select(func.max(Instance.received_at)))
        completed = s.scalar(select(func.max(Series.completed_at)))
        job = s.scalars(select(Job).order_by(Job.id.desc())).first()
        res = s.scalars(select(Result).order_by(Result.id.desc())).first()
        assert last_rx and completed and job and res and job.started_at
        rid = res.id
        attempts = s.execute(
            select(DeliveryAttempt.started_at, DeliveryAttempt.finished_at)
            .join(Delivery, Delivery.id == DeliveryAttempt.delivery_fk)
            .where(Delivery.result_fk == rid)
        ).all()
        last_ack = max(a.finished_at for a in attempts if a.finished_at)
        first_send = min(a.started_at for a in attempts)
        timings: dict[str, Any] = dict(res.timings or {})
        assert job.finished_at
        row = {
            "latency": (last_ack - last_rx).total_seconds() - QUIET_S,
            "assemble": (completed - last_rx).total_seconds() - QUIET_S,
            "queue": (job.started_at - completed).total_seconds(),
            **{
                k: float(timings.get(k, 0.0))
                for k in ("load", "resample", "inference", "decode", "encode")
            },
            "other": 0.0,
            "send": (last_ack - first_send).total_seconds(),
        }
        accounted = sum(row[k] for k in WORK)
        # The job's wall time not in its stages: heartbeat start, gate, database commit.
        row["other"] = (job.finished_at - job.started_at).total_seconds() - accounted
        row["wait_send"] = (first_send - job.finished_at).total_seconds()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="series sent (each a new study)")
    ap.add_argument(
        "--threads", type=int, default=None, help="worker torch threads (default: cores - 1)"
    )
    ap.add_argument("--builtin-pacs", action="store_true", help="not Orthanc")
    args = ap.parse_args()
    setup_logging(LoggingConfig(level="WARNING"))

    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pacs = start_local_pacs(tmp / "pacs", prefer_orthanc=not args.builtin_pacs)
        try:
            cfg = _node_config(tmp / "var", pacs.ae_title, pacs.port, args.threads)
            series = []
            for i in range(args.repeats):
                vol, truth = phantom.generate(990_100 + i, 0, "full", workers=os.cpu_count() or 1)
                meta = SeriesMeta.synthetic(990_100 + i, f"e2e-{i}")
                files = write_ct_series(vol, tmp / f"ct{i}", meta)
                series.append((files, truth, meta.study_instance_uid))
            with EmbeddedNode(cfg) as node:
                for files, _truth, study_uid in series:
                    send_series(files, node.port, cfg.ae_title)
                    wait_delivered(node.engine, study_uid, timeout_s=600, poll_s=0.1)
                    rows.append(_measure(node))
                    time.sleep(0.5)
                w = node.worker
                device = str(w.predictor.device) if w and w.predictor else "?"
            # Peer: the bare Predictor on the same files, same threads.
            n_threads = cfg.worker.torch_threads or default_torch_threads()
            predictor = Predictor(cfg.bundle_path, threads=n_threads)
            peer = []
            for files, truth, _uid in series:
                t0 = time.perf_counter()
                pred = predictor.predict(load_volume(files[0].parent))
                peer.append(time.perf_counter() - t0)
                err = euclidean_errors(pred.landmarks_lps, truth.landmarks_lps)
        finally:
            pacs.stop()
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    peer_s = float(np.median(peer))
    print(
        f"end-to-end, {len(rows)} full-size phantom series (512 x 512 x 320), "
        f"{os.cpu_count()} cores, device {device} ({n_threads} torch threads), PACS {pacs.kind}, "
        f"quiet time {QUIET_S:.0f} s excluded"
    )
    for k in STAGES:
        print(f"  {k:<10} {med[k]:7.2f} s")
    lat = med["latency"]
    print(f"  {'latency':<10} {lat:7.2f} s   goal {GOAL_S:.0f} s   latency/goal {lat / GOAL_S:.2f}")
    print(
        f"  peer: bare Predictor (load+resample+inference+decode) {peer_s:.2f} s;  "
        f"latency/peer {lat / peer_s:.2f}"
    )
    print(f"  last series errors (mm) RCC/LCC/NCC: {' / '.join(f'{e:.2f}' for e in err)}")
    each = ", ".join(f"{r['latency']:.2f}" for r in rows)
    print(f"  (latency of each series: {each} s; caller {DEMO_CALLING_AE})")


if __name__ == "__main__":
    main()
