"""``dicomnode demo``: run the end-to-end demo and print its result table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicomnode.config import NodeConfig
from dicomnode.demo import DEFAULT_SEED, DemoError, DemoResult, run_demo
from dicomnode.node_cli import node_config

out = Console()
err = Console(stderr=True)


def demo(
    ctx: typer.Context,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the phantom CT and the local PACS (default: a new temp folder)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Phantom cohort seed (the case is index 0).")
    ] = DEFAULT_SEED,
    orthanc: Annotated[
        bool,
        typer.Option(
            help="Use Orthanc as the local PACS when installed (else a built-in storage SCP)."
        ),
    ] = True,
) -> None:
    """End-to-end demo: phantom CT in, hinge points out, results in a local PACS.

    Generates a phantom pre-TAVR CT, sends it to the node by C-STORE, lets the worker find
    the hinge points, delivers SR / SEG / key images to a local PACS (Orthanc when
    installed) and compares with the phantom's ground truth.

    The node uses your configuration (default: the embedded one: SQLite and archive under
    ./var, the shipped phantom model) with a free port and the local PACS as its only
    destination, so `dicomnode status` shows the study afterwards.
    """
    cfg = node_config(ctx)
    _log_to_file(cfg, workdir)
    with err.status("starting", spinner="dots") as status:

        def progress(msg: str) -> None:
            status.update(msg)
            if not msg.startswith(("job ", "delivering", "waiting")):
                err.log(msg)

        try:
            r = run_demo(cfg, workdir=workdir, seed=seed, prefer_orthanc=orthanc, progress=progress)
        except DemoError as exc:
            err.print(f"[bold red]demo failed:[/] {exc}")
            raise typer.Exit(code=1) from None
    print_result(r)


def _log_to_file(cfg: NodeConfig, workdir: Path | None) -> None:
    """The node's log goes to var_dir/demo.log so the console shows only the demo."""
    import logging

    from dicomnode.logs import setup_logging

    cfg.var_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.var_dir / "demo.log"
    setup_logging(cfg.logging, stream=path.open("a", encoding="utf-8"))
    logging.getLogger("dicomnode.demo").info("demo started (workdir %s)", workdir or "temporary")
    err.log(f"node log: {path}")


def _fmt(p: object) -> str:
    x, y, z = (float(v) for v in p)  # type: ignore[attr-defined]
    return f"({x:7.1f}, {y:7.1f}, {z:7.1f})"


def print_result(r: DemoResult) -> None:
    """The result table and where the files are."""
    res = r.result
    t = Table(title="Hinge points, patient LPS mm (phantom ground truth known)")
    for col in ("hinge point", "predicted", "truth", "error mm", "confidence"):
        t.add_column(col, justify="right" if col in ("error mm", "confidence") else "left")
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
    m = res.get("measurements") or {}
    out.print(f"annulus plane vs truth: {r.plane_angle_deg:.2f} deg")
    for key in sorted(m):
        out.print(f"  {key}: {m[key]}")
    status = res.get("status")
    out.print(
        f"result status: [bold]{status}[/]"
        + (f" ({'; '.join(res['flags'])})" if res.get("flags") else "")
    )
    timings = res.get("timings") or {}
    out.print("worker timings: " + ", ".join(f"{k} {float(v):.2f} s" for k, v in timings.items()))
    out.print("demo stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.stage_s.items()))
    out.print(f"local PACS ({r.pacs_kind}) holds {len(r.delivered)} result objects")
    if r.sr_path:
        out.print(f"SR: {r.sr_path}  (dsrdump it)")
    for p in r.pngs:
        out.print(f"key image: {p}")
    out.print(f"phantom CT and PACS storage: {r.workdir}")
    out.print("next: `dicomnode status`, `dicomnode results export --csv`")
