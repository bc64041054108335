"""Retraining as a site would do it: a site difference the active model has not seen,
annotations in (CSV and a viewer's corrected SRs by C-STORE), ``dicomnode retrain``, the
gate, promotion, the worker switching, and a poisoned run the gate must refuse.

A node runs as at a site: ``dicomnode serve`` (SCP, assembler, delivery) and ``dicomnode
worker`` processes on an embedded SQLite database and a local archive, with the active
(by default the shipped) model. The bench

1. generates the scenario's phantom studies (``glip phantom``) and sends them with dcmtk's
   storescu; the node processes them with the active model, which measures the active
   model on the scenario first (does it handle it already?);
2. imports the truth: most studies by CSV (``dicomnode annotations import``), some as the
   node's own SR with the points moved to the truth and a new SOP Instance UID, sent by
   C-STORE as a viewer sends corrections;
3. runs ``dicomnode retrain --budget B`` (promote: auto) and, when promoted, sends one more
   scenario study: its SR must carry the new model version;
4. re-imports the training split's annotations shifted by 10 mm and retrains: the gate
   must refuse that candidate and the active model must stay.

It prints active vs candidate on the held-out scenario studies (median, worst, SDR 2 mm,
paired 95% intervals), on ordinary phantoms, the gate decisions and the wall times.

    python -m bench.retrain [--cases 40] [--budget 20] [--scenario heavy-hinge-calcium]
                            [--workdir DIR] [--keep]

Scenarios: ``heavy-hinge-calcium`` (``glip phantom --calcium heavy --hinge-calcium``);
``low-contrast`` (a late bolus: blood pool 180 HU), ``low-dose`` (3x the noise),
``no-ecg-gating`` (3 mm motion blur) and ``difficult-site`` (all of them with heavy hinge
calcium), which ``glip phantom`` has no option for, are rendered through the generator's
own parameters (:func:`glipcore.phantom.render` of a case with those parameters changed).
The shipped model handled heavy-hinge-calcium and low-contrast at the fast preset already
(median 1.2 and 0.8 mm, 6 studies): the bench says so before retraining.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from dicomnode.config import NodeConfig
from dicomnode.db.models import Annotation, ModelVersion, Result
from dicomnode.db.session import make_engine, session_factory
from dicomnode.learn.compare import CaseErrors, compare, predict_errors
from dicomnode.learn.registry import active_model
from dicomnode.learn.retrain_dataset import holdout_study_uids
from dicomnode.learn.sr_points import sr_points
from dicomnode.process.jobs import latest_study_job
from glipcore import LANDMARKS
from glipcore.manifest import ManifestRow, read_manifest, write_manifest
from glipcore.metrics import euclidean_errors

STORESCU = "/usr/bin/storescu"
CALLING_AE = "GLIPBENCH"
SCENARIO_SEED = 880_000
ORDINARY_SEED = 881_000
POISON_MM = 10.0
SR_SHARE = 0.2
"""Share of the studies annotated by a viewer's corrected SR (the rest by CSV)."""
ALGORITHM_VERSION = ("DCM", "111003")
HANDLES_MEDIAN_MM = 2.0
HANDLES_SDR2 = 0.8
"""The active model "handles" the scenario when median <= 2 mm and SDR 2 mm >= 80%."""


@dataclass(frozen=True)
class Scenario:
    """A site difference: ``glip phantom`` options, or one changed generator parameter."""

    about: str
    cli: tuple[str, ...] | None = None
    change: Callable[[Any], Any] | None = None
    calcium: str = "default"
    hinge_calcium: bool = False


def _low_contrast(case: Any) -> Any:
    return replace(case, hu=replace(case.hu, blood=180.0))


def _low_dose(case: Any) -> Any:
    return replace(case, scan=replace(case.scan, noise_sd_hu=3.0 * case.scan.noise_sd_hu))


def _ungated(case: Any) -> Any:
    return replace(case, scan=replace(case.scan, motion_sigma_mm=3.0))


def _difficult_site(case: Any) -> Any:
    return _low_dose(_low_contrast(_ungated(case)))


