"""``dicomnode demo``: run the end-to-end demo and print its result table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from dicomnode.config import NodeConfig
from dicomnode.operate.node_cli import ConfigOpt, node_config

if TYPE_CHECKING:
    from dicomnode.operate.demo import DemoResult

out = Console()
err = Console(stderr=True, log_path=False)


def demo(
    ctx: typer.Context,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the phantom CT and the local PACS (default: a new temp folder)."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Phantom cohort seed (the case is index 0; default: a cohort never used "
            "to train or evaluate the shipped model).",
            show_default=False,
        ),
    ] = None,
    orthanc: Annotated[
        bool,
        typer.Option(
            help="Use Orthanc as the local PACS when installed (else a built-in storage SCP)."
        ),
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """End-to-end demo: phantom CT in, hinge points out, results in a local PACS.

    Generates a phantom pre-TAVR CT, sends it to the node by C-STORE, lets the worker find
    the hinge points, delivers SR / SEG / key images to a local PACS (Orthanc when
    installed) and compares with the phantom's ground truth.

    The node uses your configuration (default: the embedded one: SQLite and archive under
    ./var, the shipped phantom model) with a free port and the local PACS as its only
    destination, so `dicomnode status` shows the study afterwards.
    """
    # the demo (phantom generator, embedded node with the model) is heavy: loaded when run
    from dicomnode.operate.demo import DEFAULT_SEED, DemoError, run_demo

    cfg = node_config(ctx, config)
    _log_to_file(cfg, workdir)
    with err.status("starting", spinner="dots") as status:

        def progress(msg: str) -> None:
            status.update(msg)
            if not msg.startswith(("job ", "delivering", "waiting")):
                err.log(msg)

        try:
            r = run_demo(
                cfg,
                workdir=workdir,
                seed=DEFAULT_SEED if seed is None else seed,
                prefer_orthanc=orthanc,
                progress=progress,
            )
        except DemoError as exc:
            err.print(f"[bold red]demo failed:[/] {exc}")
            raise typer.Exit(code=1) from None
        except Exception as exc:  # one readable line unless --debug
            if (ctx.find_root().obj or {}).get("debug"):
                raise
            err.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {exc}")
            err.print(f"hint: the node's log is {cfg.var_dir / 'demo.log'}; --debug shows more")
            raise typer.Exit(code=1) from None
    print_result(r)


def _log_to_file(cfg: NodeConfig, workdir: Path | None) -> None:
    """The node's log goes to var_dir/demo.log so the console shows only the demo."""
    import logging

    from dicomnode.operate.logs import setup_logging

    cfg.var_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.var_dir / "demo.log"
    setup_logging(cfg.logging, stream=path.open("a", encoding="utf-8"))
    logging.getLogger("dicomnode.operate.demo").info(
        "demo started (workdir %s)", workdir or "temporary"
    )
    err.log(f"node log: {path}")


def _fmt(p: object) -> str:
    x, y, z = (float(v) for v in p)  # type: ignore[attr-defined]
    return f"{x:6.1f} {y:6.1f} {z:6.1f}"


ANNULUS_ROWS = (
    ("annulus area", "annulus_area_mm2", "mm²", 0),
    ("annulus perimeter", "annulus_perimeter_mm", "mm", 1),
    ("area-derived diameter", "annulus_area_diameter_mm", "mm", 1),
    ("perimeter-derived diameter", "annulus_perimeter_diameter_mm", "mm", 1),
    ("minimum diameter", "annulus_min_diameter_mm", "mm", 1),
    ("maximum diameter", "annulus_max_diameter_mm", "mm", 1),
    ("eccentricity", "annulus_eccentricity", "", 2),
)
"""(label, measurement key, unit, decimals) of the annulus rows of the demo's table."""


