"""The ``dicomnode`` command."""

from __future__ import annotations

import typer
from rich.console import Console

from dicomnode import admin_cli, node_cli

app = typer.Typer(
    name="dicomnode",
    help="glip-node DICOM service: receive pre-TAVR CT, find the aortic hinge points, "
    "send results back to PACS. Research use only.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

# admin_cli.main_options wraps node_cli.main_options (--config) and adds --debug.
app.callback()(admin_cli.main_options)
app.command("serve")(node_cli.serve)
app.add_typer(node_cli.db_app, name="db")
app.add_typer(node_cli.config_app, name="config")
admin_cli.register(app)


@app.command()
def demo() -> None:
    """Run the end-to-end demo on the embedded defaults (not built yet)."""
    console.print(
        "[bold yellow]dicomnode demo is not built yet.[/]\n"
        "It needs the node (SCP, worker, delivery: issues 5-7) and the shipped phantom model "
        "(issue 4). Until then, `make test` runs the test suite."
    )
    raise typer.Exit(code=3)


def main() -> None:
    """Console-script entry point."""
    app()
