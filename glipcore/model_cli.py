"""``glip train``, ``glip evaluate`` and ``glip predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def _fail(message: str, hint: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}\n[dim]hint: {hint}[/]")
    return typer.Exit(code=2)


def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML training config.")],
    out: Annotated[
        Path | None, typer.Option(help="Run folder (overrides out_dir in the config).")
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Where to write the bundle (default RUN/bundle).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from each fold's last checkpoint if present.")
    ] = True,
) -> None:
    """Train with cross-validation and write a model bundle.

    Examples:

      glip train --config configs/train-phantom.yaml     # the shipped CPU model (~1 h)

      glip train --config configs/train-paper.yaml       # paper-size, GPU

    Progress, per-epoch logs (log.csv, log.json) and checkpoints go to the run folder;
    an interrupted run continues where it stopped when started again.
    """
    from pydantic import ValidationError

    from glipcore.train import load_config, run

    overrides: dict[str, object] = {}
    if out is not None:
        overrides["out_dir"] = str(out)
    if bundle is not None:
        overrides["bundle_dir"] = str(bundle)
    try:
        cfg = load_config(config, overrides)
    except (OSError, ValueError, ValidationError) as e:
        raise _fail(f"{config}: {e}", "see configs/train-phantom.yaml for a valid config") from e
    result = run(cfg, resume=resume)
    console.print_json(json.dumps(result.summary))
    console.print(f"[bold green]bundle:[/] {result.bundle_dir}")


def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled manifest.csv.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report.")],
    threads: Annotated[int, typer.Option(help="Torch threads (0: all cores).")] = 0,
) -> None:
    """Evaluate a bundle on labelled cases with the paper's metrics.

    Writes OUT/cases.csv, OUT/summary.json, OUT/table.txt and OUT/boxplot.png, with the
    model's sub-voxel and argmax decoding and a naive baseline side by side: every landmark
    of the bundle that the manifest has, the plane on the hinge points, and for the coronary
    ostia their height above the annulus plane. A prediction with collinear hinge points is
    a failed case (no plane), counted in the table.

    Example: glip evaluate -m models/phantom-glip -d heldout/manifest.csv -o report/
    """
    from glipcore.bundle import BundleError
    from glipcore.evaluate import evaluate as run_evaluation
    from glipcore.evaluate import text_table

    try:
        summary = run_evaluation(model, data, out, threads=threads or None)
    except (BundleError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e), "check --model points at a bundle and --data at a manifest") from e
    names = list(summary["methods"]["model"]["landmarks"])
    print(text_table(summary, names))
    console.print(f"report: {out}")


def predict(
    path: Annotated[Path, typer.Argument(help="DICOM series folder, Enhanced CT or NIfTI.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder.")],
    threads: Annotated[int, typer.Option(help="Torch threads (0: all cores).")] = 0,
) -> None:
    """Predict the bundle's landmarks (hinge points, and coronary ostia if the bundle has
    them) and the annulus plane of one CT; prints JSON ("plane" null when the predicted
    hinge points are collinear).

    Coordinates are patient LPS millimetres (the DICOM patient coordinate system).

    Example: glip predict -m models/phantom-glip /data/ct/series-1/
    """
    from glipcore.bundle import BundleError
    from glipcore.predict import Predictor
    from glipcore.volume import VolumeError
    from glipcore.volume_io import load_volume

    try:
        predictor = Predictor(model, threads=threads or None)
        vol = load_volume(path)
    except (BundleError, VolumeError, FileNotFoundError) as e:
        raise _fail(str(e), "check the bundle folder and the CT path") from e
    pred = predictor.predict(vol)
    json.dump(pred.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
