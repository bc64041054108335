"""``dicomnode annotations``: import, list, show and export the ground truth of retraining."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.errors import CliError
from dicomnode.operate.admin_cli.format import (
    console,
    fmt_when,
    make_table,
    print_json,
    short_uid,
)
from dicomnode.operate.admin_cli.options import JsonOpt
from dicomnode.operate.admin_cli.tables import detail_panel
from dicomnode.operate.node_cli import ConfigOpt

if TYPE_CHECKING:
    from dicomnode.learn.annotation_export import AnnotationRow
    from dicomnode.learn.annotation_input import ImportReport


def _paragraphs(*paragraphs: str) -> str:
    """Help text whose paragraphs the terminal wraps (no hard line breaks inside)."""
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


ANNOTATIONS_HELP = _paragraphs(
    """Reference landmarks of archived studies, the ground truth of retraining.""",
    """Every import is checked (inter-hinge distances, the annulus normal of RCC -> LCC ->
    NCC pointing cranially, points inside the CT, ostia above the annulus) and kept as a new
    version; the newest annotation of a study is the one used.""",
)

IMPORT_HELP = _paragraphs(
    """Import annotations from a CSV or a DICOM SR file, all or nothing per file.""",
    """CSV columns (lines starting with # are comments): StudyInstanceUID, RCC_x, RCC_y,
    RCC_z, LCC_x .. LCC_z, NCC_x .. NCC_z in patient LPS mm (as the node's SR reports them);
    optional SeriesInstanceUID (empty: the series the node processed), LCO_x .. RCO_z
    (coronary ostia, three cells filled or empty per ostium), annotator, quality (1, 2, 3-,
    3+, 4 or empty).""",
    """SR: TID 1500 measurement groups whose points are SCOORD3D POINTs (their frame of
    reference must be the CT's) or SCOORD POINTs on an archived CT image (column\\row, the
    top-left pixel's centre at 0.5\\0.5, converted through the image's position, orientation
    and pixel spacing). A point is named by its group's tracking identifier, finding site /
    topographical modifier (Right / Left sinus of Valsalva, Non-coronary sinus, as in the
    node's own SR) or its concept name: a text holding exactly one of RCC, LCC, NCC, LCO,
    RCO. The node's own SR, edited in a viewer and saved (a new SOP Instance UID), imports;
    the unmodified one does not.""",
    """When any row is refused (unknown study, wrong frame of reference, missing point, a
    failed check), nothing of the file is imported and every refused row is listed with its
    reason.""",
)


annotations_app = typer.Typer(help=ANNOTATIONS_HELP, no_args_is_help=True)

_OUTCOME_STYLES = {
    "imported": "green",
    "checked": "cyan",
    "unchanged": "dim",
    "duplicate": "dim",
    "ignored": "yellow",
    "refused": "bold red",
}


def _print_report(report: ImportReport, dry_run: bool) -> None:
    t = make_table(str(report.path), "row", "outcome", "annotation", "study", "reason")
    for r in report.rows:
        t.add_row(
            r.label,
            Text(r.outcome.value, style=_OUTCOME_STYLES.get(r.outcome.value, "")),
            str(r.annotation_id or "-"),
            short_uid(r.study_uid or "-", 24),
            r.reason or "-",
        )
    console.print(t)
    if report.refused:
        console.print(
            f"[bold red]{len(report.refused)} row(s) refused: nothing imported from "
            f"{escape(str(report.path))}[/]"
        )
    elif dry_run:
        console.print("dry run: every row passed the checks; nothing written")


@annotations_app.command("import", help=IMPORT_HELP)
def annotations_import(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="CSV or DICOM SR files.", exists=True)],
    annotator: Annotated[
        str | None, typer.Option(help="Annotator of rows that name none (e.g. initials).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check only; write nothing.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    from dicomnode.learn.annotation_csv import AnnotationCsvError
    from dicomnode.learn.annotations import import_file

    reports = []
    with node_db(ctx, config) as (cfg, engine):
        for f in files:
            try:
                reports.append(
                    import_file(engine, cfg.archive_dir, f, annotator=annotator, dry_run=dry_run)
                )
            except AnnotationCsvError as exc:
                raise CliError(
                    str(exc), "`dicomnode annotations import --help` lists the columns"
                ) from None
    if as_json:
        print_json([{"path": str(r.path), "written": r.written, "rows": r.rows} for r in reports])
    else:
        for r in reports:
            _print_report(r, dry_run)
    if any(r.refused for r in reports):
        raise typer.Exit(code=1)


def _rows_table(rows: list[AnnotationRow], versions: dict[int, int]) -> Table:
    t = make_table(None, "id", "study", "source", "by", "quality", "ostia", "vers", "created")
    for r in rows:
        a = r.annotation
        ostia = ",".join(n for n in ("LCO", "RCO") if n in a.landmarks_lps) or "-"
        t.add_row(
            str(a.id),
            short_uid(r.study_uid, 16),
            a.source,
            a.annotator or "-",
            a.quality or "-",
            ostia,
            str(versions.get(a.study_fk, 1)),
            fmt_when(a.created_at),
        )
    return t


def _summary(r: AnnotationRow) -> dict[str, object]:
    a = r.annotation
    return {
        "id": a.id,
        "study_instance_uid": r.study_uid,
        "series_instance_uid": r.series_uid,
        "landmarks_lps": a.landmarks_lps,
        "source": a.source,
        "source_ref": a.source_ref,
        "source_uid": a.source_uid,
        "annotator": a.annotator,
        "quality": a.quality,
        "created_at": a.created_at,
        "annotated_at": a.annotated_at,
        "supersedes": a.supersedes_fk,
    }


@annotations_app.command("list")
def annotations_list(
    ctx: typer.Context,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Every version, not only the newest per study.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List the annotation in use per study (the newest), or every version."""
    from collections import Counter

    from dicomnode.learn.annotation_export import annotation_rows

    with node_db(ctx, config) as (_cfg, engine):
        rows = annotation_rows(engine, all_versions=all_versions)
        everything = rows if all_versions else annotation_rows(engine, all_versions=True)
    versions = Counter(r.annotation.study_fk for r in everything)
    if as_json:
        print_json([_summary(r) for r in rows])
        return
    if not rows:
        console.print("no annotations (`dicomnode annotations import FILE` adds some)")
        return
    console.print(_rows_table(rows, dict(versions)))


@annotations_app.command("show")
def annotations_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Annotation id or StudyInstanceUID.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show an annotation (a study's newest when given its UID) and its study's versions."""
    from dicomnode.learn.annotation_export import annotation_rows

    with node_db(ctx, config) as (_cfg, engine):
        rows = annotation_rows(engine, all_versions=True)
    match = [r for r in rows if (str(r.annotation.id) == key or r.study_uid == key)]
    if not match:
        raise CliError(f"no annotation {key}", "`dicomnode annotations list` shows them")
    chosen = match[-1]
    history = [r for r in rows if r.annotation.study_fk == chosen.annotation.study_fk]
    if as_json:
        print_json({**_summary(chosen), "versions": [_summary(r) for r in history]})
        return
    a = chosen.annotation
    newest = history[-1].annotation.id == a.id
    console.print(
        detail_panel(
            f"annotation {a.id}" + (" (in use)" if newest else " (superseded)"),
            [
                ("study", chosen.study_uid),
                ("series", chosen.series_uid or "-"),
                ("source", f"{a.source} {a.source_ref or ''}".strip()),
                ("SR", a.source_uid or "-"),
                ("annotator", a.annotator or "-"),
                ("quality", a.quality or "-"),
                ("annotated", fmt_when(a.annotated_at)),
                ("imported", fmt_when(a.created_at)),
                ("supersedes", str(a.supersedes_fk or "-")),
            ],
        )
    )
    points = make_table("points (LPS mm)", "landmark", "x", "y", "z")
    for name, p in a.landmarks_lps.items():
        points.add_row(name, *(f"{v:.2f}" for v in p))
    console.print(points)
    if len(history) > 1:
        console.print(_rows_table(history, {a.study_fk: len(history)}))


@annotations_app.command("export")
def annotations_export(
    ctx: typer.Context,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Write a glip training set here: images/*.nii.gz and manifest.csv "
            "(`glip train` reads it; bring the bundle back with `dicomnode models register`)."
        ),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write the annotations as an import CSV (- for stdout)."),
    ] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="CSV: every version, not only the newest.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Export the newest annotation per study: as an import CSV, or with the CT images as a
    training set for `glip train`."""
    from dicomnode.learn.annotation_export import annotation_rows, annotations_csv, export_dataset

    if dataset is None and csv_path is None:
        raise CliError("nothing to export", "give --dataset DIR and/or --csv FILE")
    with node_db(ctx, config) as (cfg, engine):
        if csv_path is not None:
            text = annotations_csv(annotation_rows(engine, all_versions=all_versions))
            if str(csv_path) == "-":
                typer.echo(text, nl=False)
            else:
                csv_path.write_text(text)
                console.print(f"wrote {escape(str(csv_path))}")
        if dataset is not None:
            report = export_dataset(engine, cfg.archive_dir, dataset)
            for ann_id, reason in report.skipped:
                console.print(f"[yellow]skipped annotation {ann_id}:[/] {escape(reason)}")
            console.print(
                f"wrote {report.cases} case(s): {escape(str(report.manifest))}"
                + ("" if report.cases else " (no annotated study with its CT in the archive)")
            )
            if not report.cases:
                raise typer.Exit(code=1)