SCENARIOS: dict[str, Scenario] = {
    "heavy-hinge-calcium": Scenario(
        "heavy valve calcium with calcium at the hinges", ("--calcium", "heavy", "--hinge-calcium")
    ),
    "low-contrast": Scenario("late contrast bolus: blood pool 180 HU", change=_low_contrast),
    "low-dose": Scenario("low-dose protocol: three times the image noise", change=_low_dose),
    "no-ecg-gating": Scenario(
        "no ECG gating: 3 mm motion blur of everything that beats", change=_ungated
    ),
    "difficult-site": Scenario(
        "heavy hinge calcium, blood pool 180 HU, 3x noise and 3 mm motion blur together",
        change=_difficult_site,
        calcium="heavy",
        hinge_calcium=True,
    ),
}


@dataclass
class Options:
    """The bench's settings (see ``--help``)."""

    cases: int = 40
    budget_min: float = 20.0
    scenario: str = "heavy-hinge-calcium"
    workdir: Path | None = None
    keep: bool = False
    preset: str = "full"
    ordinary: int = 8
    threads: int = 2
    model: Path | None = None
    train_config: Path | None = None
    reference_cases: int = 4
    phantom_cases: int = 0
    timeout_s: float = 3600.0
    plausibility: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """One retrain: its candidate, the gate's decision and reasons, the comparison."""

    candidate: str | None
    decision: str | None
    reasons: list[str]
    promoted: bool
    comparison: dict[str, Any]
    wall_s: float
    output: str


@dataclass
class BenchReport:
    """What the bench measured."""

    scenario: str
    cases: int
    active_on_scenario: dict[str, Any]
    handles_already: bool
    annotations_csv: int
    annotations_sr: int
    first: RunSummary
    next_study_version: str | None
    next_study_sr_version: str | None
    poisoned: RunSummary
    active_after: str | None
    ordinary: dict[str, Any] | None
    stage_s: dict[str, float]
    lines: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ cohort


def _run(cmd: list[str], what: str, timeout_s: float = 3600.0, **kw: Any) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout)[-1500:]}")
    return str(r.stdout)


