"""The ``glip`` command: phantoms, training, evaluation, prediction and the paper's experiments."""

from __future__ import annotations

import typer

from glipcore import model_cli, phantom_cli
from glipcore.cli_help import reflow_help
from glipcore.experiment import cli as experiment_cli

app = typer.Typer(
    name="glip",
    help="GLiP aortic-root landmarking: phantoms, training, evaluation, prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """GLiP aortic-root landmarking (research use only)."""


app.command("train")(model_cli.train)
app.command("evaluate")(model_cli.evaluate)
app.command("predict")(model_cli.predict)
app.command("phantom")(phantom_cli.phantom)
app.add_typer(experiment_cli.app, name="experiment")
reflow_help(app)


def main() -> None:
    """Console-script entry point."""
    app()