def sizing_table(r: DemoResult) -> Table:
    """Annulus sizing and ostium heights, predicted (on the predicted plane) vs the
    phantom's truth (its analytic annulus ellipse and ostium centres)."""
    from dicomnode.process.result_keys import OSTIUM_NAMES, SIZING_REFUSAL_KEY, height_key

    m = r.result.get("measurements") or {}
    t = Table(title="Annulus and coronary ostia (phantom truth known)", box=box.SIMPLE_HEAD)
    for col in ("measure", "predicted", "truth", "difference"):
        t.add_column(col, justify="left" if col == "measure" else "right", no_wrap=True)
    refused = m.get(SIZING_REFUSAL_KEY)
    rows = [
        (label, key, unit, nd, "refused" if refused else "-")
        for label, key, unit, nd in ANNULUS_ROWS
    ]
    rows += [
        (f"{name} height (centre)", height_key(name), "mm", 1, "not predicted")
        for name in OSTIUM_NAMES
    ]
    for label, key, unit, nd, missing in rows:
        truth = r.truth_measurements.get(key)
        raw = m.get(key)
        got = float(raw) if isinstance(raw, int | float) else None
        t.add_row(
            label,
            missing if got is None else f"{got:.{nd}f} {unit}".rstrip(),
            "-" if truth is None else f"{truth:.{nd}f} {unit}".rstrip(),
            "" if got is None or truth is None else f"{got - truth:+.{nd}f}",
        )
    return t


def print_result(r: DemoResult) -> None:
    """The result table, the measurements and where the files are."""
    from dicomnode.process.outputs.measurements import CoplanarView

    res = r.result
    t = Table(title="Hinge points, patient LPS mm (phantom truth known)", box=box.SIMPLE_HEAD)
    for col in ("hinge", "predicted", "truth", "error mm", "confidence"):
        right = col in ("error mm", "confidence")
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    conf = res.get("confidence") or {}
    for i, name in enumerate(r.names):
        t.add_row(
            name,
            _fmt(r.predicted[i]),
            _fmt(r.truth[i]),
            f"{r.errors_mm[i]:.2f}",
            f"{float(conf.get(name, float('nan'))):.2f}",
        )
    out.print(t)
    out.print(sizing_table(r))
    from dicomnode.process.result_keys import SIZING_REFUSAL_KEY

    m = res.get("measurements") or {}
    if m.get(SIZING_REFUSAL_KEY):
        out.print(f"annulus sizing refused: {m[SIZING_REFUSAL_KEY]}", soft_wrap=True)
    for name, err_mm in r.ostia_errors_mm.items():
        out.print(f"{name} position error vs truth: {err_mm:.2f} mm")
    if any(k.endswith("_height_mm") for k in m):
        out.print(
            "ostium heights: ostium centre to the annulus plane along its normal "
            "(clinical reports often measure to the ostium's lower edge, about one "
            "vessel radius lower)",
            soft_wrap=True,
        )
    out.print(f"annulus plane vs truth: {r.plane_angle_deg:.2f} deg")
    if "coplanar_lao_deg" in m and "coplanar_cranial_deg" in m:
        view = CoplanarView(float(m["coplanar_lao_deg"]), float(m["coplanar_cranial_deg"]))
        out.print(f"coplanar C-arm view: {view.label(degree_sign=False)}")
    if "plane_tilt_deg" in m:
        out.print(f"annulus plane tilt from axial: {float(m['plane_tilt_deg']):.1f} deg")
    dists = {k: v for k, v in m.items() if k.startswith("hinge_distance_")}
    if dists:
        pretty = ", ".join(
            f"{k.removeprefix('hinge_distance_').removesuffix('_mm').upper().replace('_', '-')} "
            f"{float(v):.1f}"
            for k, v in sorted(dists.items())
        )
        out.print(f"inter-hinge distances (mm): {pretty}")
    flags = "; ".join(res.get("flags") or [])
    out.print(f"result status: [bold]{res.get('status')}[/]" + (f" ({flags})" if flags else ""))
    timings = res.get("timings") or {}
    out.print(
        "worker seconds: " + ", ".join(f"{k} {float(v):.2f}" for k, v in timings.items()),
        soft_wrap=True,
    )
    out.print(
        "demo seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r.stage_s.items()), soft_wrap=True
    )
    out.print(f"local PACS ({r.pacs_kind}) received {len(r.delivered)} result objects")
    if r.sr_path:
        out.print(f"SR (try dsrdump): {r.sr_path}", soft_wrap=True)
    for p in r.pngs:
        out.print(f"key image: {p}", soft_wrap=True)
    out.print(f"phantom CT and PACS storage: {r.workdir}", soft_wrap=True)
    out.print("next: `dicomnode status`, `dicomnode results export --csv`")