def _tool(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.is_file() else name


def generate_scenario(
    name: str, out: Path, count: int, preset: str, *, start: int = 0, seed: int = SCENARIO_SEED
) -> list[ManifestRow]:
    """``count`` scenario studies (DICOM series) from case ``start`` on, with their truth."""
    sc = SCENARIOS[name]
    out.mkdir(parents=True, exist_ok=True)
    if sc.cli is not None:
        cmd = [_tool("glip"), "phantom", "-o", str(out), "-n", str(count), "--seed", str(seed)]
        cmd += ["--preset", preset, "--start-index", str(start), "--workers", "2", *sc.cli]
        _run(cmd, "glip phantom")
        rows = read_manifest(out / "manifest.csv")
        return [r for r in rows if start <= int(r.case_id.rsplit("-", 1)[1]) < start + count]
    return _render_changed(sc, out, count, preset, start, seed)


def _render_changed(
    sc: Scenario, out: Path, count: int, preset: str, start: int, seed: int
) -> list[ManifestRow]:
    from glipcore.dicomwrite import SeriesMeta, write_ct_series
    from glipcore.phantom import case_id, random_case, render, truth_of
    from glipcore.phantom.render import grid_for
    from glipcore.volume import Volume

    assert sc.change is not None
    rows = []
    for i in range(start, start + count):
        cid = case_id(seed, i)
        case = sc.change(random_case(seed, i, calcium=sc.calcium, hinge_calcium=sc.hinge_calcium))
        affine, shape = grid_for(case, preset)
        vol = Volume(render(case, affine, shape, noise=True, workers=2), affine)
        files = write_ct_series(vol, out / cid, SeriesMeta.synthetic(seed * 1000 + i, cid))
        rows.append(ManifestRow(cid, files[0].parent, truth_of(case).landmarks_lps))
    manifest = out / "manifest.csv"
    old = read_manifest(manifest) if manifest.is_file() else []
    write_manifest(
        [*[r for r in old if r.case_id not in {x.case_id for x in rows}], *rows], manifest
    )
    return rows


def ordinary_phantoms(out: Path, count: int, preset: str) -> list[ManifestRow]:
    """``count`` default phantoms of a cohort no model was trained on (NIfTI)."""
    cmd = [_tool("glip"), "phantom", "-o", str(out), "-n", str(count)]
    cmd += ["--seed", str(ORDINARY_SEED), "--preset", preset, "--format", "nifti"]
    _run(cmd, "glip phantom (ordinary)")
    return read_manifest(out / "manifest.csv")


def study_uid_of(row: ManifestRow) -> str:
    first = next(iter(sorted(Path(row.path).glob("*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


# -------------------------------------------------------------------------------- node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_config(work: Path, opts: Options) -> NodeConfig:
    """The bench node: SQLite and archive under ``work``, loopback SCP allowing the bench's
    caller (the SRs come from it), short quiet time, the given model, retrain settings."""
    holdout_min = max(2, min(5, opts.cases // 4))
    retrain: dict[str, Any] = {
        "promote": "auto",
        "budget_min": opts.budget_min,
        "threads": opts.threads,
        "holdout_fraction": 0.25,
        "holdout_min": holdout_min,
        "reference_cases": opts.reference_cases,
        "phantom_cases": opts.phantom_cases,
        "gate": {"min_holdout_studies": holdout_min},
    }
    if opts.train_config is not None:
        retrain["train_config"] = str(opts.train_config)
    data: dict[str, Any] = {
        "var_dir": str(work / "var"),
        "archive": {"min_free": "0"},
        "network": {"port": _free_port(), "bind_address": "127.0.0.1"},
        "access": {"allowed": [{"ae_title": CALLING_AE, "host": None}]},
        "assembler": {"quiet_time_s": 2.0, "sweep_interval_s": 0.5},
        "worker": {"poll_interval_s": 0.5, "torch_threads": opts.threads},
        "metrics": {"enabled": False},
        "outputs": {"keyimage_size_px": 256},
        "logging": {"level": "INFO"},
        "plausibility": opts.plausibility,
        "retrain": retrain,
    }
    if opts.model is not None:
        data["model"] = {"bundle": str(opts.model)}
    return NodeConfig(**data)


class Node:
    """``dicomnode serve`` and one ``dicomnode worker``, as subprocesses."""

    def __init__(self, cfg: NodeConfig, work: Path) -> None:
        self.cfg = cfg
        self.config_file = work / "node.yaml"
        self.config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.engine: Engine = make_engine(cfg.database_url)

    def dicomnode(self, *args: str, timeout_s: float = 3600.0) -> str:
        """Run a ``dicomnode`` command on this node's configuration; its output."""
        cmd = [_tool("dicomnode"), *args, "--config", str(self.config_file)]
        return _run(cmd, f"dicomnode {args[0]}", timeout_s, env=self._env())

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DICOMNODE_CONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> None:
        self.dicomnode("db", "upgrade")
        for name in ("serve", "worker"):
            sink = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (lives with the process)
            cmd = [_tool("dicomnode"), name, "--config", str(self.config_file)]
            self.procs.append(subprocess.Popen(cmd, stdout=sink, stderr=sink, env=self._env()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.cfg.network.port)) == 0:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the SCP did not listen within 120 s; see {self.logs}")

    def _check_alive(self) -> None:
        for name, p in zip(("serve", "worker"), self.procs, strict=False):
            if p.poll() is not None:
                raise RuntimeError(f"dicomnode {name} exited ({p.returncode}); see {self.logs}")

    def send(self, files: list[Path]) -> None:
        """C-STORE with dcmtk's storescu, proposing the files' own SOP classes."""
        cmd = [STORESCU, "-R", "-aet", CALLING_AE, "-aec", self.cfg.ae_title, "127.0.0.1"]
        _run([*cmd, str(self.cfg.network.port), *map(str, files)], "storescu")

    def process(self, rows: list[ManifestRow], timeout_s: float) -> dict[str, Result]:
        """Send each phantom study's series and wait for its result (by StudyInstanceUID)."""
        for r in rows:
            self.send(sorted(Path(r.path).glob("*.dcm")))
        return self.wait_processed([study_uid_of(r) for r in rows], timeout_s)

    def wait_processed(self, study_uids: list[str], timeout_s: float) -> dict[str, Result]:
        """The finished result of each study (its newest job done), waiting for them."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            done = self._results(study_uids)
            if len(done) == len(study_uids):
                return done
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(done)}/{len(study_uids)} studies processed in time")
            time.sleep(0.5)

    def _results(self, study_uids: list[str]) -> dict[str, Result]:
        out = {}
        with session_factory(self.engine)() as s:
            for uid in study_uids:
                job = latest_study_job(s, uid)
                if job is None:
                    continue
                if job.state in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job.id} of a study {job.state}: {job.reason}")
                res = s.scalars(select(Result).where(Result.job_fk == job.id)).first()
                if job.state == "done" and res is not None:
                    s.expunge(res)
                    out[uid] = res
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.engine.dispose()


# ------------------------------------------------------------------------- annotations

HINGE_COLUMNS = [f"{n}_{a}" for n in LANDMARKS for a in "xyz"]


def write_csv(path: Path, points: dict[str, np.ndarray], annotator: str) -> Path:
    """An import CSV: one row per study, hinge points in LPS mm."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["StudyInstanceUID", *HINGE_COLUMNS, "annotator", "quality"])
        for uid, p in points.items():
            w.writerow([uid, *(f"{v:.3f}" for v in np.asarray(p).ravel()), annotator, "3+"])
    return path


def _scoord_items(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "SCOORD3D" and item.get("GraphicType") == "POINT":
            yield item
        yield from _scoord_items(item)


def corrected_sr(our_sr: Path, truth: np.ndarray, out: Path) -> Path | None:
    """Our SR as a viewer saves it after moving the hinge points to ``truth``: a new SOP
    Instance UID; None when the SR has no hinge points to move."""
    ds = pydicom.dcmread(our_sr)
    found = {p.name: p.lps for p in sr_points(ds).points if p.lps is not None}
    if not all(n in found for n in LANDMARKS):
        return None
    moved = 0
    for item in _scoord_items(ds):
        at = np.asarray(item.GraphicData, dtype=float)
        for i, name in enumerate(LANDMARKS):
            if np.allclose(at, found[name], atol=1e-3):
                item.GraphicData = [float(v) for v in truth[i]]
                moved += 1
    if moved < len(LANDMARKS):
        return None
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out, enforce_file_format=True)
    return out


def sr_model_version(path: Path) -> str | None:
    """The Algorithm Version (DCM 111003) text of an SR."""

    def walk(items: Any) -> Iterator[pydicom.Dataset]:
        for it in items or []:
            yield it
            yield from walk(it.get("ContentSequence"))

    for it in walk(pydicom.dcmread(path).get("ContentSequence")):
        code = (it.get("ConceptNameCodeSequence") or [None])[0]
        if code is not None and (code.CodingSchemeDesignator, code.CodeValue) == ALGORITHM_VERSION:
            return str(it.TextValue)
    return None


def _annotation_count(engine: Engine) -> int:
    with session_factory(engine)() as s:
        return int(s.scalar(select(func.count(func.distinct(Annotation.study_fk)))) or 0)


# ----------------------------------------------------------------------------- retrain


def run_retrain(node: Node, budget_min: float) -> RunSummary:
    """``dicomnode retrain --budget`` and what it recorded."""
    t0 = time.monotonic()
    # the budget bounds dataset and training; evaluation on a busy CPU may take a while more
    timeout_s = 3 * 60.0 * budget_min + 3600.0
    output = node.dicomnode("retrain", "--budget", f"{budget_min:g}", timeout_s=timeout_s)
    wall = time.monotonic() - t0
    with session_factory(node.engine)() as s:
        mv = s.scalars(
            select(ModelVersion)
            .where(ModelVersion.decision.is_not(None))
            .order_by(ModelVersion.id.desc())
        ).first()
        if mv is None:
            raise RuntimeError(f"the retrain registered no candidate:\n{output[-1500:]}")
        return RunSummary(
            mv.version,
            mv.decision,
            list(mv.decision_reasons or []),
            bool(mv.active),
            dict(mv.comparison or {}),
            wall,
            output,
        )


def _ci(values: np.ndarray, stat: Callable[[np.ndarray], float], n: int = 1000) -> str:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    lo, hi = np.percentile([stat(values[i]) for i in idx], [2.5, 97.5])
    return f"[{lo:.2f}, {hi:.2f}]"


def scenario_errors(results: dict[str, Result], truth: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) hinge errors of the node's results (NaN for a result without points)."""
    rows = []
    for uid, res in results.items():
        lm = res.landmarks_lps or {}
        if all(n in lm for n in LANDMARKS):
            pred = np.array([lm[n] for n in LANDMARKS], dtype=float)
            rows.append(euclidean_errors(pred, truth[uid]))
        else:
            rows.append(np.full(len(LANDMARKS), np.nan))
    return np.asarray(rows, dtype=float)


# --------------------------------------------------------------------------------- run


def run_bench(opts: Options, say: Callable[[str], None] = print) -> BenchReport:
    """The whole scenario (see the module docstring)."""
    if opts.scenario not in SCENARIOS:
        raise ValueError(f"--scenario must be one of {sorted(SCENARIOS)}")
    if opts.cases < 6:
        raise ValueError("--cases must be at least 6 (training and held-out studies)")
    t_all = time.monotonic()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="glip-bench-retrain-"))
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    sc = SCENARIOS[opts.scenario]

    t = time.monotonic()
    say(f"generating {opts.cases} + 1 '{opts.scenario}' studies ({sc.about}), preset {opts.preset}")
    rows = generate_scenario(opts.scenario, work / "scenario", opts.cases, opts.preset)
    nxt = generate_scenario(opts.scenario, work / "next", 1, opts.preset, start=opts.cases)[0]
    ordinary = ordinary_phantoms(work / "ordinary", opts.ordinary, "model") if opts.ordinary else []
    uids = [study_uid_of(r) for r in rows]
    truth = {u: r.points(LANDMARKS) for u, r in zip(uids, rows, strict=True)}
    stages["generate"] = time.monotonic() - t

    cfg = node_config(work, opts)
    node = Node(cfg, work)
    try:
        t = time.monotonic()
        node.start()
        say(f"node up (serve + worker, SCP port {cfg.network.port}); sending the studies")
        results = node.process(rows, opts.timeout_s)
        stages["send+process"] = time.monotonic() - t
        before = scenario_errors(results, truth)
        act = _summary(before)
        handles = act["median_mm"] <= HANDLES_MEDIAN_MM and act["sdr_2mm"] >= HANDLES_SDR2
        say(
            f"active model on the scenario ({len(uids)} studies as processed by the node): "
            f"median {act['median_mm']:.2f} mm, worst {act['worst_mm']:.2f} mm, "
            f"SDR 2 mm {act['sdr_2mm']:.0%} -> "
            + ("it handles this scenario already" if handles else "it does not handle it")
        )

        t = time.monotonic()
        n_sr = max(1, round(SR_SHARE * len(uids)))
        sr_files: list[Path] = []
        for uid in uids[:n_sr]:
            outputs = results[uid].outputs or {}
            ours = [Path(o["path"]) for o in outputs.get("sr") or []]
            fixed = (
                corrected_sr(ours[0], truth[uid], work / f"corrected-{len(sr_files)}.dcm")
                if ours
                else None
            )
            if fixed is not None:
                sr_files.append(fixed)
        by_sr = set(uids[: len(sr_files)]) if len(sr_files) == n_sr else set()
        if len(sr_files) != n_sr:  # withheld results have no SR: import all by CSV
            say(f"only {len(sr_files)}/{n_sr} SRs to correct (withheld results): CSV for all")
            sr_files = []
        by_csv = {u: truth[u] for u in uids if u not in by_sr}
        node.dicomnode("annotations", "import", str(write_csv(work / "truth.csv", by_csv, "site")))
        if sr_files:
            node.send(sr_files)
        deadline = time.monotonic() + 120
        while _annotation_count(node.engine) < len(uids):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{_annotation_count(node.engine)}/{len(uids)} studies annotated "
                    f"(corrected SRs not imported?); see {node.logs}"
                )
            time.sleep(0.5)
        stages["annotate"] = time.monotonic() - t
        say(f"annotations: {len(by_csv)} by CSV, {len(sr_files)} by corrected SRs (C-STORE)")

        t = time.monotonic()
        say(f"retraining (budget {opts.budget_min:g} min, {opts.threads} threads)")
        first = run_retrain(node, opts.budget_min)
        stages["retrain"] = time.monotonic() - t
        say(
            f"candidate {first.candidate}: {first.decision}"
            + (" (promoted)" if first.promoted else "")
        )

        next_version = next_sr_version = None
        t = time.monotonic()
        nuid = study_uid_of(nxt)
        res = node.process([nxt], opts.timeout_s)[nuid]
        next_version = res.model_version
        srs = (res.outputs or {}).get("sr") or []
        next_sr_version = sr_model_version(Path(srs[0]["path"])) if srs else None
        stages["next study"] = time.monotonic() - t
        say(f"next study processed by {next_version} (SR: {next_sr_version})")

        t = time.monotonic()
        held = holdout_study_uids(
            node.engine, cfg.retrain.holdout_fraction, cfg.retrain.holdout_min
        )
        shift = np.array([POISON_MM, 0.0, 0.0])
        poisoned = {u: truth[u] + shift for u in uids if u not in held}
        node.dicomnode(
            "annotations", "import", str(write_csv(work / "poisoned.csv", poisoned, "poison"))
        )
        say(
            f"poisoned: {len(poisoned)} training annotations shifted by {POISON_MM:g} mm, "
            "retraining"
        )
        second = run_retrain(node, opts.budget_min)
        stages["poisoned retrain"] = time.monotonic() - t
        with session_factory(node.engine)() as s:
            am = active_model(s)
            active_after = (
                am.version if am is not None else "none promoted: the configured bundle stays"
            )
        say(f"poisoned candidate {second.candidate}: {second.decision}; active: {active_after}")

        ordinary_table = None
        if ordinary and first.candidate is not None:
            t = time.monotonic()
            ordinary_table = _ordinary(node, first, ordinary, work, opts.threads)
            stages["ordinary"] = time.monotonic() - t
    finally:
        node.stop()
    stages["total"] = time.monotonic() - t_all
    report = BenchReport(
        opts.scenario,
        opts.cases,
        act,
        handles,
        len(by_csv),
        len(sr_files),
        first,
        next_version,
        next_sr_version,
        second,
        active_after,
        ordinary_table,
        stages,
    )
    report.lines = format_report(report)
    if not opts.keep and opts.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _ordinary(
    node: Node, first: RunSummary, rows: list[ManifestRow], work: Path, threads: int
) -> dict[str, Any]:
    with session_factory(node.engine)() as s:
        paths = dict(s.execute(select(ModelVersion.version, ModelVersion.path)).tuples().all())
    parent = first.comparison.get("active_version")
    cand = Path(paths[first.candidate]) if first.candidate else None
    act = Path(paths[parent]) if parent in paths else node.cfg.bundle_path
    assert cand is not None
    cache = work / "ordinary-cache"
    c: CaseErrors = predict_errors(cand, rows, cache, threads)
    a: CaseErrors = predict_errors(act, rows, cache, threads)
    return compare(c, a, resamples=1000)


def _summary(errors: np.ndarray) -> dict[str, Any]:
    e = errors[~np.isnan(errors).any(axis=1)]
    if not len(e):
        return {"median_mm": float("nan"), "worst_mm": float("nan"), "sdr_2mm": 0.0, "n": 0}
    return {
        "median_mm": float(np.median(e)),
        "median_ci": _ci(e, lambda x: float(np.median(x))),
        "worst_mm": float(np.max(e)),
        "sdr_2mm": float(np.mean(e < 2.0)),
        "sdr_ci": _ci(e, lambda x: float(np.mean(x < 2.0))),
        "n": len(e),
        "no_points": int(len(errors) - len(e)),
    }


def _table_lines(title: str, table: dict[str, Any]) -> list[str]:
    if not table:
        return [f"{title}: (none)"]
    c, a, d = table["candidate"], table["active"], table["difference"]
    out = [f"{title} ({c['cases']} cases)        active        candidate    cand-active [95% CI]"]
    for key, label, fmt in (
        ("median_mm", "median mm", "{:.2f}"),
        ("worst_mm", "worst mm", "{:.2f}"),
        ("sdr_2mm", "SDR 2 mm", "{:.0%}"),
    ):
        av = a["sdr"]["2mm"] if key == "sdr_2mm" else a[key]
        cv = c["sdr"]["2mm"] if key == "sdr_2mm" else c[key]
        dd = d[key]
        out.append(
            f"  {label:<12} {fmt.format(av):>12} {fmt.format(cv):>14}    "
            f"{dd['delta']:+.2f} [{dd['lo']:+.2f}, {dd['hi']:+.2f}]"
        )
    return out


def format_report(r: BenchReport) -> list[str]:
    """The printed report."""
    a = r.active_on_scenario
    lines = [
        f"bench.retrain: scenario {r.scenario}, {r.cases} studies "
        f"({r.annotations_csv} annotated by CSV, {r.annotations_sr} by corrected SR)",
        f"active model on the scenario before retraining: median {a['median_mm']:.2f} mm "
        f"{a.get('median_ci', '')}, worst {a['worst_mm']:.2f} mm, SDR 2 mm {a['sdr_2mm']:.0%} "
        f"{a.get('sdr_ci', '')}"
        + (f", {a['no_points']} without points" if a.get("no_points") else "")
        + (" -> handles it already" if r.handles_already else " -> does not handle it"),
    ]
    for name, run in (("first retrain", r.first), ("poisoned retrain", r.poisoned)):
        lines.append(
            f"{name}: candidate {run.candidate} {run.decision}"
            + (" and promoted" if run.promoted else "")
            + f" ({run.wall_s / 60:.1f} min)"
        )
        lines += [f"    {reason}" for reason in run.reasons]
        lines += [
            "  " + x for x in _table_lines("held-out scenario", run.comparison.get("holdout", {}))
        ]
        lines += [
            "  " + x
            for x in _table_lines("phantom reference set", run.comparison.get("reference", {}))
        ]
    lines.append(
        f"next scenario study after the first retrain: processed by {r.next_study_version}, "
        f"SR algorithm version {r.next_study_sr_version}"
    )
    lines.append(f"active model after the poisoned run: {r.active_after}")
    if r.ordinary is not None:
        lines += _table_lines("ordinary phantoms, first candidate vs its parent", r.ordinary)
    lines.append("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r.stage_s.items()))
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", type=int, default=40, help="scenario studies sent (default 40)")
    ap.add_argument("--budget", type=float, default=20.0, help="retrain budget, minutes")
    ap.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="difficult-site",
        help="site difference (default difficult-site: the shipped model handles heavy "
        "calcium alone already)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="kept (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--preset", choices=("full", "fast"), default="full", help="scan size")
    ap.add_argument("--ordinary", type=int, default=8, help="ordinary phantoms compared")
    ap.add_argument("--threads", type=int, default=2, help="worker and retrain threads")
    ap.add_argument("--model", type=Path, default=None, help="active bundle (default shipped)")
    ap.add_argument("--train-config", type=Path, default=None, help="glip train YAML")
    ap.add_argument(
        "--phantom-cases",
        type=int,
        default=48,
        help="ordinary phantoms mixed into training (retrain.phantom_cases; against "
        "forgetting: with 16 the first difficult-site candidate lost 0.46 mm on ordinary "
        "phantoms and was refused, with 48 it passed)",
    )
    args = ap.parse_args(argv)
    opts = Options(
        cases=args.cases,
        budget_min=args.budget,
        scenario=args.scenario,
        workdir=args.workdir,
        keep=args.keep,
        preset=args.preset,
        ordinary=args.ordinary,
        threads=args.threads,
        model=args.model,
        train_config=args.train_config,
        phantom_cases=args.phantom_cases,
    )
    try:
        report = run_bench(opts, say=lambda m: print(f"- {m}", flush=True))
    except RuntimeError as exc:
        print(f"bench.retrain stopped: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print()
    print("\n".join(report.lines))


if __name__ == "__main__":
    main()
