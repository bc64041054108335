"""The ``dicomnode`` command."""

from __future__ import annotations

import typer

from dicomnode.operate import admin_cli, demo_cli, node_cli
from glipcore.cli_help import reflow_help

app = typer.Typer(
    name="dicomnode",
    help="glip-node DICOM service: receive pre-TAVR CT, find the aortic hinge points, "
    "send results back to PACS. Research use only.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.callback()(node_cli.main_options)
app.command("serve")(node_cli.serve)
app.command("worker")(node_cli.worker)
app.command("demo")(demo_cli.demo)
app.command("retrain")(node_cli.retrain)
app.add_typer(node_cli.db_app, name="db")
app.add_typer(node_cli.config_app, name="config")
admin_cli.register(app)
reflow_help(app)


def main() -> None:
    """Console-script entry point."""
    app()
