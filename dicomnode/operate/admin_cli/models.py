"""``dicomnode models``: list, show, register, promote and roll back model versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dicomnode.operate import admin
from dicomnode.operate.admin_cli.database import node_db
from dicomnode.operate.admin_cli.format import console, fmt_when, make_table, print_json
from dicomnode.operate.admin_cli.help import MODELS_HELP
from dicomnode.operate.admin_cli.options import JsonOpt
from dicomnode.operate.node_cli import ConfigOpt

models_app = typer.Typer(help=MODELS_HELP, no_args_is_help=True)


def _metric(mv_metrics: dict[str, Any] | None) -> str:
    test = (mv_metrics or {}).get("test")
    if isinstance(test, dict) and isinstance(test.get("median_mm"), int | float):
        return f"{test['median_mm']:.2f}"
    return "-"


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List registered model versions; mark the active one and the configuration default."""
    with node_db(ctx, config) as (cfg, engine):
        models = admin.list_models(engine, cfg)
    if as_json:
        print_json(models)
        return
    if models.versions:
        t = make_table(None, "version", "active", "phantom", "test median mm", "promoted", "path")
        for v in models.versions:
            t.add_row(
                Text(v.version, style="bold" if v.active else ""),
                Text("active", style="green") if v.active else Text(""),
                "yes" if v.trained_on_phantom else "no",
                _metric(v.metrics),
                fmt_when(v.promoted_at),
                v.path,
            )
        console.print(t)
    else:
        console.print("no registered model versions")
    default = models.config_default
    if default.error:
        note = default.error
    else:
        note = (default.version or "?") + ("" if default.registered else ", not registered")
    console.print(f"configuration default: {escape(default.path)} ({escape(note)})", soft_wrap=True)
    console.print(f"in use: [bold]{escape(models.in_use or '?')}[/]")


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Bundle folder (holds bundle.json).")],
    config: ConfigOpt = None,
) -> None:
    """Verify a model bundle (schema and checksums) and record its version, without
    making it active."""
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.learn.registry import register_bundle

    with node_db(ctx, config) as (_cfg, engine), session_scope(session_factory(engine)) as s:
        mv = register_bundle(s, path)
        version, phantom = mv.version, mv.trained_on_phantom
    console.print(f"registered {version}" + (" (trained on phantoms)" if phantom else ""))


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[
        str, typer.Argument(help="A registered version, or a bundle folder (registered first).")
    ],
    config: ConfigOpt = None,
) -> None:
    """Make a model version the active one (exactly one is active).

    The bundle is verified again first, so one changed since registration is refused.
    Workers switch to it before their next job (a job already running finishes with the
    model it started with)."""
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.learn.registry import promote, register_bundle

    with node_db(ctx, config) as (_cfg, engine), session_scope(session_factory(engine)) as s:
        target = version
        if Path(version).is_dir():
            target = register_bundle(s, Path(version)).version
        mv = promote(s, target)
        name, phantom = mv.version, mv.trained_on_phantom
    console.print(
        f"active model: [bold]{escape(name)}[/]"
        + (" [yellow](trained on phantoms: research use only)[/]" if phantom else "")
    )
    console.print("workers switch to it before their next job")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Make the previously active model version active again (verified first), or the
    configuration's bundle when no other version was active.

    A second rollback returns to the version rolled back from."""
    from dicomnode.db.session import session_factory, session_scope
    from dicomnode.learn.registry import rollback

    with node_db(ctx, config) as (cfg, engine), session_scope(session_factory(engine)) as s:
        mv = rollback(s)
        name = mv.version if mv is not None else None
    if name is None:
        from glipcore.bundle import read_manifest

        default = read_manifest(cfg.bundle_path)[1]
        console.print(f"active model: the configuration's bundle [bold]{escape(default)}[/]")
    else:
        console.print(f"active model: [bold]{escape(name)}[/] (rolled back)")
    console.print("workers switch to it before their next job")


def _mm(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) and v == v else "-"


def _share(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, int | float) and v == v else "-"


def _delta(d: dict[str, Any] | None, fmt: Callable[[Any], str]) -> str:
    if not d:
        return ""
    return f"{fmt(d.get('delta'))} [{fmt(d.get('lo'))}, {fmt(d.get('hi'))}]"


def comparison_table(title: str, table: dict[str, Any]) -> Table:
    """Active vs candidate on one case set, with the paired differences (95% interval)."""
    act, cand, diff = table["active"], table["candidate"], table.get("difference", {})
    t = make_table(
        f"{title} ({cand['cases']} cases)", "metric", "active", "candidate", "difference [95% CI]"
    )
    t.add_row(
        "median mm",
        _mm(act["median_mm"]),
        _mm(cand["median_mm"]),
        _delta(diff.get("median_mm"), _mm),
    )
    t.add_row("q3 mm", _mm(act["q3_mm"]), _mm(cand["q3_mm"]), "")
    t.add_row(
        "worst mm", _mm(act["worst_mm"]), _mm(cand["worst_mm"]), _delta(diff.get("worst_mm"), _mm)
    )
    for name, a in act["hinges"].items():
        c = cand["hinges"][name]
        t.add_row(
            f"{name} median / q3 / worst mm",
            " / ".join(_mm(a[k]) for k in ("median_mm", "q3_mm", "worst_mm")),
            " / ".join(_mm(c[k]) for k in ("median_mm", "q3_mm", "worst_mm")),
            "",
        )
    t.add_row(
        "plane angle median deg",
        _mm(act["plane_angle_median_deg"]),
        _mm(cand["plane_angle_median_deg"]),
        "",
    )
    for key in act["sdr"]:
        extra = _delta(diff.get("sdr_2mm"), _share) if key == "2mm" else ""
        t.add_row(f"SDR {key}", _share(act["sdr"][key]), _share(cand["sdr"][key]), extra)
    return t


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="A registered model version.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """A model version: its lineage, and for a retrained candidate the comparison with the
    model active when it was trained and the promotion gate's decision with every reason."""
    from dicomnode.operate.admin.models import model_detail

    with node_db(ctx, config) as (_cfg, engine):
        detail = model_detail(engine, version)
    if as_json:
        print_json(detail)
        return
    m = detail.model
    console.print(f"[bold]{escape(m.version)}[/]" + (" [green](active)[/]" if m.active else ""))
    console.print(f"path: {escape(m.path)}", soft_wrap=True)
    console.print(f"registered {fmt_when(m.created_at)}; promoted {fmt_when(m.promoted_at)}")
    if m.parent_version:
        console.print(f"trained from: {escape(m.parent_version)}")
    training = detail.training or {}
    dataset = training.get("dataset") or {}
    if dataset:
        console.print(
            f"dataset: {len(dataset.get('train_annotation_ids', []))} training and "
            f"{len(dataset.get('holdout_annotation_ids', []))} held-out annotations, "
            f"{dataset.get('phantom_cases', 0)} phantom cases; sha256 "
            f"{str(dataset.get('sha256', ''))[:16]}"
        )
    comparison = detail.comparison or {}
    for key, title in (("holdout", "held-out studies"), ("reference", "phantom reference set")):
        if key in comparison:
            console.print(comparison_table(title, comparison[key]))
    if m.decision is None:
        console.print("no gate decision (not a retrained candidate)")
        return
    style = "green" if m.decision == "passed" else "red"
    console.print(f"gate: [bold {style}]{escape(m.decision)}[/]")
    for reason in detail.decision_reasons or []:
        console.print(f"  {escape(str(reason))}", soft_wrap=True)
