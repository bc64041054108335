"""``dicomnode results export``: the latest result of every study as CSV."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.operate import admin
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.errors import CliError
from dicomnode.operate.admin_cli.format import err_console
from dicomnode.operate.admin_cli.help import RESULTS_HELP
from dicomnode.operate.node_cli import ConfigOpt

results_app = typer.Typer(help=RESULTS_HELP, no_args_is_help=True)


@results_app.command("export")
def results_export(
    ctx: typer.Context,
    csv_format: Annotated[
        bool, typer.Option("--csv", help="CSV, one row per study (the only format).")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write to this file (default: standard output).", dir_okay=False
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Export the latest result of every study as CSV, for researchers.

    Columns: study_instance_uid, accession_number, study_date, series_instance_uid,
    result_id, result_created_at, status (ok, flagged, withheld), model_version,
    trained_on_phantom; RCC_x..NCC_z (patient LPS mm), then LCO_x..RCO_z (coronary ostia)
    when the model predicts them; plane_origin_x.._z and plane_normal_x.._z; the annulus
    sizing on the predicted plane: annulus_area_mm2, annulus_perimeter_mm,
    annulus_area_diameter_mm, annulus_perimeter_diameter_mm, annulus_min_diameter_mm,
    annulus_max_diameter_mm, annulus_eccentricity, annulus_bridged_fraction, or
    annulus_sizing_refusal (why it was not measured); lco_height_mm and rco_height_mm
    (ostium centre above the annulus plane along its normal); every other measurement
    present (e.g. coplanar angles, in degrees); confidence per landmark; flags joined by
    "; "."""
    with node_db(ctx, config) as (_cfg, engine):
        if out is not None and not out.parent.is_dir():
            raise CliError(
                f"cannot write {out}: the folder {out.parent} does not exist",
                "create the folder, or give another --out",
            )
        if out is None:
            n = admin.export_results_csv(engine, sys.stdout)
        else:
            tmp = out.with_name(out.name + ".tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                n = admin.export_results_csv(engine, f)
            os.replace(tmp, out)
    where = f" to {out}" if out is not None else ""
    err_console.print(f"{n} stud{'y' if n == 1 else 'ies'} exported{where}", soft_wrap=True)
