"""``dicomnode models``: list, register and promote model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
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
