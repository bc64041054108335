"""Does the node's confidence separate wrong hinge points from right ones on a site's studies?

Reads a running or stopped node's database (its configuration file) and a CSV of reference
hinge points (the annotation import's format: StudyInstanceUID, RCC_x .. NCC_z in LPS mm),
takes each annotated study's first result made by ``--model`` (default: the first model
version that processed one), and prints what bench.confidence prints for phantoms: AUROC
(bad = error > 2 mm) with a 95 % bootstrap interval over studies, and the plausibility
gate's counts at several thresholds. The confidences are those the worker stored with the
result (its TTA passes and calibration), so this measures the node as configured.

    python -m bench.confidence_site --config /path/node.yaml --truth annotations.csv
        [--model VERSION] [--bad-mm 2]

Without ``--config``, it makes the site first: a node (bench.retrain's: SQLite, loopback
SCP, the given bundle) receives ``--cases`` studies of a bench.retrain scenario (default
difficult-site: heavy hinge calcium, low contrast, 3x noise, motion blur) by C-STORE and
processes them; their phantom truth is the reference.

    python -m bench.confidence_site --bundle models/phantom-glip [--cases 40] [--preset fast]
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import typer
from sqlalchemy import select

from bench.confidence import auroc_ci, confusion
from dicomnode.config import load_config
from dicomnode.db.models import Job, Result, Series, Study
from dicomnode.db.session import make_engine, session_factory
from glipcore import LANDMARKS

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def read_truth(path: Path) -> dict[str, np.ndarray]:
    """{StudyInstanceUID: (3, 3) hinge points in LANDMARKS order} from an annotation CSV."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        r["StudyInstanceUID"]: np.array(
            [[float(r[f"{n}_{a}"]) for a in "xyz"] for n in LANDMARKS], dtype=np.float64
        )
        for r in rows
    }


def first_results(config: Path, model: str | None) -> tuple[str, dict[str, Result]]:
    """The model version and each study's first result made by it."""
    cfg = load_config(config)
    engine = make_engine(cfg.database_url)
    try:
        with session_factory(engine)() as s:
            rows = s.execute(
                select(Study.study_instance_uid, Result)
                .join(Job, Job.id == Result.job_fk)
                .join(Series, Series.id == Job.series_fk)
                .join(Study, Study.id == Series.study_fk)
                .order_by(Result.id)
            ).all()
    finally:
        engine.dispose()
    version = model or next((r.model_version for _, r in rows if r.model_version), None)
    if version is None:
        raise typer.BadParameter("the database holds no result with a model version")
    out: dict[str, Result] = {}
    for study, result in rows:
        if result.model_version == version and study not in out:
            out[study] = result
    return version, out


def make_site(
    work: Path, scenario: str, cases: int, preset: str, bundle: Path | None, threads: int
) -> tuple[Path, Path]:
    """A node that has received and processed ``cases`` studies of a bench.retrain
    ``scenario``; returns its configuration file and the studies' truth as annotation CSV."""
    from bench.retrain import Node, Options, generate_scenario, node_config, study_uid_of, write_csv

    opts = Options(
        cases=cases, scenario=scenario, workdir=work, preset=preset, threads=threads, model=bundle
    )
    rows = generate_scenario(scenario, work / "scenario", cases, preset)
    node = Node(node_config(work, opts), work)
    try:
        node.start()
        node.process(rows, opts.timeout_s)
    finally:
        node.stop()
    truth = {study_uid_of(r): r.points(LANDMARKS) for r in rows}
    return node.config_file, write_csv(work / "truth.csv", truth, "site")


def main(
    config: Path | None = typer.Option(None, help="the node's YAML configuration"),
    truth: Path | None = typer.Option(None, help="reference hinge points (annotation CSV)"),
    model: str | None = typer.Option(None, help="model version (default: the first seen)"),
    bad_mm: float = typer.Option(2.0, help="a landmark this far off is wrong"),
    bundle: Path | None = typer.Option(None, help="without --config: the node's model bundle"),
    scenario: str = typer.Option("difficult-site", help="without --config: bench.retrain scenario"),
    cases: int = typer.Option(40, help="without --config: scenario studies"),
    preset: str = typer.Option("fast", help="without --config: scan size (fast or full)"),
    workdir: Path | None = typer.Option(None, help="without --config: kept work folder"),
    threads: int = typer.Option(2, help="without --config: worker threads"),
) -> None:
    """Confidence vs error on the studies of a node that have reference hinge points."""
    if config is None:
        work = workdir or Path(tempfile.mkdtemp(prefix="glip-confidence-site-"))
        work.mkdir(parents=True, exist_ok=True)
        print(f"making the site: {cases} '{scenario}' studies ({preset}) through a node in {work}")
        config, truth = make_site(work, scenario, cases, preset, bundle, threads)
    elif truth is None:
        raise typer.BadParameter("--truth is needed with --config")
    ref = read_truth(truth)
    version, results = first_results(config, model)
    conf, err, groups = [], [], []
    for study, res in results.items():
        if study not in ref or not res.landmarks_lps or not res.confidence:
            continue
        for k, name in enumerate(LANDMARKS):
            if name in res.landmarks_lps and name in res.confidence:
                p = np.asarray(res.landmarks_lps[name], dtype=np.float64)
                err.append(float(np.linalg.norm(p - ref[study][k])))
                conf.append(float(res.confidence[name]))
                groups.append(study)
    if not err:
        raise typer.BadParameter("no annotated study has a result of that model")
    c, e, g = np.array(conf), np.array(err), np.array(groups)
    bad = e > bad_mm
    est, lo, hi = auroc_ci(c, bad, g)
    print(
        f"model {version}: {len(set(groups))} annotated studies, {e.size} hinge points, "
        f"{int(bad.sum())} more than {bad_mm:g} mm off (median error {np.median(e):.2f} mm)"
    )
    print(f"AUROC (bad = error > {bad_mm:g} mm): {est:.3f} [{lo:.3f}, {hi:.3f}] (95 % bootstrap)")
    print("gate flags below threshold: caught / missed / false flags / passed")
    for t in THRESHOLDS:
        n = confusion(c, bad, t)
        print(f"  < {t:.1f}: {n['caught']} / {n['missed']} / {n['false_flags']} / {n['passed']}")


if __name__ == "__main__":
    typer.run(main)
